"""Every path beside a store, named in one table (checkpoints, numerics notes, analyses, reports, the
susceptibilities job's per-restriction stores, a sweep's children, its record and a grid's token vectors), so no module invents its own rule."""

from __future__ import annotations

SIBLINGS: dict[str, str] = {
    "checkpoints": "{store}.checkpoints",
    "numerics": "{store}.numerics",
    "report": "{stem}.report",
    "bif": "{stem}.bif.zarr",
    "susceptibilities": "{stem}.susceptibilities.zarr",
    "restriction": "{stem}_{name}.zarr",
    "child": "{store}/{name}.zarr",
    "record": "{store}/distinterp-sweep.json",
    "token_vectors": "{stem}.token_vectors.zarr",
    "sweep_table": "{stem}.sweep.zarr",
}
"""kind -> path pattern: {store} is the store's URL or path, {stem} the same without '.zarr'."""
RESULTS = ("bif", "susceptibilities")
"""The analyses whose results live beside a store."""


def sibling(store: str, kind: str, name: str = "") -> str:
    """The path of `kind` beside (or, for a sweep's child, under) `store`, as SIBLINGS names it."""
    base = store.rstrip("/")
    return SIBLINGS[kind].format(store=base, stem=base.removesuffix(".zarr").removesuffix(".nc"), name=name)


def local_sibling(store: str, kind: str, name: str = "") -> str:
    """`sibling` for what a job writes locally (results, reports): beside a local store or output file, in
    the working directory for a remote URL."""
    if "://" in store and not store.startswith("file://"):
        store = store.rstrip("/").rsplit("/", 1)[-1]
    return sibling(store.removeprefix("file://"), kind, name)


def result_candidates(store: str, kind: str) -> list[str]:
    """Where the `kind` result of a store may be: beside it, and, for a store the susceptibilities job
    wrote (`<base>_<restriction>.zarr`), beside `<base>` (one result for all of the job's stores)."""
    base = store.rstrip("/").removesuffix(".zarr")
    head, sep, stem = base.rpartition("/")
    out = [sibling(store, kind)]
    while "_" in stem:
        stem = stem.rsplit("_", 1)[0]
        out.append(sibling(f"{head}{sep}{stem}", kind))
    return out
