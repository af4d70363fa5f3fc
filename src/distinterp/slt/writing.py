"""devinterp.slt.writing: `ZarrWriter`, buffered per-chain row writes to zarr arrays addressed by dim name.

For custom loops that build their own store with ZarrSchema. Rows are pushed one at a time per
(array, chain) and written a whole buffer (`chain_buffer_size` rows, the chunk length) at a time,
optionally on a thread pool; `sample()` itself writes through distinterp.store.StoreWriter.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from distinterp.slt.zarr_schema import SAFE_DTYPE_STRINGS, validate_dtype_str_torch_numpy_compat

logger = logging.getLogger(__name__)

__all__ = ["SAFE_DTYPE_STRINGS", "ZarrWriter", "validate_dtype_str_torch_numpy_compat"]


def _region(arr: zarr.Array[Any], **dim_indices: int | slice) -> tuple[int | slice, ...]:
    """The selection for `arr` from indices given by dimension name (unnamed dims: everything)."""
    dims = tuple(arr.metadata.dimension_names or ())  # type: ignore[union-attr]
    region = tuple(dim_indices.pop(d, slice(None)) for d in dims)
    if dim_indices:
        raise ValueError(f"Unexpected dimensions: {list(dim_indices)}. Valid: {list(dims)}")
    return region


def _as_numpy(data: np.ndarray | torch.Tensor) -> np.ndarray:
    return data.numpy(force=True).copy() if isinstance(data, torch.Tensor) else np.asarray(data)


@dataclass
class _Rows:
    """Consecutive rows of one (array, chain), starting at row `first`."""

    first: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ZarrWriter:
    """Buffered writer for streaming per-chain data to zarr arrays (dims ("chain", row dim, ...)).

    Use ZarrWriter.open() for a context manager that owns the thread pool and flushes on exit.
    """

    arrays: dict[str, zarr.Array[Any]]
    chain_buffer_size: int
    buffer_device: torch.device
    executor: ThreadPoolExecutor | None = None
    _futures: list[Future[Any]] = field(default_factory=list, init=False)
    _buffers: dict[tuple[str, int], _Rows] = field(default_factory=dict, init=False)
    _locks: dict[int, threading.Lock] = field(default_factory=dict, init=False)

    @classmethod
    @contextmanager
    def open(
        cls,
        arrays: dict[str, zarr.Array[Any]],
        chain_buffer_size: int,
        buffer_device: torch.device,
        max_write_threads: int = 4,
    ) -> Iterator[ZarrWriter]:
        pool: Any = (
            ThreadPoolExecutor(max_workers=max_write_threads, thread_name_prefix="zarr_write")
            if max_write_threads > 0
            else nullcontext()
        )
        with pool as executor:
            writer = cls(arrays, chain_buffer_size, buffer_device, executor)
            try:
                yield writer
            finally:
                writer.flush_all_buffers()
                writer.wait_for_writes()

    def _submit(self, arr: zarr.Array[Any], region: tuple[int | slice, ...], value: np.ndarray) -> None:
        """Write now, or on the pool; writes to one array are serialised, so two regions that share a chunk
        cannot lose each other's data (a chunk write is read-modify-write)."""
        lock = self._locks.setdefault(id(arr), threading.Lock())

        def write() -> None:
            with lock:
                arr.set_basic_selection(region, value)

        if self.executor is None:
            write()
        else:
            self._futures.append(self.executor.submit(write))

    def write(self, path: str, data: np.ndarray | torch.Tensor, /, **dim_indices: int | slice) -> None:
        """Immediate write (scalars, init_loss, fixed observables) at the given named indices."""
        arr = self.arrays[path]
        self._submit(arr, _region(arr, **dim_indices), _as_numpy(data))

    def push(self, path: str, data: torch.Tensor, /, *, chain: int, **dim_indices: int | slice) -> None:
        """Buffer one complete row of `chain` at the next index of the array's second dim."""
        arr = self.arrays[path]
        dims = tuple(arr.metadata.dimension_names or ())  # type: ignore[union-attr]
        if len(dims) < 2 or dims[0] != "chain" or not isinstance(dim_indices.get(dims[1]), int):
            raise ValueError(
                f"push({path!r}): needs dims ('chain', row dim, ...) and an int index for {dims[1:2]}"
            )
        buf = self._buffers.setdefault((path, chain), _Rows())
        if len(buf.rows) >= self.chain_buffer_size:
            raise RuntimeError("Buffer full. Call flush before writing more data.")
        row = dim_indices[dims[1]]
        if row != buf.first + len(buf.rows):
            raise ValueError(f"Row index mismatch: expected {buf.first + len(buf.rows)}, got {row}")
        buf.rows.append(data.detach().to(self.buffer_device, copy=True))

    def flush_full_buffers(self) -> None:
        self._flush(only_full=True)

    def flush_all_buffers(self) -> None:
        self._flush(only_full=False)

    def _flush(self, only_full: bool) -> None:
        for (path, chain), buf in self._buffers.items():
            if not buf.rows or (only_full and len(buf.rows) < self.chain_buffer_size):
                continue
            arr = self.arrays[path]
            value = np.asarray(_as_numpy(torch.stack(buf.rows)), dtype=arr.dtype)
            rows = slice(buf.first, buf.first + len(buf.rows))
            dims = tuple(arr.metadata.dimension_names or ())  # type: ignore[union-attr]
            self._submit(arr, _region(arr, chain=chain, **{dims[1]: rows}), value)
            buf.first, buf.rows = rows.stop, []

    def wait_for_writes(self) -> None:
        """Wait for queued writes; raise the failure (or an ExceptionGroup of several)."""
        if not self._futures:
            return
        done, _ = futures.wait(self._futures, return_when=futures.ALL_COMPLETED)
        self._futures.clear()
        errors = [e for f in done if (e := f.exception()) is not None]
        # BaseExceptionGroup builds an ExceptionGroup when every error is an Exception (the usual case)
        if len(errors) > 1 and hasattr(builtins, "BaseExceptionGroup"):
            raise builtins.BaseExceptionGroup(f"{len(errors)} zarr write(s) failed", errors)
        if errors:
            raise errors[0]
