"""The package's import graph from its source (ast, nothing imported): circles and upward imports.

`python scripts/import_graph.py [--lazy]` prints every import circle (strongly connected component) among
distinterp's modules; --lazy counts imports inside functions too (deferred, but still a dependency).
Exit 1 when there is a circle. tests/test_import_graph.py runs it so circles cannot come back.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "distinterp"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _nodes(body: list[ast.stmt], lazy: bool, compat: bool = False) -> Iterator[ast.AST]:
    """Statements that import at run time: module level, and with `lazy` inside functions too. Skipped:
    `if TYPE_CHECKING:` blocks (annotations only) and a module's `__getattr__` (a compatibility re-export
    of a name that moved upward: `from old.home import name` keeps working without a circle at import)."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _nodes(node.orelse, lazy, compat)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__":
            if compat:  # the re-exports, alone: COMPAT_REEXPORTS lists the ones allowed to point upward
                yield from _nodes(node.body, True, compat)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not lazy:
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], (ast.stmt, ast.ExceptHandler)):
                yield from _nodes(inner, lazy, compat)  # type: ignore[arg-type]


def _imports(
    tree: ast.Module, name: str, is_package: bool, lazy: bool, known: set[str], compat: bool = False
) -> Iterator[str]:
    """Names imported by a module (absolute; `from a import b` yields a.b and a)."""
    for node in _nodes(tree.body, lazy, compat):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports mod; `from mod import name`, mod
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def graph(lazy: bool = False, src: Path = SRC, compat: bool = False) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a package's __init__ counts as importing it)."""
    mods = modules(src)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in _imports(tree, name, path.name == "__init__.py", lazy, set(mods), compat):
            if imported in mods and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; parents' __init__
    re-exports of their own submodules are not circles (a package importing its parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w.startswith(v + "."):  # a package importing its own submodule
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "_version",
            "config",
            "data",
            "loss",
            "noise",
            "paths",
            "model_structures",
            "store",
            "update",
            "identity",
            "masks",
            "toy",
            "checkpoint",
            "integrity",
            "rerun",
            "provenance",
            "errors",
            "optim",
            "parallel.distributed",
            "parallel.plan",
            "chain_setup",
            "parallel.engine",
        ),
    ),
    (
        "chains",
        (
            "chain",
            "recorder",
            "parallel.serial",
            "parallel.batched",
            "parallel.sharded",
            "parallel.registry",
            "analyses.chains",
            "analyses.covariance",
            "analyses.calibration",
            "progress",
        ),
    ),
    ("analyses and sample()", ("analyses", "sampling")),
    ("api", ("api",)),
    ("jobs and report", ("jobs", "report")),
    ("public faces", ("", "slt", "utils", "__main__")),
]
"""Layers, lowest first (STYLE.md's map): a module imports only its own layer and those below. A module
belongs to the layer of its longest matching prefix ('' is the package itself)."""


def layer(module: str) -> int:
    """The index in LAYERS of a module (by its longest matching prefix)."""
    rel = module.removeprefix(PACKAGE).removeprefix(".")
    best, depth = len(LAYERS) - 1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            match = rel == prefix or (prefix != "" and rel.startswith(prefix + "."))
            if match and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a module from a higher layer (a package importing its own parts excepted)."""
    return sorted(
        (m, t) for m, ts in edges.items() for t in ts if layer(t) > layer(m) and not t.startswith(m + ".")
    )


COMPAT_REEXPORTS: set[tuple[str, str]] = {
    ("distinterp.analyses.llc", "distinterp.api"),
    ("distinterp.analyses.bif", "distinterp.api"),
    ("distinterp.analyses.susceptibilities", "distinterp.api"),
}
"""The one allowed exception to the layers: llc(), bif() and susceptibilities() (sample, then compute) moved
up to distinterp.api, and their old homes hand them out on first access from a module `__getattr__`, so
`from distinterp.analyses.llc import llc` keeps working. Nothing imports them at import time; every other
`__getattr__` import must respect the layers (`compat_upward` checks it)."""


def compat_upward(src: Path = SRC) -> list[tuple[str, str]]:
    """Upward imports made by modules' `__getattr__` re-exports that are not COMPAT_REEXPORTS."""
    return [edge for edge in upward(graph(True, src, compat=True)) if edge not in COMPAT_REEXPORTS]


def main(argv: list[str]) -> int:
    lazy = "--lazy" in argv
    edges = graph(lazy)
    found = circles(edges)
    up = upward(edges)
    where = "with" if lazy else "without"
    print(
        f"{len(edges)} modules, {sum(len(t) for t in edges.values())} imports ({where} imports inside functions)"
    )
    for comp in found:
        print(f"circle ({len(comp)} modules): " + " <-> ".join(m.removeprefix(PACKAGE + ".") for m in comp))
    for m, t in up:
        print(f"upward: {m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})")
    if not found:
        print("no import circles")
    if not up:
        print("no upward imports")
    stray = compat_upward()
    for m, t in stray:
        print(f"upward re-export: {m} hands out a name of {t} from __getattr__ (not in COMPAT_REEXPORTS)")
    return 1 if found or up or stray else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
