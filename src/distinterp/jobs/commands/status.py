"""`distinterp status`: per-chain progress of a store, or per-store progress of a sweep's root."""

from __future__ import annotations

import argparse
from typing import Any

from distinterp.jobs.commands.inputs import _open, _storage_options


def cmd_status(args: argparse.Namespace) -> int:
    """Per-chain progress of a store: steps done, diverged chains, completion."""
    from distinterp.analyses.chains import chain_status
    from distinterp.jobs.sweep import read_record
    from distinterp.store import Location

    root = Location(str(args.store), _storage_options(args.storage_options))
    record = read_record(root)
    if record is not None:
        return _sweep_status(root, record)
    ds = _open(args.store, _storage_options(args.storage_options)).dataset
    complete, incomplete, diverged = chain_status(ds)
    steps = ds.chain_steps_done.values if "chain_steps_done" in ds else None
    print(f"{args.store}: {len(complete)}/{ds.sizes['chain']} chains complete, {ds.sizes['step']} steps each")
    for c in incomplete:
        print(f"  chain {c}: {int(steps[c]) if steps is not None else '?'} steps done")
    for c, s in sorted(diverged.items()):
        print(f"  chain {c}: diverged at step {s}")
    return 0 if not incomplete else 1


def _sweep_status(root: Any, record: dict[str, Any]) -> int:
    """A sweep root: stores complete out of all, and each unfinished one with its chains' steps."""
    from distinterp.jobs.sweep import child, steps_done
    from distinterp.store import read_root_attrs

    labels: list[str] = record["labels"]
    unfinished = []
    for label in labels:
        attrs = read_root_attrs(child(root, label))
        if attrs is None:
            unfinished.append(f"  {label}: not started")
        elif attrs.get("completed") != 1:
            steps = steps_done(child(root, label))
            done = "?" if steps is None else ", ".join(str(int(x)) for x in steps)
            unfinished.append(f"  {label}: steps per chain {done}")
    print(f"{root}: {record['kind']} of {len(labels) - len(unfinished)}/{len(labels)} stores complete")
    for line in unfinished:
        print(line)
    return 0 if not unfinished else 1
