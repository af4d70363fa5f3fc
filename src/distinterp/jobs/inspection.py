"""`distinterp inspect STORE`: what a store holds (config, schema, layout, progress, sizes, analyses beside
it) and its diagnosis, as text; works on live stores and fsspec URLs."""

from __future__ import annotations

from typing import Any

import fsspec
import xarray as xr

from distinterp.analyses.chains import chain_status
from distinterp.analyses.diagnostics import Diagnosis, diagnose
from distinterp.paths import RESULTS, result_candidates
from distinterp.store import SampleStore
from distinterp.store.source import StoreSource, handle


def _sizes(store: SampleStore, names: list[str]) -> tuple[dict[str, int], list[str]]:
    """Bytes stored per array, and the objects beside the store that share its name (analyses, checkpoints)."""
    fs, root = fsspec.core.url_to_fs(store.url, **store.location.fsspec_options())
    root = root.rstrip("/")
    sizes = {}
    for name in names:
        try:
            sizes[name] = int(fs.du(f"{root}/{name}"))
        except FileNotFoundError:
            sizes[name] = 0
    parent, _, base = root.rpartition("/")
    try:
        siblings = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(parent or ".", detail=False))
    except FileNotFoundError:
        siblings = []
    stem = base.removesuffix(".zarr")
    results = {c.rsplit("/", 1)[-1] for kind in RESULTS for c in result_candidates(base, kind)}
    beside = [s for s in siblings if (s.startswith(stem + ".") and s != base) or s in results]
    return sizes, beside


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def describe(url: StoreSource, storage_options: dict[str, Any] | None = None) -> tuple[list[str], Diagnosis]:
    """Lines describing the store at url (a path, URL or SampleStore), and its diagnosis."""
    store = handle(url, storage_options)
    if store.is_local and not store.exists():
        raise FileNotFoundError(f"no store at {store}")
    ds = store.open().dataset
    return describe_dataset(ds, store), diagnose(ds)


def describe_dataset(ds: xr.Dataset, location: StoreSource) -> list[str]:
    """Config, schema, layout, per-chain progress, sizes and analyses beside the store."""
    sampler = ds.attrs.get("metadata", {}).get("config", {}).get("sampler", {})
    ours = ds.attrs.get("distinterp")
    store = handle(location)
    lines = [f"store     {store}  ({'distinterp' if ours else 'devinterp'}-written, zarr v3)"]
    lines.append("config    " + ", ".join(f"{k}={v}" for k, v in sorted(sampler.items()) if v is not None))
    if ours:
        lines.append(
            f"identity  {ours.get('config_hash')}  (schema v{ours.get('schema_version')}"
            + (f", d={ours['num_sampled_params']} sampled parameters" if "num_sampled_params" in ours else "")
            + (", job settings recorded" if "run_settings" in ours else "")
            + ")"
        )
    names = [str(n) for n in ds.data_vars]
    sizes, beside = _sizes(store, names)
    lines.append(f"schema    {len(ds.data_vars)} arrays, {_human(sum(sizes.values()))} stored")
    for name in sorted(names):
        var = ds[name]
        chunks = var.encoding.get("chunks")
        dims = ", ".join(f"{d}={n}" for d, n in zip(var.dims, var.shape))
        lines.append(
            f"  {name:28s} ({dims}) {var.dtype}"
            + (f"  chunks {tuple(chunks)}" if chunks else "")
            + f"  {_human(sizes.get(name, 0))}"
        )
    complete, incomplete, diverged = chain_status(ds)
    n = ds.sizes["chain"]
    finished = [c for c in complete if c not in diverged]
    state = "completed" if ds.attrs.get("completed") == 1 else "not completed"
    lines.append(
        f"progress  {len(finished)}/{n} chains complete, {len(diverged)} diverged, "
        f"{len(incomplete)} unfinished ({state})"
    )
    steps = ds["chain_steps_done"].values if "chain_steps_done" in ds else None
    for c in range(n):
        if c in diverged:
            lines.append(f"  chain {c}: diverged at step {diverged[c]}")
        elif c in incomplete and steps is not None:
            lines.append(f"  chain {c}: {int(steps[c])}/{ds.sizes['step']} steps")
    lines.append("beside    " + (", ".join(beside) if beside else "no analyses stored beside the store"))
    return lines
