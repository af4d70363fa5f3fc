"""Many sample() runs under one root: trajectories (one store per checkpoint) and calibration grids (one
per cell) are both this.

Layout: `<root>/<label>.zarr` is a normal store, written by `sample()` exactly as a standalone call with
the same arguments would write it; `<root>/distinterp-sweep.json` records the kind, the labels in order
and the settings, written once and compared on every rerun. Work spreads in two ways, which compose:
the flattened (label, chain) list is cut into contiguous blocks for Slurm array tasks, and each store's
block is one collective `sample(chains=...)` call that shards those chains over the torchrun ranks.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
import xarray as xr

from distinterp.analyses.diagnostics import Thresholds, diagnose
from distinterp.analyses.llc import compute_llc
from distinterp.config import SamplerConfig, merge_rmsprop_aliases
from distinterp.data import fingerprint, input_ids_tensor
from distinterp.identity import INPUTS, WHERE, sweep_identity
from distinterp.parallel.distributed import runtime
from distinterp.parallel.plan import array_task_chains
from distinterp.paths import sibling
from distinterp.sampling import sample
from distinterp.store import (
    IncompleteStoreError,
    Location,
    StoreConfigMismatch,
    StoreError,
    open_tree,
    read_progress,
    read_root_attrs,
)

logger = logging.getLogger(__name__)

RECORD = "distinterp-sweep.json"
RECORD_VERSION = 1
ModelOrLoader = torch.nn.Module | Callable[[], torch.nn.Module]

_OWN = INPUTS | WHERE
"""sample() arguments the sweep sets itself; a caller passing them is told so."""
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclass(frozen=True)
class Run:
    """One store of a sweep: its label, its model (or a zero-argument loader) and its own sample() kwargs."""

    label: str
    model: ModelOrLoader
    kwargs: dict[str, Any] = field(default_factory=dict)


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
    return fsspec.core.url_to_fs(root.url, **root.fsspec_options())


def read_record(root: Location) -> dict[str, Any] | None:
    """The root's record (kind, labels, settings), or None when there is none yet."""
    try:
        if root.is_local:
            path = root.local_path / RECORD
            return json.loads(path.read_text()) if path.is_file() else None
        fs, base = _fs(root)
        path = f"{base.rstrip('/')}/{RECORD}"
        return json.loads(fs.cat_file(path)) if fs.exists(path) else None
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


def write_record(root: Location, record: dict[str, Any]) -> None:
    """Write the root's record once; an existing one must be equal, else the rerun is refused untouched."""
    stored = read_record(root)
    if stored is not None:
        diffs = _diff(stored, record, "")
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


def work_blocks(
    sizes: Sequence[tuple[str, int]], array_task: tuple[int, int] | None
) -> list[tuple[str, tuple[int, ...]]]:
    """This array task's contiguous block of the flattened (label, chain) list, grouped by label."""
    pairs = [(label, c) for label, n in sizes for c in range(n)]
    if array_task is not None:
        pairs = [pairs[i] for i in array_task_chains(len(pairs), *array_task)]
    blocks: dict[str, list[int]] = {}
    for label, c in pairs:
        blocks.setdefault(label, []).append(c)
    return [(label, tuple(chains)) for label, chains in blocks.items()]


def chains_done(location: Location, chains: Sequence[int], num_steps: int) -> bool:
    """Whether every one of these chains is durably complete in the store (False when there is none)."""
    attrs = read_root_attrs(location)
    if attrs is None:
        return False
    if attrs.get("completed") == 1:
        return True
    steps, _ = read_progress(location)
    return bool(all(steps[c] >= num_steps for c in chains if c < len(steps)))


def stores_complete(root: Location, labels: Sequence[str]) -> bool:
    """Whether the store of every label under the sweep's root is marked completed."""
    return all((read_root_attrs(child(root, label)) or {}).get("completed") == 1 for label in labels)


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
) -> Location:
    """Run this job's share of every store under the root; returns the root. Collective under torchrun.

    Everything is validated, and the root's record checked, before the first store is touched. A store
    whose chains (this task's) are all complete is skipped without loading its model.
    """
    if not runs:
        raise ValueError(f"{kind}: nothing to run (no checkpoints / cells)")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{kind}: labels repeat: {sorted({x for x in labels if labels.count(x) > 1})}")
    args = {r.label: sample_arguments({**common, **r.kwargs}, kind) for r in runs}
    configs = {label: sampler_config(a) for label, a in args.items()}
    root = Location(str(output_path), dict(storage_options or {}))
    shared = identity(sample_arguments(common, kind))
    record = {
        "version": RECORD_VERSION,
        "kind": kind,
        "labels": labels,
        "settings": shared,
        "runs": {r.label: identity(r.kwargs) for r in runs if identity(r.kwargs)},
        "dataset": fingerprint(input_ids_tensor(dataset, "dataset")),
        **(extra or {}),
    }
    rt = runtime()
    blocks = work_blocks([(label, configs[label].num_chains) for label in labels], array_task)
    todo: list[tuple[str, tuple[int, ...]]] = []
    error: BaseException | None = None
    fresh = False
    if rt.is_coordinator:
        try:
            fresh = read_record(root) is None
            write_record(root, record)
            todo = [
                (label, chains)
                for label, chains in blocks
                if not chains_done(child(root, label), chains, configs[label].num_sgld_steps)
            ]
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    todo, error = rt.broadcast((todo, error))
    if error is not None:
        raise error
    by_label = {r.label: r for r in runs}
    logger.info("%s: %d of %d stores to (finish) sampling in this job", kind, len(todo), len(blocks))
    try:
        for label, chains in todo:
            run = by_label[label]
            model = run.model if isinstance(run.model, torch.nn.Module) else run.model()
            if not isinstance(model, torch.nn.Module):
                raise TypeError(
                    f"{kind}: the loader of {label!r} returned {type(model).__name__}, not a model"
                )
            sample(
                model,
                dataset,
                observables,
                output_path=child(root, label).url,
                storage_options=root.storage_options,
                chains=list(chains),
                **{**common, **run.kwargs},
            )
            del model
    except BaseException:
        if fresh and not any(read_root_attrs(child(root, label)) is not None for label in labels):
            remove_record(root)  # nothing was written: the corrected command must not be refused
        raise
    rt.barrier()
    return root


def aggregate_sweep(
    output_path: str | Location,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    thresholds: Thresholds | None = None,
) -> xr.Dataset:
    """LLC and health verdict per store over the root's labels, as one Dataset over a `checkpoint` or `cell`
    dim (`healthy`, and `problems` as the diagnostics name them, one per line).

    An unfinished store is refused with everything that is missing named, unless allow_partial: then each
    store's complete chains are used, and stores without any are NaN and named in attrs['missing'].
    """
    root = (
        output_path
        if isinstance(output_path, Location)
        else Location(str(output_path), dict(storage_options or {}))
    )
    record = read_record(root)
    if record is None:
        raise FileNotFoundError(f"{root}: no {RECORD} here; not a trajectory or calibration root")
    dim = "checkpoint" if record["kind"] == "trajectory" else "cell"
    labels: list[str] = record["labels"]
    missing: dict[str, str] = {}
    trees: dict[str, xr.DataTree] = {}
    for label in labels:
        loc = child(root, label)
        attrs = read_root_attrs(loc)
        if attrs is None:
            missing[label] = "not started"
            continue
        trees[label] = open_tree(loc)
        if attrs.get("completed") != 1:
            steps, _ = read_progress(loc)
            total = trees[label].dataset.sizes["step"]
            left = [f"chain {c} ({int(s)}/{total})" for c, s in enumerate(steps) if s < total]
            missing[label] = "incomplete: " + ", ".join(left)
    if missing and not allow_partial:
        raise IncompleteStoreError(
            f"{root}: {len(missing)} of {len(labels)} stores are unfinished:\n"
            + "\n".join(f"  {label}: {why}" for label, why in missing.items())
            + "\nRerun the same command to finish them, or pass allow_partial=True (--allow-partial) to use "
            "complete chains only."
        )
    results: dict[str, xr.Dataset] = {}
    healthy = np.zeros(len(labels), dtype=bool)
    problems = [""] * len(labels)
    rhat, ess = np.full(len(labels), np.nan), np.full(len(labels), np.nan)
    for i, label in enumerate(labels):
        tree = trees.get(label)
        if tree is None:
            problems[i] = "not started"
            continue
        try:
            results[label] = compute_llc(tree, allow_partial=allow_partial, check=False)
        except IncompleteStoreError:
            missing[label] = missing.get(label, "no complete chain")
        verdict = diagnose(tree, thresholds=thresholds)
        rhat[i], ess[i] = float(verdict.checks.rhat), float(verdict.checks.ess_bulk)
        healthy[i] = verdict.healthy
        problems[i] = "\n".join(verdict.problems)
    width = max([tree.dataset.sizes["chain"] for tree in trees.values()] or [0])
    per_chain = np.full((len(labels), width), np.nan)
    mean = np.full(len(labels), np.nan)
    std = np.full(len(labels), np.nan)
    for i, label in enumerate(labels):
        res = results.get(label)
        if res is None:
            continue
        per_chain[i, res.attrs["chains"]] = res.llc_per_chain.values
        mean[i] = float(res.llc_mean)
        std[i] = float(res.llc_std)
    used = np.isfinite(per_chain).sum(axis=1)
    out = xr.Dataset(
        {
            "llc_mean": (dim, mean),
            "llc_std": (dim, std),
            "llc_sem": (dim, std / np.sqrt(np.maximum(used - 1, 1))),
            "llc_per_chain": ((dim, "chain"), per_chain),
            "num_chains_used": (dim, used),
            "healthy": (dim, healthy),
            "problems": (dim, np.asarray(problems, dtype=object).astype(str)),
            "rhat": (dim, rhat),
            "ess_bulk": (dim, ess),
        },
        coords={dim: labels},
        attrs={"kind": record["kind"], "root": str(root), "missing": sorted(missing)},
    )
    steps = [_step(label) for label in labels]
    if dim == "checkpoint" and all(s is not None for s in steps):
        out = out.assign_coords(step=(dim, np.asarray(steps, dtype=np.int64)))
    return out


def _step(label: str) -> int | None:
    """The training step a label names ('1000', 'step1000', 'checkpoint-1000'), or None."""
    m = re.search(r"(\d+)$", label)
    return int(m.group(1)) if m else None
