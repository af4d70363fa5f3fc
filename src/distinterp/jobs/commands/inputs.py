"""What the commands read from their arguments: job settings, --set overrides, storage options, stores."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def _job_settings(args: argparse.Namespace) -> Any:
    """The job's settings: CONFIG (a YAML file, or a store to rerun from what it recorded) or --from-store,
    then the environment, then --set (and the flags that stand for settings)."""
    from distinterp.jobs.settings import load_settings

    overrides = _overrides(args)
    store = args.from_store
    if args.config and _is_store(args.config):
        if store:
            raise ValueError(f"{args.command}: give a CONFIG file or a STORE, not both")
        store = args.config
    elif args.from_store and args.config:
        raise ValueError(f"{args.command}: give a CONFIG file or --from-store STORE, not both")
    if store:
        return load_settings(None, overrides, base=_stored_settings(store, args.storage_options))
    return load_settings(args.config, overrides)


def _is_store(path: str) -> bool:
    """A store rather than a settings file: a URL, a directory, or a name ending in .zarr."""
    return "://" in path or os.path.isdir(path) or path.rstrip("/").endswith(".zarr")


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values plus --chains-per-batch, --fsdp-size and the --array-task-id/--array-task-count pair as
    settings."""
    overrides = list(args.set or [])
    for text in overrides:
        if "=" not in text:
            raise ValueError(
                f"--set {text!r}: expected key=value; give CONFIG before --set (--set takes every "
                "KEY=VALUE after it)"
            )
    if getattr(args, "chains_per_batch", None) is not None:
        overrides.append(f"parallel.chains_per_batch={args.chains_per_batch}")
    if getattr(args, "fsdp_size", None) is not None:
        overrides.append(f"parallel.fsdp_size={args.fsdp_size}")
    if args.array_task_id is not None:
        overrides += [
            f"array_task.task_id={args.array_task_id}",
            f"array_task.task_count={args.array_task_count}",
        ]
    return overrides


def _stored_settings(url: str, options_json: str | None) -> dict[str, Any]:
    """The settings a store's creating job recorded, pointed back at that store."""
    from distinterp.store import Location, read_root_attrs

    options = _storage_options(options_json)
    attrs = read_root_attrs(Location(url, options))
    if attrs is None:
        raise FileNotFoundError(f"--from-store: no store at {url}")
    recorded = attrs.get("distinterp", {}).get("run_settings")
    if recorded is None:
        raise ValueError(
            f"--from-store: {url} records no job settings (it was written through the Python API or by "
            "devinterp); rerun the script or config that wrote it"
        )
    return {**recorded, "output_path": url, "storage_options": options}


def _storage_options(text: str | None) -> dict[str, Any]:
    try:
        options = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"--storage-options: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise ValueError(f"--storage-options: expected a JSON object, got {text}")
    return options


def _open(url: str, storage_options: dict[str, Any]) -> Any:
    """The store at url, opened lazily: one line, fast, when its endpoint, bucket or store is missing."""
    from distinterp.store import SampleStore

    return SampleStore.at(url, storage_options).require().open()


def _existing(url: str | None, flag: str, options: dict[str, Any]) -> str | None:
    """A result path given on the command line, checked before any work."""
    from distinterp.store import SampleStore

    if url is not None:
        result = SampleStore.at(url, options)
        if result.is_local and not result.exists():
            raise FileNotFoundError(f"{flag} {url}: no zarr result there")
    return url


def _is_sweep_root(url: str, options: dict[str, Any]) -> bool:
    from distinterp.jobs.sweep import read_record
    from distinterp.store import Location

    return read_record(Location(url, options)) is not None
