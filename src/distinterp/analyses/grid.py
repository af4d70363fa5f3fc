"""Per-checkpoint analyses of a finished grid (`distinterp.sweep`): the susceptibility table (restriction x
token at every checkpoint), the per-token susceptibility vectors as one chunked array for clustering
(Baker et al. 2025; "spectroscopy"), and sequence-level BIF summaries per cell.

Each `(root, table) -> xr.Dataset` function here is a grid analysis that `sweep(analyses=...)` merges into
its LLC table; the cells of a root are read from its record (`<root>/distinterp-sweep.json`), whose labels
are the product of its axes in order.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import xarray as xr

from distinterp.analyses.bif import AnalysisInputError, available_observables, compute_bif
from distinterp.analyses.susceptibilities import compute_susceptibilities
from distinterp.paths import sibling
from distinterp.store import Location, open_tree
from distinterp.store.results import write_result

FULL = "full"
"""compute_susceptibilities' name for the unrestricted run: the grid's restriction whose pattern is None."""
VECTOR_CHUNK = 65536
"""Tokens per chunk of the susceptibility vectors (all components of a token in one chunk: one read per
block of tokens when clustering)."""
MAX_BIF_ROWS = 64
"""Sequences up to which a cell's whole BIF matrix joins the table; beyond, only its summaries."""


@dataclass(frozen=True)
class GridCells:
    """The cells of a grid's root: its axes (name -> values, in order) and each cell's store label."""

    root: Location
    axes: dict[str, list[Any]]
    labels: list[str]
    restrictions: dict[str, Any]

    @classmethod
    def open(cls, root: Location | str, storage_options: dict[str, Any] | None = None) -> GridCells:
        """The cells a root's record names; a root that is not a grid's is refused, naming what it is."""
        loc = root if isinstance(root, Location) else Location(str(root), dict(storage_options or {}))
        record = _read_record(loc)
        axes = {str(name): list(values) for name, values in record.get("axes") or []}
        if not axes:
            raise AnalysisInputError(
                f"{loc}: a {record.get('kind', 'sweep')} root without axes (written before grids); "
                "rerun it with distinterp.sweep to use grid analyses"
            )
        labels = list(record["labels"])
        if int(np.prod([len(v) for v in axes.values()])) != len(labels):
            raise AnalysisInputError(f"{loc}: its record's axes {list(axes)} do not multiply to its labels")
        return cls(loc, axes, labels, dict(record.get("restrictions") or {}))

    def cells(self) -> Iterator[tuple[dict[str, Any], str]]:
        """(coords, store label) of every cell, in the record's (product) order."""
        for values, label in zip(itertools.product(*self.axes.values()), self.labels):
            yield dict(zip(self.axes, values)), label

    def label(self, **coords: Any) -> str:
        """The store label of the cell at these coords (every axis named)."""
        index = 0
        for name, values in self.axes.items():
            if name not in coords:
                raise KeyError(f"cell: axis {name!r} not given (axes: {list(self.axes)})")
            index = index * len(values) + values.index(coords[name])
        return self.labels[index]

    def location(self, **coords: Any) -> Location:
        """The store of the cell at these coords."""
        return Location(sibling(self.root.url, "child", self.label(**coords)), self.root.storage_options)

    def full_restriction(self) -> str:
        """The restriction that samples every weight (pattern None): susceptibilities' baseline."""
        names = self.axes.get("restriction", [])
        check_baseline({n: self.restrictions.get(n, "?") for n in names})
        return str(next(n for n in names if self.restrictions.get(n, "?") in (None, "full")))

    def outer(self) -> list[dict[str, Any]]:
        """Every setting of the axes other than restriction: one susceptibility table each."""
        others = {k: v for k, v in self.axes.items() if k != "restriction"}
        return [dict(zip(others, values)) for values in itertools.product(*others.values())]


def check_baseline(restrictions: Mapping[str, Any] | None) -> None:
    """Refuse, before any sampling, a grid asked for susceptibilities without an unrestricted restriction
    (pattern None or 'full') and at least one other."""
    patterns = dict(restrictions or {})
    if not any(p is None or p == "full" for p in patterns.values()):
        raise AnalysisInputError(
            f"restrictions: analyses 'susceptibilities' need an unrestricted baseline; add one with pattern "
            f"None (e.g. restrictions={{'full': None, ...}}), got {list(patterns)}"
        )
    if len(patterns) < 2:
        raise AnalysisInputError(
            "restrictions: analyses 'susceptibilities' need a restriction besides the unrestricted baseline"
        )


def _read_record(root: Location) -> dict[str, Any]:
    path = Location(sibling(root.url, "record"), root.storage_options)
    try:
        if path.is_local:
            text = path.local_path.read_text()
        else:
            fs, p = fsspec.core.url_to_fs(path.url, **path.fsspec_options())
            text = fs.cat_file(p).decode()
    except FileNotFoundError:
        raise AnalysisInputError(f"{root}: no grid record here ({path.url}); not a sweep root") from None
    record: dict[str, Any] = json.loads(text)
    return record


# ─── Susceptibilities ────────────────────────────────────────────────────────


def _sampling_task(ds: xr.Dataset, dataset_name: Any, sampling_task: str | None) -> str:
    """The observable the cell sampled on: given, else the one named after the cell's dataset, else
    'train', else the only observable."""
    present = available_observables(ds)
    if sampling_task is not None:
        return sampling_task
    for name in (str(dataset_name), "train"):
        if name in present:
            return name
    if len(present) == 1:
        return present[0]
    raise AnalysisInputError(
        f"sampling_task: cannot tell which observable the cells sampled on among {present}; name the "
        "observables after the datasets (or 'train'), or pass sampling_task"
    )


def checkpoint_susceptibilities(
    cells: GridCells,
    outer: Mapping[str, Any],
    *,
    sampling_task: str | None = None,
    allow_partial: bool = False,
) -> xr.DataArray:
    """Susceptibilities of every restriction at one setting of the other axes (a checkpoint, a dataset,
    grid values): (restriction, token), NaN for the unrestricted baseline; every observable's tokens."""
    full = cells.full_restriction()
    trees = {
        (FULL if name == full else str(name)): open_tree(cells.location(**outer, restriction=name))
        for name in cells.axes["restriction"]
    }
    if len(trees) < 2:
        raise AnalysisInputError(
            "restrictions: susceptibilities need a restriction besides the unrestricted baseline"
        )
    task = _sampling_task(trees[FULL].dataset, outer.get("dataset"), sampling_task)
    tree = compute_susceptibilities(trees, task, include_sampling_task=True, allow_partial=allow_partial)
    sus, ctx = tree["susceptibilities"].dataset, tree["context"].dataset
    names = [str(n) for n in cells.axes["restriction"]]
    values = np.full((len(names), sus.sizes["sus_flat"]), np.nan, dtype=np.float32)
    wrs = [str(w) for w in sus.wr.values]
    for i, name in enumerate(names):
        key = FULL if name == str(full) else name
        if key in wrs:
            values[i] = sus.sus.values[:, wrs.index(key)]
    ids = _token_ids(sus, ctx)
    coords = {
        "restriction": cells.axes["restriction"],
        "token_dataset": ("token", np.asarray(sus.dataset_id.values)),
        "token_batch": ("token", np.asarray(sus.batch.values)),
        "token_position": ("token", np.asarray(sus.target_position.values)),
        "token_id": ("token", ids),
    }
    out = xr.DataArray(values, dims=("restriction", "token"), coords=coords, name="susceptibility")
    out.attrs["observables"] = list(sus.attrs.get("dataset_id_to_name", []))
    out.attrs["sampling_task"] = task
    return out


def _token_ids(sus: xr.Dataset, ctx: xr.Dataset) -> np.ndarray:
    """The input id at each probe token's target position (context row of its dataset and batch)."""
    key = {
        (int(d), int(b), int(p)): int(t)
        for d, b, p, t in zip(
            ctx.dataset_id.values, ctx.batch.values, ctx.position.values, ctx.input_ids.values
        )
    }
    return np.asarray(
        [
            key[(int(d), int(b), int(p))]
            for d, b, p in zip(sus.dataset_id.values, sus.batch.values, sus.target_position.values)
        ],
        dtype=np.int64,
    )


def susceptibility_table(
    root: Location | str,
    table: xr.Dataset | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    sampling_task: str | None = None,
    allow_partial: bool = False,
) -> xr.Dataset:
    """`susceptibility` over (every axis but restriction, restriction, token): a restriction x token table
    per checkpoint (and dataset and grid setting). A grid analysis: merges into the LLC table. Needs an
    unrestricted restriction (pattern None) as the baseline; every observable's tokens are probes."""
    cells = GridCells.open(root, storage_options)
    if "restriction" not in cells.axes:
        raise AnalysisInputError("restrictions: susceptibilities need a grid with restrictions")
    outer = cells.outer()
    parts = [
        checkpoint_susceptibilities(cells, o, sampling_task=sampling_task, allow_partial=allow_partial)
        for o in outer
    ]
    first = parts[0]
    for o, part in zip(outer, parts):
        if part.sizes["token"] != first.sizes["token"] or not np.array_equal(
            part.token_id.values, first.token_id.values
        ):
            raise AnalysisInputError(
                f"observables: the cell {o} has other probe tokens than {outer[0]}; a grid's susceptibility "
                "table needs the same observables in every cell"
            )
    others = [k for k in cells.axes if k != "restriction"]
    stacked = np.stack([p.values for p in parts]).reshape(*(len(cells.axes[k]) for k in others), *first.shape)
    da = xr.DataArray(
        stacked,
        dims=(*others, "restriction", "token"),
        coords={**{k: cells.axes[k] for k in others}, **first.coords},
        attrs=first.attrs,
    )
    return xr.Dataset({"susceptibility": da})


def _token_text(ids: np.ndarray, tokenizer: Any) -> np.ndarray:
    if tokenizer is None:
        return ids.astype(str)
    return np.asarray([tokenizer.decode([int(t)]) for t in ids], dtype=str)


def write_susceptibility_vectors(
    root: Location | str,
    table: xr.Dataset | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    tokenizer: Any = None,
    sampling_task: str | None = None,
    chunk_tokens: int = VECTOR_CHUNK,
) -> Location:
    """Write every token's susceptibility vector over the grid's components (restriction x the other axes,
    baseline dropped) as one chunked (token, component) float32 array with the token text, at
    `<root>.token_vectors.zarr`: the input of a user's clustering. Returns where it went."""
    loc = root if isinstance(root, Location) else Location(str(root), dict(storage_options or {}))
    sus = table if table is not None and "susceptibility" in table else None
    if sus is None:
        sus = susceptibility_table(loc, sampling_task=sampling_task)
    da = sus["susceptibility"]
    others = [d for d in da.dims if d not in ("restriction", "token")]
    baseline = GridCells.open(loc).full_restriction()
    da = da.sel(restriction=[r for r in da.restriction.values if r != baseline])
    stacked = da.stack(component=(*others, "restriction")).transpose("token", "component")
    names = [
        "+".join(f"{d}={_text(v)}" for d, v in zip((*others, "restriction"), key))
        for key in stacked.component.values
    ]
    component_coords = {
        f"component_{d}": ("component", np.asarray([_text(v) for v in stacked[d].values]))
        for d in (*others, "restriction")
    }
    ids = np.asarray(da.token_id.values)
    out = xr.Dataset(
        {"vectors": (("token", "component"), stacked.values.astype(np.float32))},
        coords={
            "component": names,
            **component_coords,
            "token_id": ("token", ids),
            "token_text": ("token", _token_text(ids, tokenizer)),
            "token_dataset": ("token", np.asarray(da.token_dataset.values)),
            "token_batch": ("token", np.asarray(da.token_batch.values)),
            "token_position": ("token", np.asarray(da.token_position.values)),
        },
        attrs={"root": str(loc), "observables": list(da.attrs.get("observables", []))},
    )
    encoding = {"vectors": {"chunks": (min(chunk_tokens, out.sizes["token"]), out.sizes["component"])}}
    target = loc.sibling("token_vectors")
    write_result(out, target, encoding=encoding)
    return target


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def open_susceptibility_vectors(
    root: Location | str, storage_options: dict[str, Any] | None = None
) -> xr.Dataset:
    """The (token, component) vectors write_susceptibility_vectors wrote beside a grid's root, lazily."""
    loc = root if isinstance(root, Location) else Location(str(root), dict(storage_options or {}))
    target = loc.sibling("token_vectors")
    if not target.exists():
        raise FileNotFoundError(
            f"{target}: no susceptibility vectors; write them with write_susceptibility_vectors({str(loc)!r})"
        )
    options = None if target.is_local else target.fsspec_options()
    url = str(target.local_path) if target.is_local else target.url
    ds: xr.Dataset = xr.open_zarr(url, consolidated=False, chunks=None, storage_options=options)
    return ds


# ─── BIF ─────────────────────────────────────────────────────────────────────


def bif_summary(samples: xr.DataTree | xr.Dataset, *, max_rows: int = MAX_BIF_ROWS) -> xr.Dataset:
    """A cell's sequence-level BIF (Pearson correlation of sequences' losses over draws) in a few numbers:
    mean and mean |.| off the diagonal, and the matrix itself when it has at most max_rows sequences."""
    bif = compute_bif(samples, correlation_method="sequence")
    assert bif is not None  # the sequence-level BIF always returns on the calling process
    m = np.asarray(bif.influences.values, dtype=np.float64)
    diagonal = np.eye(m.shape[0], m.shape[1]) > 0
    off = m[np.logical_not(diagonal)] if m.size > 1 else np.asarray([np.nan])
    out = xr.Dataset(
        {
            "bif_mean": ((), float(np.nanmean(off))),
            "bif_mean_abs": ((), float(np.nanmean(np.abs(off)))),
            "bif_rows": ((), int(m.shape[0])),
        }
    )
    if m.shape[0] <= max_rows:
        out["bif"] = (("sequence_1", "sequence_2"), m.astype(np.float32))
    return out


def bif_summaries(
    root: Location | str,
    table: xr.Dataset | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    max_rows: int = MAX_BIF_ROWS,
) -> xr.Dataset:
    """bif_summary of every cell over the grid's axes (bif_mean, bif_mean_abs, and `bif` over
    (sequence_1, sequence_2) when small): a grid analysis that merges into the LLC table."""
    cells = GridCells.open(root, storage_options)
    parts = []
    for coords, _ in cells.cells():
        tree = open_tree(cells.location(**coords))
        parts.append(bif_summary(tree, max_rows=max_rows))
        tree.close()
    shape = tuple(len(v) for v in cells.axes.values())
    dims = tuple(cells.axes)
    data: dict[str, Any] = {
        name: (dims, np.asarray([float(p[name]) for p in parts]).reshape(shape))
        for name in ("bif_mean", "bif_mean_abs")
    }
    if all("bif" in p for p in parts) and len({p["bif"].shape for p in parts}) == 1:
        stacked = np.stack([p["bif"].values for p in parts])
        data["bif"] = ((*dims, "sequence_1", "sequence_2"), stacked.reshape(shape + stacked.shape[1:]))
    return xr.Dataset(data, coords={k: v for k, v in cells.axes.items()})
