"""SampleStore: one sampling run's store as every rank holds it, its address and its schema together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from distinterp.store.location import Location
from distinterp.store.open import (
    StoreState,
    check_existing,
    ensure,
    mark_completed,
    open_tree,
    read_progress,
    read_root_attrs,
    write_once,
)
from distinterp.store.schema import Schema
from distinterp.store.writer import StoreWriter


@dataclass(frozen=True)
class SampleStore:
    """The handle the chain loop, progress and checkpoints receive instead of a bare address: rank 0
    prepares the store (`prepare`), then every rank opens the same handle (address + schema) once."""

    location: Location
    schema: Schema

    def state(self) -> StoreState:
        """Whether a store exists there and is complete; raises when it records another run."""
        return check_existing(self.location, self.schema)

    def create(self) -> None:
        """Create the store's arrays and metadata (rank 0; idempotent)."""
        ensure(self.location, self.schema)

    def write_once(self, name: str, values: np.ndarray) -> None:
        """Write a whole array that every start writes with the same bytes (input ids, n_beta)."""
        write_once(self.location, name, values)

    def progress(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-chain (steps durably written, step at which the chain diverged or -1)."""
        return read_progress(self.location)

    def root_attrs(self) -> dict[str, Any] | None:
        """The root group's attributes (None before the store exists)."""
        return read_root_attrs(self.location)

    def writer(self) -> StoreWriter:
        """The background writer of this rank's chains' rows."""
        return StoreWriter(self.location, self.schema)

    def mark_completed(self) -> None:
        """Set `completed: 1` once every chain is done (rank 0)."""
        mark_completed(self.location)

    def open(self) -> xr.DataTree:
        """The store as a lazily loaded DataTree."""
        return open_tree(self.location)

    def __str__(self) -> str:
        return str(self.location)
