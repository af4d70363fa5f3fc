"""No import circles and nothing imported upward (scripts/import_graph.py, from the source with ast), and
every name that moved still imports from its old home."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-imports-in-functions"])
def test_no_import_circles_and_nothing_imported_upward(lazy):
    g = script()
    edges = g.graph(lazy=lazy)
    assert len(edges) > 50
    assert g.circles(edges) == []
    assert g.upward(edges) == []


def test_the_one_allowed_upward_reference_is_the_documented_re_export():
    """llc/bif/susceptibilities' old homes hand them out from __getattr__ (COMPAT_REEXPORTS); that is the
    only reference against the layers, and no other module-level __getattr__ hides one."""
    g = script()
    assert g.upward(g.graph(lazy=True, compat=True)) == sorted(g.COMPAT_REEXPORTS)
    assert g.compat_upward() == []


def test_the_check_finds_a_circle_and_an_upward_import(tmp_path):
    """It can fail: a two-module circle through an import inside a function, and base importing jobs."""
    pkg = tmp_path / "distinterp"
    (pkg / "jobs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs" / "__init__.py").write_text("")
    (pkg / "store.py").write_text("def f():\n    from distinterp.jobs import cli\n")
    (pkg / "jobs" / "cli.py").write_text("from distinterp.store import f\n")
    g = script()
    edges = g.graph(lazy=True, src=tmp_path)
    assert g.circles(edges) == [["distinterp.jobs.cli", "distinterp.store"]]
    assert g.upward(edges) == [("distinterp.store", "distinterp.jobs.cli")]
    assert g.circles(g.graph(lazy=False, src=tmp_path)) == []  # the function-level import is the circle


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("distinterp.analyses.llc", "llc", "distinterp.api"),
        ("distinterp.analyses.llc", "chain_status", "distinterp.analyses.chains"),
        ("distinterp.analyses.llc", "llc_estimate", "distinterp.analyses.chains"),
        ("distinterp.analyses.llc", "usable_chains", "distinterp.analyses.chains"),
        ("distinterp.analyses.bif", "bif", "distinterp.api"),
        ("distinterp.analyses.susceptibilities", "susceptibilities", "distinterp.api"),
        ("distinterp.jobs.report", "ReportFigure", "distinterp.jobs.page"),
        ("distinterp.jobs.report", "write_report", "distinterp.jobs.page"),
        ("distinterp.sampling", "model_fingerprint", "distinterp.identity"),
        ("distinterp.jobs.runner", "RUN_SPECIFIC", "distinterp.identity"),
        ("distinterp.jobs.runner", "job_chains", "distinterp.jobs.route"),
        ("distinterp", "llc", "distinterp.api"),
        ("distinterp", "__version__", "distinterp._version"),
        ("distinterp.store", "StoreError", "distinterp.errors"),
        ("distinterp.store", "IncompleteStoreError", "distinterp.errors"),
        ("distinterp.analyses.bif", "AnalysisInputError", "distinterp.errors"),
        ("distinterp.jobs.sources", "SourceError", "distinterp.errors"),
        ("distinterp.analyses.diagnostics", "UnhealthyRunWarning", "distinterp.errors"),
        ("distinterp.integrity", "DamagedCheckpoint", "distinterp.errors"),
        ("distinterp.slt.sampler", "ChainHealthError", "distinterp.errors"),
        ("distinterp.slt.sampler", "ParamMasks", "distinterp.masks"),
        ("distinterp.sampling", "ParamMasks", "distinterp.masks"),
        ("distinterp.data", "Observable", "distinterp.data"),
        ("distinterp.optim", "SamplingMethodLiteral", "distinterp.optim.sgmcmc"),
        ("distinterp.store", "SampleStore", "distinterp.store.handle"),
        ("distinterp.analyses.bif", "ObservableLosses", "distinterp.analyses.observables"),
    ],
)
def test_moved_names_import_from_their_old_homes(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def _definitions() -> dict[str, list[str]]:
    """Class and module-level assignment names -> the modules that define them (by ast, nothing imported)."""
    import ast

    found: dict[str, list[str]] = {}
    for name, path in script().modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(name)
            elif isinstance(node, ast.Assign) and not isinstance(node.value, ast.Name):  # aliases excepted
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append(name)
    return found


def test_one_errors_module_and_names_that_do_not_mislead():
    """Every exception and warning class lives in errors.py (old homes re-export); ParamMasks, Observable
    and SamplingMethodLiteral are each defined once (issue 19's names that mislead)."""
    import ast

    outside = []
    for name, path in script().modules().items():
        for node in ast.parse(path.read_text()).body:
            bases = [ast.unparse(b) for b in node.bases] if isinstance(node, ast.ClassDef) else []
            error = any(b.endswith(("Error", "Exception", "Warning", "Mismatch")) for b in bases)
            if error and name != "distinterp.errors":
                outside.append(f"{name}.{node.name}")
    assert outside == []
    defined = _definitions()
    for name in ("ParamMasks", "Observable", "SamplingMethodLiteral", "AnalysisInputError"):
        assert len(defined[name]) == 1, (name, defined[name])
    assert defined["AnalysisInputError"] == ["distinterp.errors"]


def test_the_llc_formula_is_written_once():
    """n_beta * (loss - init loss) lives in analyses.chains.llc_estimate; analyses, progress, figures and the
    CLI's trace call it (issue 19 found it computed in four places). update.py's MALA term is not the LLC."""
    import ast
    import re

    pattern = re.compile(r"n_?beta\s*\*\s*\(")
    found = []
    for name, path in script().modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and pattern.match(ast.unparse(node)):
                found.append(name)
    assert sorted(set(found)) == ["distinterp.analyses.chains", "distinterp.update"]


def test_results_are_written_one_way():
    """Every analysis result the CLI, the runners and the grid analyses save goes through
    store.results.write_result (issue 19 found `cli._write` beside a bare `to_zarr` in runner.py)."""
    import ast

    writers = sorted(
        {
            name
            for name, path in script().modules().items()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in ("to_zarr", "to_netcdf")
        }
    )
    assert writers == ["distinterp.store.results"]
