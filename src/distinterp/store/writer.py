"""The background writer a rank's chains share: ordered region writes on one thread, retried with backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from distinterp.errors import StoreError
from distinterp.store.location import Location, redact
from distinterp.store.open import open_array, read_progress
from distinterp.store.schema import STEPS_DONE, Schema

logger = logging.getLogger(__name__)


WRITE_RETRY_S: tuple[float, ...] = (1, 2, 4, 8, 16)
"""Seconds to wait before each retry of a failed region write (on top of botocore's own retries)."""


class StoreWriter:
    """Background writer shared by this rank's chains: writes run in order on one thread, bounded queue.

    A failed region write is retried with exponential backoff (writes are idempotent: the same bytes);
    after the last attempt the error names the store and what is durably complete, and every later write
    is refused, so progress never advances past a chunk that was not written.
    """

    def __init__(
        self,
        location: Location,
        schema: Schema,
        max_pending: int = 4,
        retry_s: tuple[float, ...] | None = None,
        known: Mapping[str, Any] | None = None,
    ):
        store = location.zarr_store()
        self.location = location
        self.schema = schema
        self.arrays = {  # every chunk stored, even one equal to the fill value: a missing chunk is then a loss
            name: open_array(store, name, known, write_empty_chunks=True) for name in schema.arrays
        }
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distinterp-writer")
        self._pending: list[Future[None]] = []
        self._sem = threading.BoundedSemaphore(max_pending)
        self.retry_s = WRITE_RETRY_S if retry_s is None else retry_s
        self._failed: StoreError | None = None
        self.steps_written: dict[int, int] = {}  # chain -> steps durably recorded by this writer

    def submit(self, writes: list[Any]) -> None:
        """Queue region writes; they land in submission order. Raises an earlier write's error."""
        self._raise_failed()
        self._sem.acquire()
        fut = self._pool.submit(self._write, writes)
        fut.add_done_callback(lambda _: self._sem.release())
        self._pending.append(fut)

    def _write(self, writes: list[Any]) -> None:
        """Each entry is (array name, region, value) or a callable (a checkpoint save), run in order."""
        if self._failed is not None:
            raise self._failed
        for op in writes:
            name, region, value = op if isinstance(op, tuple) else (getattr(op, "__name__", "op"), (), None)
            for attempt in range(len(self.retry_s) + 1):
                try:
                    if isinstance(op, tuple):
                        self.arrays[name][region] = value
                        if name == STEPS_DONE:
                            self.steps_written[int(region[0].start)] = int(value[0])
                    else:
                        op()
                    break
                except Exception as e:  # storage back ends raise many types (botocore, aiohttp, OSError)
                    if attempt == len(self.retry_s):
                        self._failed = StoreError(self._failure(name, region, e))
                        raise self._failed from e
                    logger.warning(
                        "write of %s to %s failed (%s: %s); retry %d of %d in %.1f s",
                        name,
                        self.location,
                        type(e).__name__,
                        e,
                        attempt + 1,
                        len(self.retry_s),
                        self.retry_s[attempt],
                    )
                    time.sleep(self.retry_s[attempt])

    def _failure(self, name: str, region: tuple[Any, ...], error: BaseException) -> str:
        try:
            steps, _ = read_progress(self.location)
            done = [int(c) for c in np.flatnonzero(steps >= self.schema.num_steps)]
            state = f"complete chains: {done}; steps done per chain: {steps.tolist()}"
        except Exception:  # noqa: BLE001 - the store may be unreachable
            mine = ", ".join(
                f"chain {c}: {s}/{self.schema.num_steps} steps" for c, s in sorted(self.steps_written.items())
            )
            state = (
                "the store's progress could not be read (unreachable); complete chains and steps durably "
                f"written by this process: {mine or 'none'}"
            )
        return (
            f"writing {name}{list(region)!s} to {self.location} failed after {len(self.retry_s) + 1} attempts: "
            f"{type(error).__name__}: {redact(str(error))}. {state}. Nothing durable was lost: rerun the same command once the "
            "store is reachable and it continues."
        )

    def _raise_failed(self) -> None:
        still = []
        for fut in self._pending:
            if fut.done():
                fut.result()  # re-raises a write error here, in the sampling thread
            else:
                still.append(fut)
        self._pending = still

    def close(self) -> None:
        """Wait for every queued write; raise the first error."""
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)
