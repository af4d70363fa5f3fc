"""Create, validate and open a store: rank 0 creates or checks it, everyone opens it; progress and
completion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.array_spec import ArrayConfig
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import StorePath

from distinterp.errors import StoreConfigMismatch, StoreError
from distinterp.store.location import Location, redact
from distinterp.store.schema import DIVERGED_STEP, SCHEMA_VERSION, STEPS_DONE, Schema

logger = logging.getLogger(__name__)


def _diff(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        s, c = stored.get(key), current.get(key)
        if isinstance(s, dict) and isinstance(c, dict):
            out += _diff(s, c, f"{prefix}{key}.")
        elif s != c:
            out.append(f"  {prefix}{key}: stored={s!r}, current={c!r}")
    return out


def mismatch_message(location: Location, diffs: list[str]) -> str:
    """devinterp's wording ("Output path '...' has a different sampler config:", which code matches on),
    then every field that differs (sampler settings, data, model, masks, loss_fn) and what to do."""
    delete = f" or delete it (rm -rf '{location}')" if location.is_local else " or delete it"
    return (
        f"Output path '{location}' has a different sampler config:\n"
        + "\n".join(diffs)
        + f"\nIt was left untouched. Rerun with the stored settings to continue it, choose another output_path{delete}."
    )


def check_bucket(fs: Any, location: Location, path: str) -> None:
    """On S3, a store path whose bucket does not exist: say so (writes would fail later, less clearly)."""
    if not location.url.startswith(("s3://", "s3a://")):
        return
    bucket = path.split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        endpoint = (
            location.fsspec_options().get("client_kwargs", {}).get("endpoint_url", "the default endpoint")
        )
        raise StoreError(
            f"{location}: bucket '{bucket}' does not exist at {endpoint}; create it or choose an output_path "
            "in an existing bucket"
        ) from None
    except Exception:  # noqa: BLE001 - no permission to look at the bucket itself: the store's own reads say more
        return


def check_reachable(location: Location) -> bool:
    """Fail fast, in one line, when a remote store's endpoint does not answer (a wrong endpoint_url, a server
    that is down): one quick request, where botocore's standard retries would take a minute in silence.
    Returns whether a store (its zarr.json) is there."""
    return root_document(location) is not None


def root_document(location: Location) -> bytes | None:
    """The store's root zarr.json (None when there is none), read in one request that is also the
    reachability check: a GET (a missing key costs no more, where a HEAD is followed by a LIST on S3).
    StoreError, fast, when a remote endpoint, its credentials or its bucket cannot be reached."""
    if location.is_local:
        file = location.local_path / "zarr.json"
        return file.read_bytes() if file.is_file() else None
    import fsspec

    protocol, _, path = location.url.partition("://")
    options = location.fsspec_options()
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs", {}))
        config.update(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20)
        options["config_kwargs"] = config
    try:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        return bytes(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except (FileNotFoundError, IsADirectoryError):  # reachable; no store yet (on S3 the bucket must exist)
        check_bucket(fs, location, path)
        return None
    except Exception as e:  # botocore, aiohttp and OSError types: the endpoint, credentials or bucket
        endpoint = options.get("client_kwargs", {}).get("endpoint_url", "the default endpoint")
        raise StoreError(
            f"{location}: cannot reach it at {endpoint} ({type(e).__name__}: {redact(str(e))}); check "
            "output_path and storage_options (client_kwargs.endpoint_url, bucket; credentials: prefer AWS_* "
            "variables) and that the server is up"
        ) from e


def require_store(location: Location) -> None:
    """One line, fast, when a store's endpoint or bucket cannot be reached (StoreError) or no store is
    there (FileNotFoundError 'no store at ...', local or remote alike). One request: a second S3
    client here leaves pages of aiohttp's 'attached to a different loop' tracebacks at exit."""
    if not check_reachable(location):  # one request, no retries
        raise FileNotFoundError(f"no store at {location}")


def require_reachable(url: str, storage_options: dict[str, Any]) -> None:
    """Fail in one line when a store's (or a sweep root's) endpoint or bucket cannot be reached."""
    check_reachable(Location(url, storage_options))


def read_root_attrs(location: Location) -> dict[str, Any] | None:
    """The root group's attributes, or None when no store exists there yet. A format-3 group's come from
    its zarr.json, read once with the reachability check; without a zarr.json only a format-2 group
    (devinterp 2.x) can be there, opened without zarr's probes for format 3."""
    document = root_document(location)
    if document is not None:
        with contextlib.suppress(ValueError, AttributeError):
            meta = json.loads(document)
            if meta.get("zarr_format") == 3 and meta.get("node_type") == "group":
                return dict(meta.get("attributes") or {})
    try:
        group = zarr.open_group(
            location.zarr_store(read_only=True), mode="r", zarr_format=3 if document is not None else 2
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except Exception as e:  # wrong endpoint/credentials, no bucket, outage: botocore, aiohttp, OSError
        raise StoreError(
            f"{location}: cannot be read ({type(e).__name__}: {redact(str(e))}); check output_path and "
            "storage_options (endpoint_url, credentials: prefer AWS_* variables)"
        ) from e
    return dict(group.attrs)


@dataclass(frozen=True)
class StoreState:
    """What an existing store says about itself when compared with the current run."""

    exists: bool
    completed: bool
    foreign: bool = False  # written by devinterp 2.x (no distinterp attributes)


def check_existing(location: Location, schema: Schema) -> StoreState:
    """Refuse a store written with another configuration; report whether it exists and is complete."""
    attrs = read_root_attrs(location)
    if attrs is None:
        return StoreState(exists=False, completed=False)
    ours = attrs.get("distinterp")
    completed = attrs.get("completed") == 1
    if ours is None:
        stored_sampler = attrs.get("metadata", {}).get("config", {}).get("sampler")
        current = schema.attrs["metadata"]["config"]["sampler"]
        if stored_sampler is None:
            raise StoreError(f"{location}: exists but is not a sampling store; choose another output_path")
        diffs = _diff(stored_sampler, current)
        if diffs:
            raise StoreConfigMismatch(mismatch_message(location, diffs))
        if not completed:
            raise StoreConfigMismatch(
                f"Output path '{location}' holds an incomplete devinterp run\nIt was left untouched; choose "
                "another output_path or delete it."
            )
        return StoreState(exists=True, completed=True, foreign=True)
    if ours.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{location}: has distinterp schema version {ours.get('schema_version')}, this version writes "
            f"{SCHEMA_VERSION}; use a new output_path"
        )
    if ours.get("config_hash") != schema.config_hash:
        diffs = _diff(ours.get("identity", {}), schema.identity)
        raise StoreConfigMismatch(mismatch_message(location, diffs or ["  (identity hash differs)"]))
    return StoreState(exists=True, completed=completed)


def ensure(location: Location, schema: Schema) -> dict[str, ArrayV3Metadata]:
    """Create the root group and any declared array that is missing; idempotent, and safe against a
    concurrent creator of the same run or a creator killed half-way (each metadata write is atomic).
    Returns the metadata of the arrays it wrote, which this process may then open without reading them."""
    store = location.zarr_store()
    try:
        root = zarr.open_group(store, mode="w-", zarr_format=3, attributes=schema.attrs)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        check_existing(location, schema)  # raced with another creator, or resuming: same config or refuse
        root = zarr.open_group(store, mode="r+", zarr_format=3)  # ours (check_existing passed): format 3
    with warnings.catch_warnings():  # a creator killed between an array's folder and its zarr.json
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)  # left a folder zarr skips: recreate it
        existing = set(root.array_keys())
    missing = {name: spec.metadata() for name, spec in schema.arrays.items() if name not in existing}
    if missing:  # their zarr.json, as zarr writes it, without zarr's per-array existence probes: a concurrent
        # creator of the same run writes the same bytes; one of another run is refused just below
        prototype = default_buffer_prototype()
        docs = {
            f"{name}/{key}": buffer
            for name, meta in missing.items()
            for key, buffer in meta.to_buffer_dict(prototype).items()
        }

        async def put_all() -> None:
            await asyncio.gather(*(store.set(key, buffer) for key, buffer in docs.items()))

        sync(put_all())
    attrs = read_root_attrs(location)
    if attrs is None or attrs.get("distinterp", {}).get("config_hash") != schema.config_hash:
        raise StoreConfigMismatch(
            mismatch_message(
                location, ["  another run with a different configuration created it concurrently"]
            )
        )
    return missing


def open_array(
    store: Store, name: str, known: Mapping[str, ArrayV3Metadata] | None = None, **config: Any
) -> zarr.Array[Any]:
    """One of our (format 3) arrays: from metadata this process wrote (`known`, no request), else its
    zarr.json (one GET, no probes for zarr v2's keys)."""
    meta = (known or {}).get(name)
    if meta is None:
        mode = "r" if store.read_only else "r+"
        return zarr.open_array(store, path=name, mode=mode, zarr_format=3, config=config or None)
    array_config = ArrayConfig.from_dict(config)  # type: ignore[arg-type]
    return zarr.Array(AsyncArray(metadata=meta, store_path=StorePath(store, name), config=array_config))


def write_once(
    location: Location, name: str, value: np.ndarray, known: Mapping[str, ArrayV3Metadata] | None = None
) -> None:
    """Write a whole small array (observable input ids, n_beta): by the coordinator only."""
    open_array(location.zarr_store(), name, known, write_empty_chunks=True)[...] = value


def open_tree(location: Location) -> xr.DataTree:
    """The store as a lazily loaded DataTree (as devinterp's sample() returns)."""
    if location.is_local:
        return xr.open_datatree(str(location.local_path), engine="zarr", consolidated=False)
    return xr.open_datatree(
        location.url, engine="zarr", consolidated=False, storage_options=location.fsspec_options()
    )


def read_progress(
    location: Location, known: Mapping[str, ArrayV3Metadata] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain (steps durably written, step at which the chain diverged or -1); `known`: see open_array."""
    store = location.zarr_store(read_only=True)
    steps = open_array(store, STEPS_DONE, known)[...]
    diverged = open_array(store, DIVERGED_STEP, known)[...]
    return np.asarray(steps), np.asarray(diverged)


def mark_completed(location: Location) -> None:
    """Set the reference's `completed: 1` flag once every chain is done."""
    group = zarr.open_group(location.zarr_store(), mode="r+", zarr_format=3)
    group.attrs["completed"] = 1
