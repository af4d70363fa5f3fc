"""SampleStore: one sampling run's store as every rank holds it, its address and its schema together; and
the reading handle analyses, inspection, verification and status receive (`SampleStore.at(url)`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from distinterp.store.location import Location
from distinterp.store.open import (
    StoreState,
    check_existing,
    check_reachable,
    ensure,
    mark_completed,
    read_progress,
    read_root_attrs,
    require_store,
    write_once,
)
from distinterp.store.schema import Schema
from distinterp.store.snapshot import open_store
from distinterp.store.writer import StoreWriter


@dataclass(frozen=True)
class SampleStore:
    """The handle the chain loop, progress, checkpoints and analyses receive instead of a bare address.

    Writing (sample()): rank 0 creates the store from the run's schema, then every rank opens the same
    handle (address + schema) once. Reading (`SampleStore.at(url)`): the schema is optional; what a
    reader asks (exists, require, planned, open) needs only the address.
    """

    location: Location
    schema: Schema | None = None
    known: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Metadata of the arrays this process created (create()), opened later without reading them."""

    @classmethod
    def at(
        cls,
        url: str | os.PathLike[str] | Location | SampleStore,
        storage_options: dict[str, Any] | None = None,
        schema: Schema | None = None,
    ) -> SampleStore:
        """The handle of the store at `url` (a path, an fsspec URL, a Location or a handle). Without
        storage_options a URL keeps the options this process last used for it (Location.known)."""
        if isinstance(url, SampleStore):
            if storage_options:
                url = Location(url.url, dict(storage_options))
            else:
                return url if schema is None else cls(url.location, schema)
        if isinstance(url, Location):
            location = Location(url.url, dict(storage_options)) if storage_options else url
        else:
            text = os.fspath(url)
            location = Location(text, dict(storage_options)) if storage_options else Location.known(text)
        return cls(location, schema)

    @property
    def url(self) -> str:
        """The store's path or URL (may hold a password: print the handle itself, which masks it)."""
        return self.location.url

    @property
    def is_local(self) -> bool:
        """Whether the store is a local directory (not an object store or other fsspec URL)."""
        return self.location.is_local

    def exists(self) -> bool:
        """Whether a zarr store (its zarr.json) is there; StoreError when a remote endpoint cannot answer."""
        return check_reachable(self.location)

    def require(self) -> SampleStore:
        """This handle, once a store is known to be there: one line, fast, otherwise (FileNotFoundError
        'no store at ...', or StoreError naming the endpoint or bucket that cannot be reached)."""
        require_store(self.location)
        return self

    def planned(self) -> dict[str, Any]:
        """The sampler settings the store was created for (num_chains, num_draws, num_burnin_steps, ...)
        as its root attributes record them ({} when none are recorded or no store is there)."""
        attrs = self.root_attrs() or {}
        sampler = attrs.get("metadata", {}).get("config", {}).get("sampler")
        return dict(sampler) if isinstance(sampler, dict) else {}

    def schema_for(self, what: str) -> Schema:
        """The run's schema, which writing needs (`what`: the caller, named in the error when absent)."""
        if self.schema is None:
            raise ValueError(
                f"{self}: {what} needs the run's schema; this handle was opened for reading "
                "(SampleStore.at(url, schema=...) or sample() build one)"
            )
        return self.schema

    def state(self) -> StoreState:
        """Whether a store exists there and is complete; raises when it records another run."""
        return check_existing(self.location, self.schema_for("state()"))

    def create(self) -> None:
        """Create the store's arrays and metadata (rank 0; idempotent)."""
        self.known.update(ensure(self.location, self.schema_for("create()")))

    def write_once(self, name: str, values: np.ndarray) -> None:
        """Write a whole array that every start writes with the same bytes (input ids, n_beta)."""
        write_once(self.location, name, values, self.known)

    def progress(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-chain (steps durably written, step at which the chain diverged or -1)."""
        return read_progress(self.location, self.known)

    def root_attrs(self) -> dict[str, Any] | None:
        """The root group's attributes (None before the store exists)."""
        return read_root_attrs(self.location)

    def writer(self) -> StoreWriter:
        """The background writer of this rank's chains' rows."""
        return StoreWriter(self.location, self.schema_for("writer()"), known=self.known)

    def mark_completed(self) -> None:
        """Set `completed: 1` once every chain is done (rank 0)."""
        mark_completed(self.location)

    def open(self) -> xr.DataTree:
        """The store as a lazily loaded DataTree (on an object store, its metadata read in few requests)."""
        return open_store(self.location)

    def __str__(self) -> str:
        return str(self.location)
