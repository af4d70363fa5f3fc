"""What makes two runs the same run, defined once: the store's identity, the sweep record's, the settings a
store records, and the model/mask fingerprints they rest on.

sample()'s arguments fall in three groups. WHERE says where and which part of a run this call is; HOW says
how it executes (float rounding at most); everything else is IDENTITY: a store or sweep whose identity
differs is refused, never mixed. tests/test_route.py checks that the groups cover sample()'s signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from distinterp.config import SamplerConfig
from distinterp.data import ProbeRows, fingerprint

INPUTS = frozenset({"model", "dataset", "observables"})
"""sample()'s positional inputs: in the identity by fingerprint (model, dataset, observables' data)."""
WHERE = frozenset({"output_path", "storage_options", "chains"})
"""sample() arguments that say where and which part of a run a call is."""
HOW = frozenset({"device", "checkpoint_every", "chains_per_batch", "compile", "run_settings"})
"""sample() arguments that say how a run executes (same rows to float rounding): not identity."""
NOT_IDENTITY = INPUTS | WHERE | HOW
"""sample() arguments a sweep record leaves out (inputs are fingerprinted apart)."""
RUN_SPECIFIC = frozenset({"output_path", "storage_options", "chains", "array_task"})
"""Job settings that say where and which part of a run a job is: never recorded (storage_options may hold
credentials)."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """Names, shapes, dtypes and a strided sample of values of every parameter: tells checkpoints apart."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            stride = max(1, flat.numel() // 4096)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(flat[::stride].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def masks_fingerprint(masks: Mapping[str, torch.Tensor | None]) -> str:
    """The parameter names and mask bits of a weight restriction (None: the whole parameter)."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        if m is not None:
            h.update(np.packbits(m.detach().to("cpu", torch.bool).numpy()).tobytes())
    return h.hexdigest()[:16]


def store_identity(
    config: SamplerConfig,
    model: torch.nn.Module,
    ids: torch.Tensor,
    obs_list: Sequence[ProbeRows],
    masks: Mapping[str, torch.Tensor | None],
    loss_fn: Any,
    batches_per_draw: int,
    obs_seed: int,
    layout: Mapping[str, Any],
    autocast_dtype: str | None = None,
) -> dict[str, Any]:
    """A store's identity attribute: everything that makes two runs the same run. A run off devinterp's
    noise stream records it and its fsdp_size (`layout`): stores of another stream or layout are refused."""
    identity: dict[str, Any] = {
        "sampler": config.model_dump(mode="json"),
        "batches_per_draw": batches_per_draw,
        "obs_seed": obs_seed,
        "context_length": ids.shape[1] - 1,
        "dataset": fingerprint(ids),
        "observables": [
            {
                "name": o.name,
                "obs_id": o.obs_id,
                "batches_per_draw": o.batches_per_draw,
                "data": o.fingerprint,
            }
            for o in obs_list
        ],
        "model": model_fingerprint(model),
        "param_masks": masks_fingerprint(masks),
        "loss_fn": None if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn)),
    }
    if layout["noise"] != "devinterp":
        identity["layout"] = dict(layout)
    if autocast_dtype is not None:  # another computation: its rows must not mix with float32 ones
        identity["autocast_dtype"] = autocast_dtype
    return identity


def _jsonable(name: str, value: Any) -> Any:
    """A recorded form of one argument: JSON values as they are, functions by name, masks by content."""
    if name == "param_masks" and isinstance(value, dict):
        return {"fingerprint": masks_fingerprint(value)}
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return repr(value)


def sweep_identity(args: Mapping[str, Any]) -> dict[str, Any]:
    """What a sweep's rerun must repeat: every sample() argument except its inputs, WHERE and HOW."""
    return {k: _jsonable(k, v) for k, v in sorted(args.items()) if k not in NOT_IDENTITY}


def recorded_settings(settings: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a store records of the job settings that created it (so `--from-store` reruns it): all but
    RUN_SPECIFIC and a job's own `exclude` (a trajectory's checkpoints, a calibration's grid)."""
    dumped: dict[str, Any] = settings.model_dump(mode="json", exclude=set(RUN_SPECIFIC | exclude))
    return dumped
