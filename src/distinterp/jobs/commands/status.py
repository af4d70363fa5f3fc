"""`distinterp status`: per-chain progress of a store."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _open, _storage_options


def cmd_status(args: argparse.Namespace) -> int:
    """Per-chain progress of a store: steps done, diverged chains, completion."""
    from distinterp.analyses.chains import chain_status

    ds = _open(args.store, _storage_options(args.storage_options)).dataset
    complete, incomplete, diverged = chain_status(ds)
    steps = ds.chain_steps_done.values if "chain_steps_done" in ds else None
    print(f"{args.store}: {len(complete)}/{ds.sizes['chain']} chains complete, {ds.sizes['step']} steps each")
    for c in incomplete:
        print(f"  chain {c}: {int(steps[c]) if steps is not None else '?'} steps done")
    for c, s in sorted(diverged.items()):
        print(f"  chain {c}: diverged at step {s}")
    return 0 if not incomplete else 1
