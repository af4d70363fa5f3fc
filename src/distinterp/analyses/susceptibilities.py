"""Per-token susceptibilities of weight restrictions (appendix C.4 of arXiv 2504.18274), as devinterp 2.x.

`susceptibilities()` runs one sampling run per restriction (each sharded over all torchrun ranks) and
computes on rank 0; `compute_susceptibilities()` streams each store chunk by chunk, holding only
(sequence, token) accumulators, and returns the reference's flattened /susceptibilities + /context tree.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from distinterp.analyses.observables import ObservableLosses, available_observables
from distinterp.data import to_obs_id
from distinterp.errors import AnalysisInputError
from distinterp.integrity import names_damaged_chunks
from distinterp.store.source import Samples, samples_of

Restriction = dict[str, torch.Tensor | None] | str | list[str] | None
"""Param masks, or a restriction string / list for distinterp.masks.create_param_masks, or None (full)."""


def check_restriction_names(restrictions: Mapping[str, Any], field: str) -> None:
    if not isinstance(restrictions, Mapping) or "full" not in restrictions:
        got = list(restrictions) if isinstance(restrictions, Mapping) else type(restrictions).__name__
        raise AnalysisInputError(
            f"{field}: must include a 'full' key (the unrestricted model; None for its masks), got {got}"
        )
    if len(restrictions) < 2:
        raise AnalysisInputError(f"{field}: needs at least one restriction besides 'full'")


def restriction_path(base: str | Path, name: str) -> str | Path:
    """`<stem>_<name><suffix>` beside `base` (a local path or a URL), as devinterp names them."""
    if isinstance(base, str) and "://" in base:
        head, tail = posixpath.split(base.rstrip("/"))
        stem, suffix = posixpath.splitext(tail)
        return f"{head}/{stem}_{name}{suffix}"
    p = Path(base)
    return p.parent / f"{p.stem}_{name}{p.suffix}"


@names_damaged_chunks
def compute_susceptibilities(
    wr_map: Mapping[str, Samples],
    sampling_task: str,
    observable_names: list[str] | None = None,
    include_sampling_task: bool = False,
    *,
    allow_partial: bool = False,
) -> xr.DataTree:
    """Susceptibility of every probe token to every weight restriction w (all but "full").

    With L0 = mean "full" init loss, Pbar = the sampling task's mean (batch, token) loss at a draw,
    phi = Pbar - L0 and l = a probe token's loss (arXiv 2504.18274, appendix C.4; no n_beta factor):

        chi_w = E_w[phi * (Pbar - l)] - E_w[phi] * E_full[Pbar - l]

    expectations over the pooled (chain, draw) of w's run and of the "full" run. Ours: `allow_partial`;
    a store may be given by its path, URL or SampleStore (opened lazily).
    """
    check_restriction_names(wr_map, "wr_map")
    trees = {name: samples_of(samples) for name, samples in wr_map.items()}
    sampling_id = to_obs_id(sampling_task)
    full_ds = trees["full"].dataset if isinstance(trees["full"], xr.DataTree) else trees["full"]
    present = available_observables(full_ds)
    if sampling_id not in present:
        raise AnalysisInputError(
            f"sampling_task: {sampling_task!r} (variable loss_{sampling_id}) is not an observable of the "
            f"'full' store; available: {sorted(present)}"
        )
    if observable_names is None:
        obs_ids = [o for o in present if include_sampling_task or o != sampling_id]
    else:
        obs_ids = [to_obs_id(n) for n in observable_names]
    if not obs_ids:
        raise AnalysisInputError(
            f"observable_names: no probe observables; available: {sorted(present)}, sampling_task "
            f"{sampling_id!r}, include_sampling_task={include_sampling_task}. Add a probe observable or "
            "pass include_sampling_task=True."
        )
    keys = list(dict.fromkeys([sampling_id, *obs_ids]))
    stores = {
        name: ObservableLosses.open(
            tree,
            keys,
            allow_partial=allow_partial,
            what=f"compute_susceptibilities[{name!r}]",
            field="observable_names",
        )
        for name, tree in trees.items()
    }
    full = stores["full"]
    if "init_loss" not in full.ds or full.ds["init_loss"].dims != ("chain", "token_pos"):
        raise AnalysisInputError(
            "compute_susceptibilities['full']: store field init_loss missing or not (chain, token_pos)"
        )
    _check_same_layout(stores, obs_ids)

    init_loss_mean = float(np.asarray(full.ds["init_loss"].isel(chain=full.chains).values, np.float64).mean())
    full_sampling_mean = float(_mean_over_draws(full, sampling_id).mean())
    full_delta = {o: full_sampling_mean - _mean_over_draws(full, o) for o in obs_ids}

    sus: dict[str, dict[str, np.ndarray]] = {}
    for name, store in stores.items():
        if name == "full":
            continue
        pbar = _draw_means(store, sampling_id)  # (chains, draws)
        phi = pbar - init_loss_mean
        e_phi, e_phi_pbar = phi.mean(), (phi * pbar).mean()
        sus[name] = {
            o: (e_phi_pbar - _weighted_mean_over_draws(store, o, phi) - e_phi * full_delta[o]).astype(
                np.float32
            )
            for o in obs_ids
        }
    ids = {o: np.asarray(full.ds[f"input_ids_{o}"].values) for o in obs_ids}
    return _build_output(sus, ids)


def _check_same_layout(stores: dict[str, ObservableLosses], obs_ids: list[str]) -> None:
    """Every restriction's store has the same observables (rows, context, input ids) as 'full'."""
    full = stores["full"]
    for name, store in stores.items():
        if (store.sizes, store.context_length) != (full.sizes, full.context_length):
            raise AnalysisInputError(
                f"wr_map[{name!r}]: observables {dict(zip(store.keys, store.sizes))} x {store.context_length} tokens "
                f"differ from 'full': {dict(zip(full.keys, full.sizes))} x {full.context_length} tokens"
            )
        for o in obs_ids:
            if name != "full" and not np.array_equal(
                store.ds[f"input_ids_{o}"].values, full.ds[f"input_ids_{o}"].values
            ):
                raise AnalysisInputError(f"wr_map[{name!r}]: store field input_ids_{o} differs from 'full'")


def _chunks(store: ObservableLosses, key: str) -> Any:
    """(chain position, draw slice, float64 (draws, rows, T) chunk) over the store's usable chains."""
    for i, c in enumerate(store.chains):
        for draws in store.draw_slices():
            yield i, draws, store.read(key, c, draws).astype(np.float64)


def _draw_means(store: ObservableLosses, key: str) -> np.ndarray:
    """Mean over (batch, token) of loss_<key> per (chain, draw)."""
    out = np.empty((len(store.chains), store.num_draws))
    for i, draws, x in _chunks(store, key):
        out[i, draws] = x.mean(axis=(1, 2))
    return out


def _mean_over_draws(store: ObservableLosses, key: str) -> np.ndarray:
    """Mean over pooled (chain, draw) of loss_<key>, per (batch, token)."""
    return _weighted_mean_over_draws(store, key, np.ones((len(store.chains), store.num_draws)))


def _weighted_mean_over_draws(store: ObservableLosses, key: str, weights: np.ndarray) -> np.ndarray:
    """Mean over pooled (chain, draw) of weights[chain, draw] * loss_<key>, per (batch, token)."""
    total = np.zeros((store.sizes[store.keys.index(key)], store.context_length))
    for i, draws, x in _chunks(store, key):
        total += np.tensordot(weights[i, draws], x, axes=(0, 0))
    return total / weights.size


# ─── Output: the reference's flattened layout ───────────────────────────────


def _build_output(sus: dict[str, dict[str, np.ndarray]], ids: dict[str, np.ndarray]) -> xr.DataTree:
    """/susceptibilities: sus (sus_flat, wr); /context: input_ids (ctx_flat); observables in sorted order."""
    wrs = list(sus)
    names = sorted(ids)
    sus_flat = np.concatenate([np.stack([sus[w][o].ravel() for w in wrs], axis=-1) for o in names])
    shapes = {o: ids[o].shape for o in names}
    sus_coords = _flat_coords(
        names, {o: (s[0], s[1] - 1) for o, s in shapes.items()}, "sus_flat", "target_position", 1
    )
    ctx_coords = _flat_coords(names, shapes, "ctx_flat", "position", 0)
    attrs = {"dataset_id_to_name": names}
    return xr.DataTree.from_dict(
        {
            "/susceptibilities": xr.Dataset(
                {"sus": (("sus_flat", "wr"), sus_flat)},
                coords=sus_coords.merge(xr.Coordinates({"wr": wrs})),
                attrs=attrs,
            ),
            "/context": xr.Dataset(
                {"input_ids": (("ctx_flat",), np.concatenate([ids[o].ravel() for o in names]))},
                coords=ctx_coords,
                attrs=dict(attrs),
            ),
        }
    )


def _flat_coords(
    names: list[str], shapes: dict[str, tuple[int, int]], dim: str, position: str, first: int
) -> xr.Coordinates:
    """dataset_id, batch and (1-indexed target_ / 0-indexed) position of every flattened entry."""
    parts: dict[str, list[np.ndarray]] = {"dataset_id": [], "batch": [], position: []}
    for i, o in enumerate(names):
        rows, cols = shapes[o]
        b, p = np.meshgrid(np.arange(rows), np.arange(first, cols + first), indexing="ij")
        parts["dataset_id"].append(np.full(rows * cols, i))
        parts["batch"].append(b.ravel())
        parts[position].append(p.ravel())
    return xr.Coordinates({k: (dim, np.concatenate(v)) for k, v in parts.items()}, indexes={})


def __getattr__(name: str) -> Any:
    """susceptibilities(): moved to distinterp.api (sample, then compute: above this module); the old import works."""
    if name in ("susceptibilities",):
        from distinterp import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
