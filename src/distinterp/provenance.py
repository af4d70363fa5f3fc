"""The numeric environment a store's bytes depend on: recorded once by its creator, and every writer that
continues it under another one warns and records that in an object of its own.

A chain's bytes are a function of (init_seed, chain) only at a fixed numeric environment: float
reductions (matmul, softmax, sums) are split by the number of intra-op threads, kernels differ across
devices, CPU instruction sets, torch/CUDA versions and dtypes, and CUDA needs deterministic algorithms.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distinterp.errors import (
    NumericEnvironmentWarning as NumericEnvironmentWarning,  # re-exported: its old home
)
from distinterp.paths import sibling
from distinterp.store import Location, redact
from distinterp.store.source import StoreSource, handle

logger = logging.getLogger(__name__)


def numeric_environment(
    model: torch.nn.Module, device: torch.device, engine: str, compile: bool | str = False
) -> dict[str, Any]:
    """What the bytes a chain writes depend on, besides the run's identity: device and its kind (CPU
    instruction set or GPU model), torch and CUDA versions, intra-op threads per process, parameter
    dtypes, deterministic algorithms, the engine that runs the chains, and torch.compile (its backend)."""
    if device.type == "cuda":
        kind = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        kind = torch.backends.cpu.get_cpu_capability()
    else:
        kind = None
    return {
        "device": device.type,
        "device_kind": kind,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads_per_process": torch.get_num_threads(),
        "dtype": ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "engine": engine,
        "compile": compile,
    }


def numerics_url(location: StoreSource) -> str:
    """Where continuations under another environment are recorded: `<store>.numerics/`, beside the store
    (zarr warns about foreign objects inside it), one JSON object per writer."""
    return sibling(handle(location).url, "numerics")


def note_environment(
    location: StoreSource,
    created_under: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    chains: Sequence[int],
    start_steps: Mapping[int, int],
    rank: int,
) -> str | None:
    """Warn and record (in an object only this writer writes) when this writer is about to write chains of
    a store created under another numeric environment. Returns the record's URL, or None when they agree
    (or the store predates these records)."""
    if created_under is None or dict(created_under) == dict(current) or not chains:
        return None
    store = handle(location)
    differs = {k: (created_under.get(k), current.get(k)) for k in sorted(set(created_under) | set(current))}
    differs = {k: v for k, v in differs.items() if v[0] != v[1]}
    record = {
        "created_under": dict(created_under),
        "written_under": dict(current),
        "differs": {k: {"created": a, "now": b} for k, (a, b) in differs.items()},
        "chains": {str(c): {"from_step": int(start_steps.get(c, 0))} for c in chains},
        "rank": rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    }
    url = f"{numerics_url(store)}/{record['time']}-rank{rank}-{uuid.uuid4().hex[:8]}.json"
    Location(url, store.location.storage_options).write_atomic(
        json.dumps(record, indent=1, sort_keys=True).encode()
    )
    what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differs.items())
    warnings.warn(
        f"{store}: created under another numeric environment ({what}); chains {list(chains)} written "
        f"now will not be bitwise those of an uninterrupted run. Recorded in {redact(url)}",
        NumericEnvironmentWarning,
        stacklevel=4,
    )
    return url
