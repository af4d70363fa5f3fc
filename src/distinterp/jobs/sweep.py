"""Many sample() runs under one root: grids (`distinterp.sweep`), trajectories (one store per checkpoint)
and calibration grids (one per cell) are all this.

Layout: `<root>/<label>.zarr` is a normal store, written by `sample()` exactly as a standalone call with
the same arguments would write it; `<root>/distinterp-sweep.json` records the kind, the labels in order,
the axes and the settings, written once and compared on every rerun. Work is the flattened list of
(store, chain) pairs still to run: array tasks take contiguous blocks of it, and within a task the
torchrun ranks take contiguous blocks of what is left, each rank running its share as an independent
one-process sample() (`solo()`), so no rank idles when chains per store do not divide the world. With
fsdp_size > 1 every rank runs every store collectively instead (a chain needs its whole FSDP group).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
import xarray as xr

from distinterp.analyses.diagnostics import Thresholds, diagnose
from distinterp.analyses.llc import compute_llc
from distinterp.checkpoint import CheckpointStore
from distinterp.config import SamplerConfig, merge_rmsprop_aliases
from distinterp.data import fingerprint, input_ids_tensor
from distinterp.errors import SweepError
from distinterp.identity import INPUTS, WHERE, sweep_identity
from distinterp.masks import ParamMasks, WeightRestrictionError, create_param_masks
from distinterp.parallel.distributed import Runtime, runtime, solo
from distinterp.parallel.plan import array_task_chains
from distinterp.paths import sibling
from distinterp.sampling import result_unused, sample
from distinterp.store import (
    IncompleteStoreError,
    Location,
    StoreConfigMismatch,
    StoreError,
    check_reachable,
    mark_completed,
    open_tree,
    read_progress,
    read_root_attrs,
)
from distinterp.store.snapshot import open_store, root_attrs

logger = logging.getLogger(__name__)

RECORD = "distinterp-sweep.json"
RECORD_VERSION = 2
"""2: the record names its axes (one aggregate dim each); 1: trajectory and calibration roots before."""
ModelOrLoader = torch.nn.Module | Callable[[], torch.nn.Module]

_OWN = INPUTS | WHERE
"""sample() arguments the sweep sets itself; a caller passing them is told so."""
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclass(frozen=True)
class Run:
    """One store of a sweep: its label, its model (or a zero-argument loader), its own sample() kwargs, and
    optionally the checkpoint it belongs to (stores of one checkpoint share one load per rank), its weight
    restriction (a create_param_masks pattern, resolved on the loaded model) and its own data."""

    label: str
    model: ModelOrLoader
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    restriction: str | list[str] | None = None
    dataset: Any = None

    @property
    def model_key(self) -> str:
        """What names this run's model: its checkpoint, else its own label."""
        return self.checkpoint if self.checkpoint is not None else self.label


def check_label(label: Any, what: str = "label") -> str:
    """A label as the store's file name: ints become their digits; anything else must be a safe name."""
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"{what} {label!r}: expected an int (a training step) or a str")
    text = str(label)
    if not _LABEL.match(text) or text.endswith(".zarr"):
        raise ValueError(
            f"{what} {text!r}: must be a file-name-safe name (letters, digits, '._=+-', not starting with "
            "a symbol, no '.zarr' suffix); it names the store <root>/<label>.zarr"
        )
    return text


def child(root: Location, label: str) -> Location:
    """The store of one label under the root."""
    return Location(sibling(root.url, "child", label), root.storage_options)


def sample_arguments(kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """sample()'s keyword arguments with its defaults filled in; unknown or sweep-owned names are errors."""
    params = inspect.signature(sample).parameters
    for name in kwargs:
        if name in _OWN:
            raise TypeError(f"{what}: {name!r} is set by {what} itself (per store); remove it")
        if name not in params:
            close = [p for p in params if p not in _OWN and name[:3] in p]
            raise TypeError(
                f"{what}: unexpected keyword argument {name!r} (not a sample() argument"
                + (f"; did you mean {close[0]!r}?)" if close else ")")
            )
    out = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    for name in _OWN:
        out.pop(name, None)
    out.update(kwargs)
    return out


def sampler_config(args: Mapping[str, Any]) -> SamplerConfig:
    """The SamplerConfig sample() will build from these arguments: validated before anything is written."""
    fields = {k: v for k, v in args.items() if k in SamplerConfig.model_fields}
    missing = [k for k in ("lr", "n_beta") if fields.get(k) is None]
    if missing:
        raise TypeError(f"missing required sampler argument(s) {missing}")
    fields["sampling_method_kwargs"] = merge_rmsprop_aliases(
        args["sampling_method"], args["sampling_method_kwargs"], args["rmsprop_eps"], args["rmsprop_alpha"]
    )
    return SamplerConfig(**fields)


identity = sweep_identity
"""What a rerun must repeat (defined in distinterp.identity; the old name kept)."""


def _fs(root: Location) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(root.url, **root.fsspec_options())
    return fs, str(path)


def read_record(root: Location) -> dict[str, Any] | None:
    """The root's record (kind, labels, settings), or None when there is none yet."""
    try:
        if root.is_local:
            path = root.local_path / RECORD
            record: dict[str, Any] | None = json.loads(path.read_text()) if path.is_file() else None
            return record
        check_reachable(root)  # an endpoint that does not answer fails in one line, not after retries
        fs, base = _fs(root)
        try:  # one GET, hit or miss (an exists() first costs a HEAD, and a LIST when it is missing)
            found: dict[str, Any] = json.loads(fs.cat_file(f"{base.rstrip('/')}/{RECORD}"))
            return found
        except FileNotFoundError:
            return None
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{root}: its {RECORD} cannot be read ({type(e).__name__}: {e})") from e


def _diff(stored: Any, current: Any, prefix: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        return [
            line
            for key in sorted(set(stored) | set(current))
            for line in _diff(stored.get(key), current.get(key), f"{prefix}{key}.")
        ]
    return [] if stored == current else [f"  {prefix.rstrip('.')}: stored={stored!r}, current={current!r}"]


def legacy(record: Mapping[str, Any]) -> dict[str, Any]:
    """The version-1 form of a record (no axes): what a root written before version 2 holds."""
    return {**{k: v for k, v in record.items() if k != "axes"}, "version": 1}


def write_record(root: Location, record: dict[str, Any]) -> None:
    """Write the root's record once; an existing one must be equal, else the rerun is refused untouched.
    A version-1 record (a root written before axes were recorded) is compared in its own form."""
    stored = read_record(root)
    if stored is not None:
        diffs = _diff(stored, legacy(record) if stored.get("version") == 1 else record, "")
        if diffs:
            raise StoreConfigMismatch(
                f"{root}: holds a {stored.get('kind', 'sweep')} with different settings:\n"
                + "\n".join(diffs)
                + "\nIt was left untouched. Rerun with the recorded settings to continue it, or choose "
                "another output_path."
            )
        return
    text = json.dumps(record, indent=1, sort_keys=True)
    # atomic: a concurrent array task or a kill never leaves half a record
    Location(f"{root.url.rstrip('/')}/{RECORD}", root.storage_options).write_atomic(text.encode())


def remove_record(root: Location) -> None:
    """Remove the root's record (a sweep that failed before its first store: the corrected rerun is new)."""
    if root.is_local:
        (root.local_path / RECORD).unlink(missing_ok=True)
    else:
        fs, base = _fs(root)
        fs.rm_file(f"{base.rstrip('/')}/{RECORD}")


Pair = tuple[str, int]
"""(store label, chain index): the unit of a sweep's work."""


def share(pairs: Sequence[Pair], part: tuple[int, int] | None) -> list[Pair]:
    """Block `part = (i, n)` of n contiguous blocks of the pairs (all of them for None)."""
    if part is None:
        return list(pairs)
    return [pairs[i] for i in array_task_chains(len(pairs), *part)]


def by_label(pairs: Sequence[Pair]) -> list[tuple[str, tuple[int, ...]]]:
    """Pairs grouped by label, in first-appearance order: one sample(chains=...) call each."""
    blocks: dict[str, list[int]] = {}
    for label, c in pairs:
        blocks.setdefault(label, []).append(c)
    return [(label, tuple(chains)) for label, chains in blocks.items()]


def work_blocks(
    sizes: Sequence[tuple[str, int]], array_task: tuple[int, int] | None
) -> list[tuple[str, tuple[int, ...]]]:
    """This array task's contiguous block of the flattened (label, chain) list, grouped by label."""
    return by_label(share([(label, c) for label, n in sizes for c in range(n)], array_task))


def chains_left(location: Location, chains: Sequence[int], num_steps: int) -> tuple[int, ...]:
    """Which of these chains the store does not yet hold in full (all of them when there is no store)."""
    attrs = read_root_attrs(location)
    if attrs is None:
        return tuple(chains)
    if attrs.get("completed") == 1:
        return ()
    steps = steps_done(location)
    return tuple(c for c in chains if steps is None or c >= len(steps) or steps[c] < num_steps)


def steps_done(location: Location) -> np.ndarray | None:
    """Per-chain steps the store holds, or None when its creator was killed before making the progress
    array (sample() creates what is missing and starts every chain)."""
    try:
        return read_progress(location)[0]
    except FileNotFoundError:  # zarr's ArrayNotFoundError is one
        return None


LOOKUPS = 16
"""Stores whose progress rank 0 reads at once when a sweep starts (on S3 each read is a round trip)."""


def pairs_left(
    root: Location, blocks: Sequence[tuple[str, tuple[int, ...]]], num_steps: Mapping[str, int]
) -> list[Pair]:
    """The (label, chain) pairs of these blocks that their stores do not yet hold in full, in order;
    the stores are read LOOKUPS at a time."""

    def left(block: tuple[str, tuple[int, ...]]) -> list[Pair]:
        label, chains = block
        return [(label, c) for c in chains_left(child(root, label), chains, num_steps[label])]

    if len(blocks) <= 1:
        return [pair for block in blocks for pair in left(block)]
    with ThreadPoolExecutor(min(LOOKUPS, len(blocks))) as pool:
        return [pair for pairs in pool.map(left, blocks) for pair in pairs]


def chains_done(location: Location, chains: Sequence[int], num_steps: int) -> bool:
    """Whether every one of these chains is durably complete in the store (False when there is none)."""
    return read_root_attrs(location) is not None and not chains_left(location, chains, num_steps)


def stores_complete(root: Location, labels: Sequence[str]) -> bool:
    """Whether the store of every label under the sweep's root is marked completed."""
    return all((read_root_attrs(child(root, label)) or {}).get("completed") == 1 for label in labels)


def temporary_root(kind: str) -> str:
    """A new temporary directory for a sweep with no output_path (rank 0 makes it, every rank gets its
    path), logged as a warning so the user knows where the stores went."""
    rt = runtime()
    path = tempfile.mkdtemp(prefix=f"distinterp-{kind}-") if rt.is_coordinator else None
    path = rt.broadcast(path)
    logger.warning("%s: no output_path given; the stores go to %s", kind, path)
    return str(path)


class Models:
    """The model and weight restrictions of the store a rank runs next: each checkpoint is loaded once per
    rank (its stores are contiguous in every rank's share, so only the last one is kept), and `loads`
    lists every load in order (tests count them)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.key: str | None = None
        self.model: torch.nn.Module | None = None
        self.masks: dict[str, ParamMasks] = {}
        self.loads: list[str] = []

    def get(self, run: Run) -> torch.nn.Module:
        """The run's model, loaded unless it is the one held."""
        if self.key != run.model_key or self.model is None:
            self.model, self.masks = None, {}  # free the last checkpoint before loading the next
            model = run.model if isinstance(run.model, torch.nn.Module) else run.model()
            if not isinstance(model, torch.nn.Module):
                raise TypeError(
                    f"{self.kind}: the loader of {run.model_key!r} returned {type(model).__name__}, not a model"
                )
            self.model, self.key = model, run.model_key
            self.loads.append(run.model_key)
        return self.model

    def param_masks(self, run: Run) -> ParamMasks | None:
        """The run's restriction as masks on its model (None: every weight), each built once."""
        if run.restriction is None:
            return None
        key = json.dumps(run.restriction)
        if key not in self.masks:
            self.masks[key] = restriction_masks(self.get(run), run.restriction, run.label)
        return self.masks[key]


def restriction_masks(model: torch.nn.Module, restriction: str | list[str], label: str) -> ParamMasks:
    """create_param_masks of one store's restriction, its errors naming the store."""
    try:
        return create_param_masks(model, restriction)
    except WeightRestrictionError as e:
        raise WeightRestrictionError(f"{label}: restriction {restriction!r}: {e}") from None


def _run_entry(run: Run) -> dict[str, Any]:
    """What the record keeps of one run beyond the shared settings: its own settings, restriction, data."""
    entry = identity(run.kwargs)
    if run.restriction is not None:
        entry["restriction"] = run.restriction
    if run.dataset is not None:
        entry["dataset"] = fingerprint(input_ids_tensor(run.dataset, f"{run.label}: dataset"))
    return entry


def run_sweep(
    kind: str,
    runs: Sequence[Run],
    dataset: Any,
    observables: dict[str, Any],
    *,
    output_path: str,
    storage_options: dict[str, Any] | None = None,
    array_task: tuple[int, int] | None = None,
    common: Mapping[str, Any],
    extra: dict[str, Any] | None = None,
    axes: Sequence[tuple[str, Sequence[Any]]] | None = None,
    models: Models | None = None,
) -> Location:
    """Run this job's share of every store under the root; returns the root. Collective under torchrun.

    Everything is validated, and the root's record checked, before the first store is touched. A store
    whose chains (this task's) are all complete is skipped without loading its model. `axes`: the
    (name, values) whose product the runs are, in order (the last fastest); recorded for aggregation.
    """
    if not runs:
        raise ValueError(f"{kind}: nothing to run (no checkpoints / cells)")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{kind}: labels repeat: {sorted({x for x in labels if labels.count(x) > 1})}")
    if axes is not None and int(np.prod([len(v) for _, v in axes])) != len(runs):
        raise ValueError(f"{kind}: axes {[n for n, _ in axes]} do not multiply to the {len(runs)} stores")
    args = {r.label: sample_arguments({**common, **r.kwargs}, kind) for r in runs}
    for r in runs:
        if r.restriction is not None and args[r.label].get("param_masks") is not None:
            raise TypeError(f"{kind}: {r.label} has a restriction and param_masks; give one of them")
    configs = {label: sampler_config(a) for label, a in args.items()}
    fsdp = {int(a.get("fsdp_size", 1)) for a in args.values()}
    if len(fsdp) != 1:
        raise ValueError(f"{kind}: fsdp_size differs between stores ({sorted(fsdp)}); give one value")
    root = Location(str(output_path), dict(storage_options or {}))
    shared = identity(sample_arguments(common, kind))
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "kind": kind,
        "labels": labels,
        "settings": shared,
        "runs": {r.label: _run_entry(r) for r in runs if _run_entry(r)},
        "dataset": fingerprint(input_ids_tensor(dataset, "dataset")),
        "axes": [[name, list(values)] for name, values in (axes or [(default_axis(kind), labels)])],
        **(extra or {}),
    }
    rt = runtime()
    mine = share([(label, c) for label in labels for c in range(configs[label].num_chains)], array_task)
    todo: list[Pair] = []
    error: BaseException | None = None
    fresh = False
    if rt.is_coordinator:
        try:
            fresh = read_record(root) is None
            write_record(root, record)
            todo = pairs_left(root, by_label(mine), {k: c.num_sgld_steps for k, c in configs.items()})
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    todo, error = rt.broadcast((todo, error))
    if error is not None:
        raise error
    collective = fsdp.pop() > 1 or not rt.is_distributed
    blocks = by_label(todo if collective else share(todo, (rt.rank, rt.world_size)))
    logger.info(
        "%s: %d of %d stores to (finish) sampling in this job; rank %d runs %d chains of %d stores",
        kind, len(by_label(todo)), len(by_label(mine)), rt.rank, sum(len(c) for _, c in blocks), len(blocks),
    )  # fmt: skip
    cache = models if models is not None else Models(kind)
    by_name = {r.label: r for r in runs}
    failure: BaseException | None = None
    try:
        for label, chains in blocks:
            run = by_name[label]
            model = cache.get(run)
            kwargs = {**common, **run.kwargs}
            masks = cache.param_masks(run)
            if masks is not None:
                kwargs["param_masks"] = masks
            with contextlib.nullcontext() if collective else solo(), result_unused():
                sample(
                    model,
                    run.dataset if run.dataset is not None else dataset,
                    observables,
                    output_path=child(root, label).url,
                    storage_options=root.storage_options,
                    chains=list(chains),
                    **kwargs,
                )
    except Exception as e:  # shared with every rank below
        if collective:
            _forget(root, labels, fresh, rt)
            raise
        failure = e
    if not collective:
        _share_failure(failure, blocks, root, labels, fresh, rt)
        if rt.is_coordinator:  # ranks that shared a store each saw only their chains finish
            for label, _ in by_label(todo):
                checkpointed = args[label].get("checkpoint_every") is not None
                _complete(child(root, label), configs[label].num_sgld_steps, checkpointed)
    rt.barrier()
    return root


def _share_failure(
    failure: BaseException | None,
    blocks: Sequence[tuple[str, tuple[int, ...]]],
    root: Location,
    labels: Sequence[str],
    fresh: bool,
    rt: Runtime,
) -> None:
    """Every rank learns whether any rank failed; all stop, the failing rank with its own error, the
    others with a SweepError naming the rank, its stores and the error."""
    news = None if failure is None else f"{type(failure).__name__}: {failure}"
    seen = rt.all_gather((news, [label for label, _ in blocks]))
    failed = [(r, n, ls) for r, (n, ls) in enumerate(seen) if n is not None]
    if not failed:
        return
    _forget(root, labels, fresh, rt)
    if failure is not None:
        raise failure
    r, news, ls = failed[0]
    raise SweepError(f"rank {r} failed while sampling its stores {ls}: {news}")


def _forget(root: Location, labels: Sequence[str], fresh: bool, rt: Runtime) -> None:
    """Remove the record a failed first run wrote when no store was created (the corrected command is a
    new sweep, not refused as a change)."""
    if (
        fresh
        and rt.is_coordinator
        and not any(read_root_attrs(child(root, label)) is not None for label in labels)
    ):
        remove_record(root)


def _complete(location: Location, num_steps: int, checkpointed: bool) -> None:
    """Mark a store completed once all its chains are, and drop its chain checkpoints (rank 0, after every
    rank's share: ranks that shared a store each saw only their own chains finish)."""
    attrs = read_root_attrs(location)
    if attrs is None or attrs.get("completed") == 1:
        return
    steps = steps_done(location)
    if steps is not None and (steps >= num_steps).all():
        mark_completed(location)
        if checkpointed:
            CheckpointStore(location).clear()


# ─── Aggregation ───────────────────────────────────────────────────────────────


@dataclass
class Cell:
    """One store's share of the aggregate: LLC per chain (chains the estimate used), health, or why not."""

    missing: str | None = None
    unusable: str | None = None
    """A finished store with no chain to use (every chain diverged): NaN and unhealthy, not a reason to
    refuse the root (a calibration grid's largest lr diverges as a matter of course)."""
    chains: list[int] = field(default_factory=list)
    per_chain: list[float] = field(default_factory=list)
    mean: float = float("nan")
    std: float = float("nan")
    healthy: bool = False
    problems: str = ""
    rhat: float = float("nan")
    ess: float = float("nan")
    width: int = 0
    distance_growth: float = float("nan")
    """The localization check's pooled distance growth (save_metrics stores; NaN without the distance)."""


def _summarise(loc: Location, allow_partial: bool, thresholds: Thresholds | None, compute: bool) -> Cell:
    """Read one store (and let it go): what is missing, and unless told not to, its LLC and verdict."""
    attrs = root_attrs(loc)
    if attrs is None:
        return Cell(missing="not started", problems="not started")
    cell = Cell()
    if attrs.get("completed") != 1:
        steps = steps_done(loc)
        if steps is None:
            return Cell(missing="not started (created half-way)", problems="not started")
        total = _num_steps(attrs) or int(open_tree(loc).dataset.sizes["step"])
        left = [f"chain {c} ({int(s)}/{total})" for c, s in enumerate(steps) if s < total]
        cell.missing = "incomplete: " + ", ".join(left)
    if not compute:
        return cell
    tree = open_store(loc)
    cell.width = int(tree.dataset.sizes["chain"])
    try:
        res = compute_llc(tree, allow_partial=allow_partial, check=False)
        cell.chains = [int(c) for c in res.attrs["chains"]]
        cell.per_chain = [float(v) for v in res.llc_per_chain.values]
        cell.mean, cell.std = float(res.llc_mean), float(res.llc_std)
    except IncompleteStoreError:  # an unfinished store says so in `missing` already
        if cell.missing is None:
            cell.unusable = "no complete, finite chain"
    verdict = diagnose(tree, thresholds=thresholds)
    cell.rhat, cell.ess = float(verdict.checks.rhat), float(verdict.checks.ess_bulk)
    if "distance_growth_pooled" in verdict.checks:
        cell.distance_growth = float(verdict.checks.distance_growth_pooled)
    cell.healthy = bool(verdict.healthy)
    cell.problems = "\n".join(verdict.problems)
    tree.close()
    return cell


def _num_steps(attrs: Mapping[str, Any]) -> int:
    """The SGLD steps per chain a store's attributes declare (0 when they do not)."""
    return int(attrs.get("distinterp", {}).get("num_steps", 0) or 0)


def aggregate_sweep(
    output_path: str | Location,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    thresholds: Thresholds | None = None,
) -> xr.Dataset:
    """LLC and health verdict per store over the root's labels, as one Dataset with a dim per axis of the
    sweep (`checkpoint`, `restriction`, `dataset`, grid fields; a trajectory's `checkpoint` with a `step`
    coord, a calibration's flat `cell`): llc_mean/std/sem/per_chain, `healthy`, `problems`, rhat, ess,
    distance_growth (the localization check; NaN for stores without save_metrics).

    Stores are read one at a time (memory bounded whatever their number). An unfinished store is refused
    with everything that is missing named, unless allow_partial: then each store's complete chains are
    used, and stores without any are NaN and named in attrs['missing'].
    """
    root = (
        output_path
        if isinstance(output_path, Location)
        else Location(str(output_path), dict(storage_options or {}))
    )
    record = read_record(root)
    if record is None:
        raise FileNotFoundError(f"{root}: no {RECORD} here; not a sweep, trajectory or calibration root")
    labels: list[str] = record["labels"]
    cells: list[Cell] = []
    for label in labels:  # once a store is missing and partial is not allowed, only list what is missing
        compute = allow_partial or not any(c.missing for c in cells)
        cells.append(_summarise(child(root, label), allow_partial, thresholds, compute))
    missing = {label: c.missing for label, c in zip(labels, cells) if c.missing}
    if missing and not allow_partial:
        raise IncompleteStoreError(
            f"{root}: {len(missing)} of {len(labels)} stores are unfinished:\n"
            + "\n".join(f"  {label}: {why}" for label, why in missing.items())
            + "\nRerun the same command to finish them, or pass allow_partial=True (--allow-partial) to use "
            "complete chains only."
        )
    n = len(labels)
    width = max([c.width for c in cells] or [0])
    per_chain = np.full((n, width), np.nan)
    for i, c in enumerate(cells):
        per_chain[i, c.chains] = c.per_chain
    used = np.isfinite(per_chain).sum(axis=1)
    std = np.asarray([c.std for c in cells])
    flat = {
        "llc_mean": np.asarray([c.mean for c in cells]),
        "llc_std": std,
        "llc_sem": std / np.sqrt(np.maximum(used - 1, 1)),
        "llc_per_chain": per_chain,
        "num_chains_used": used,
        "healthy": np.asarray([c.healthy for c in cells], dtype=bool),
        "problems": np.asarray([c.problems for c in cells], dtype=object).astype(str),
        "rhat": np.asarray([c.rhat for c in cells]),
        "ess_bulk": np.asarray([c.ess for c in cells]),
        "distance_growth": np.asarray([c.distance_growth for c in cells]),
    }
    unusable = [label for label, c in zip(labels, cells) if c.unusable]
    attrs = {"kind": record["kind"], "root": str(root), "missing": sorted([*missing, *unusable])}
    axes = record_axes(record)
    shape = tuple(len(values) for _, values in axes)
    dims = tuple(name for name, _ in axes)
    out = xr.Dataset(
        {
            name: ((*dims, "chain") if v.ndim == 2 else dims, v.reshape(shape + v.shape[1:]))
            for name, v in flat.items()
        },
        coords={name: list(values) for name, values in axes},
        attrs={**attrs, "axes": list(dims)},
    )
    if "checkpoint" in dims:
        steps = [_step(str(label)) for label in out.checkpoint.values]
        if all(s is not None for s in steps):
            out = out.assign_coords(step=("checkpoint", np.asarray(steps, dtype=np.int64)))
    return out


def default_axis(kind: str) -> str:
    """The one dim of a sweep given no axes: a trajectory's `checkpoint`, otherwise `cell`."""
    return "checkpoint" if kind == "trajectory" else "cell"


def record_axes(record: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """The axes a record names, in order; a version-1 record's one dim (`checkpoint` or `cell`)."""
    if record.get("axes"):
        return [(str(name), list(values)) for name, values in record["axes"]]
    return [(default_axis(record["kind"]), list(record["labels"]))]


def _step(label: str) -> int | None:
    """The training step a label names ('1000', 'step1000', 'checkpoint-1000'), or None."""
    m = re.search(r"(\d+)$", label)
    return int(m.group(1)) if m else None
