"""What a reader of a store may be given, turned into one thing: `store_of` gives the SampleStore handle of
an address (path, URL, Location, handle) and passes opened samples (an xarray Dataset or DataTree) through;
`samples_of` opens an address's store lazily; `handles_of` names the stores behind what was given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeAlias

import xarray as xr

from distinterp.store.handle import SampleStore
from distinterp.store.location import Location

StoreSource: TypeAlias = "str | os.PathLike[str] | Location | SampleStore"
"""An address of a store: a local path, an fsspec URL, a Location or a SampleStore handle."""

Samples: TypeAlias = "StoreSource | xr.Dataset | xr.DataTree"
"""What an analysis reads: a store's address (opened lazily) or the samples sample() returned."""


def is_address(source: object) -> bool:
    """Whether `source` names a store (rather than holding opened samples)."""
    return isinstance(source, (str, os.PathLike, Location, SampleStore))


def store_of(
    source: Samples, storage_options: Mapping[str, Any] | None = None
) -> SampleStore | xr.Dataset | xr.DataTree:
    """The handle of a store's address; opened samples (Dataset, DataTree) unchanged."""
    if isinstance(source, (xr.Dataset, xr.DataTree)):
        return source
    if is_address(source):
        return SampleStore.at(source, dict(storage_options or {}))
    raise TypeError(
        "expected a store (a path, URL, Location or SampleStore) or the samples sample() returned "
        f"(an xarray DataTree or Dataset), got {type(source).__name__}"
    )


def handle(source: StoreSource, storage_options: Mapping[str, Any] | None = None) -> SampleStore:
    """The handle of a store's address (a TypeError naming what was given for anything else)."""
    found = store_of(source, storage_options)
    if not isinstance(found, SampleStore):
        raise TypeError(f"expected a store's address or a SampleStore, got {type(source).__name__}")
    return found


def samples_of(source: Samples, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset | xr.DataTree:
    """Opened samples: an address's store opened lazily (one line, fast, when it is missing or cannot be
    reached), opened samples unchanged."""
    found = store_of(source, storage_options)
    if isinstance(found, SampleStore):
        return found.require().open()
    return found


def dataset_of(source: Samples, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The root dataset of what samples_of gives (a DataTree's root, a Dataset itself)."""
    samples = samples_of(source, storage_options)
    return samples.to_dataset() if isinstance(samples, xr.DataTree) else samples


def handles_of(source: Any, storage_options: Mapping[str, Any] | None = None) -> list[SampleStore]:
    """The stores behind what an analysis was given: an address, samples opened from a store (xarray keeps
    its URL in `.encoding["source"]`), or a mapping of them (compute_susceptibilities'); [] when unknown."""
    encoding = getattr(source, "encoding", None)  # before Mapping: a DataTree is a mapping of its children
    if isinstance(encoding, Mapping) and encoding.get("source"):
        return [SampleStore.at(str(encoding["source"]), dict(storage_options or {}))]
    if is_address(source):
        return [SampleStore.at(source, dict(storage_options or {}))]
    if isinstance(source, Mapping):
        return [h for value in source.values() for h in handles_of(value, storage_options)]
    return []
