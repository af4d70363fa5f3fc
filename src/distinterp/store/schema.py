"""The store's schema: its arrays (shape, dims, dtype, chunks), attributes and identity hash."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.dtype import get_data_type_from_native_dtype
from zarr.core.metadata import ArrayV3Metadata

logger = logging.getLogger(__name__)


SCHEMA_VERSION = 1
LOSS_DTYPE = "float32"
_NAN_FILL_B64 = "AAAAAAAA+H8="  # xarray's _FillValue encoding of NaN
STEPS_DONE = "chain_steps_done"
DIVERGED_STEP = "chain_diverged_step"


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: shape, named dims, dtype and chunks."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str
    chunks: tuple[int, ...]
    fill: float | int | None = None  # None: NaN for floats (and complex), 0 for ints
    attrs: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> ArrayV3Metadata:
        np_dtype = np.dtype(self.dtype)
        if self.fill is not None:
            fill = np_dtype.type(self.fill)
        elif np_dtype.kind in "fc":
            fill = np_dtype.type(complex(np.nan, np.nan) if np_dtype.kind == "c" else np.nan)
        else:
            fill = np_dtype.type(0)
        attrs = ({"_FillValue": _NAN_FILL_B64} if np_dtype.kind in "fc" else {}) | self.attrs
        return ArrayV3Metadata(
            shape=self.shape,
            data_type=get_data_type_from_native_dtype(np_dtype),
            chunk_grid=RegularChunkGrid(chunk_shape=self.chunks),
            chunk_key_encoding=DefaultChunkKeyEncoding(separator="/"),
            # zstd's frame checksum: every zstd reader verifies it on decode (integrity.py)
            codecs=[BytesCodec(), ZstdCodec(level=0, checksum=True)],
            fill_value=fill,
            attributes=attrs or None,
            dimension_names=self.dims,
        )


@dataclass(frozen=True)
class Schema:
    """Every array of a sampling store, declared up front, plus the root attributes."""

    arrays: dict[str, ArraySpec]
    attrs: dict[str, Any]
    num_chains: int
    num_steps: int
    step_chunk: int  # steps per chunk along `step` (= draws per chunk along `draw`)

    @property
    def config_hash(self) -> str:
        return str(self.attrs["distinterp"]["config_hash"])

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.attrs["distinterp"]["identity"])


def identity_hash(identity: dict[str, Any]) -> str:
    """Stable hash of a run's identity (everything that changes what a chain writes)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def build_schema(
    *,
    sampler: dict[str, Any],
    num_chains: int,
    num_draws: int,
    num_steps: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    context_length: int,
    observables: Iterable[tuple[str, int, int]],  # (obs_id, n_samples, batches_per_draw)
    metric_fields: Iterable[str] = (),
    metrics_numel: int | None = None,
    identity: dict[str, Any],
) -> Schema:
    """The reference schema (devinterp 2.x) plus the per-chain progress arrays."""
    chunk = min(50, num_draws)
    micro = gradient_accumulation_steps * batch_size
    T = context_length
    arrays: dict[str, ArraySpec] = {
        "init_loss": ArraySpec((num_chains, T), ("chain", "token_pos"), LOSS_DTYPE, (1, T)),
        "sampling_loss": ArraySpec(
            (num_chains, num_draws, batch_size, T),
            ("chain", "draw", "batch", "token_pos"),
            LOSS_DTYPE,
            (1, chunk, batch_size, T),
        ),
        "sampling_loss_micro": ArraySpec(
            (num_chains, num_steps, micro, T),
            ("chain", "step", "batch_sampling", "token_pos"),
            LOSS_DTYPE,
            (1, chunk, micro, T),
        ),
        "sampling_input_ids_micro": ArraySpec(
            (num_chains, num_steps, micro, T + 1),
            ("chain", "step", "batch_sampling", "token"),
            "int64",
            (1, chunk, micro, T + 1),
        ),
    }
    obs_meta = []
    for obs_id, n_samples, bpd in observables:
        dim = f"batch_{obs_id}"
        arrays[f"loss_{obs_id}"] = ArraySpec(
            (num_chains, num_draws, n_samples, T),
            ("chain", "draw", dim, "token_pos"),
            LOSS_DTYPE,
            (1, chunk, n_samples, T),
        )
        arrays[f"input_ids_{obs_id}"] = ArraySpec(
            (n_samples, T + 1), (dim, "token"), "int64", (n_samples, T + 1)
        )
        obs_meta.append({"type": "ObserveDifferentDataset", "obs_id": obs_id, "batches_per_draw": bpd})
    for name in metric_fields:
        arrays[f"metrics_{name}"] = ArraySpec(
            (num_chains, num_steps), ("chain", "step"), "float32", (1, chunk)
        )
    arrays["n_beta"] = ArraySpec((), (), "float64", ())
    arrays[STEPS_DONE] = ArraySpec((num_chains,), ("chain",), "int64", (1,), fill=0)
    arrays[DIVERGED_STEP] = ArraySpec((num_chains,), ("chain",), "int64", (1,), fill=-1)

    attrs: dict[str, Any] = {
        "metadata": {
            "config": {
                "sampler": sampler,
                "observables": obs_meta,
                "chain_buffer_size": chunk,
                "shared_observable_dims": ["token", "token_pos"],
                "tokenizer_context_length": T + 1,
            }
        },
        "distinterp": {
            "schema_version": SCHEMA_VERSION,
            "config_hash": identity_hash(identity),
            "identity": identity,
            "num_steps": num_steps,
        },
    }
    if metrics_numel is not None:
        attrs["metrics_numel"] = metrics_numel
    return Schema(arrays=arrays, attrs=attrs, num_chains=num_chains, num_steps=num_steps, step_chunk=chunk)
