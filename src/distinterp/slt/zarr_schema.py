"""devinterp.slt.zarr_schema: declare arrays (shape, dims, dtype, chunks), then create a flat zarr store.

Array metadata comes from distinterp.store.ArraySpec, the one encoding of the reference layout (zarr v3,
NaN fill, xarray's _FillValue, zstd level 0, named dims), so xr.open_datatree reads it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr
from zarr.abc.store import Store
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata

from distinterp.store import ArraySpec

logger = logging.getLogger(__name__)

SAFE_DTYPE_STRINGS = frozenset(
    {
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    }
    | {"bool", "complex64", "complex128"}
)
"""dtypes that torch and numpy both name the same way."""


def validate_dtype_str_torch_numpy_compat(dtype_str: str) -> None:
    """Refuse a dtype string torch and numpy do not both name the same way (devinterp's check)."""
    if dtype_str not in SAFE_DTYPE_STRINGS:
        raise ValueError(f"Unsupported dtype: '{dtype_str}'. Use one of: {sorted(SAFE_DTYPE_STRINGS)}")


__all__ = ["SAFE_DTYPE_STRINGS", "DataArraySpec", "ZarrSchema", "validate_dtype_str_torch_numpy_compat"]


@dataclass
class DataArraySpec:
    """Specification for a zarr array: shape, dims, dtype, chunks (default: one chunk), attrs."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype_str: str
    chunks: tuple[int, ...] = None  # type: ignore[assignment]
    attrs: dict[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.chunks is None:
            self.chunks = self.shape
        if self.attrs is None:
            self.attrs = {}
        if self.dtype_str not in SAFE_DTYPE_STRINGS:
            raise ValueError(
                f"Unsupported dtype: '{self.dtype_str}'. Use one of: {sorted(SAFE_DTYPE_STRINGS)}"
            )
        if not len(self.shape) == len(self.dims) == len(self.chunks):
            raise ValueError(
                f"DataArraySpec: shape {self.shape}, dims {self.dims} and chunks {self.chunks} must have one "
                "entry per dimension"
            )

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.dtype_str)
        return dtype

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype: torch.dtype = getattr(torch, self.dtype_str)
        return dtype

    def to_metadata(self) -> ArrayV3Metadata:
        spec = ArraySpec(
            tuple(self.shape), tuple(self.dims), self.dtype_str, tuple(self.chunks), attrs=self.attrs
        )
        return spec.metadata()


@dataclass
class ZarrSchema:
    """Schema for a flat zarr store: arrays at the root, and group attributes ("" is the root)."""

    arrays_meta: dict[str, DataArraySpec] = field(default_factory=dict)
    group_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def create_hierarchy(self, store: Store) -> tuple[zarr.Group, dict[str, zarr.Array[Any]]]:
        """Create (overwrite) the store in one batch. Returns (root group, arrays by name)."""
        root = zarr.open_group(store, mode="w")
        root_attrs = self.group_attrs.get("")
        if root_attrs:
            root.update_attributes(root_attrs)
        nodes: dict[str, ArrayV2Metadata | ArrayV3Metadata | GroupMetadata] = {
            path: spec.to_metadata() for path, spec in self.arrays_meta.items()
        }
        created = dict(root.create_hierarchy(nodes, overwrite=True))
        arrays = {path: created[path] for path in self.arrays_meta}
        logger.info("Zarr store created: %d arrays.", len(arrays))
        return root, arrays  # type: ignore[return-value]
