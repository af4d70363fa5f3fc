"""Rewriting chains: the ones a user names (`--rerun-chains`), and those a resumed run finds damaged.

A chain's rows are a function of its index and the run's identity, so rewriting a chain from its start
writes the same bytes as the first time; the other chains' chunks are never touched.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import zarr

from distinterp.integrity import verify
from distinterp.store import DIVERGED_STEP, STEPS_DONE, Schema, check_existing
from distinterp.store.source import StoreSource, handle

logger = logging.getLogger(__name__)


def check_rerun_chains(
    rerun_chains: Sequence[int] | None, num_chains: int, chains: Sequence[int] | None
) -> list[int]:
    """The chains to rewrite, validated before any work: indices in range, and run by this call."""
    if rerun_chains is None:
        return []
    if isinstance(rerun_chains, (str, bytes)) or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in rerun_chains
    ):
        raise TypeError(f"rerun_chains: expected a list of chain indices, got {rerun_chains!r}")
    out = sorted({int(c) for c in rerun_chains})
    bad = [c for c in out if not 0 <= c < num_chains]
    if bad:
        raise ValueError(f"rerun_chains: {bad} out of range; chains are 0..{num_chains - 1}")
    if chains is not None:
        missing = sorted(set(out) - {int(c) for c in chains})
        if missing:
            raise ValueError(
                f"rerun_chains: {missing} are not among the chains this call runs ({list(chains)}); "
                "add them to `chains` or rerun them from the job (array task) that runs them"
            )
    return out


def reset_chains(store: StoreSource, schema: Schema, chains: Sequence[int]) -> None:
    """Mark `chains` as not started (their progress back to 0, not diverged) so this run rewrites them;
    the store's `completed` flag goes until every chain is done again. By the coordinator only."""
    location = handle(store).location
    state = check_existing(location, schema)  # a store of another run is refused, untouched
    if not state.exists or state.foreign:
        return
    zstore = location.zarr_store()
    steps = zarr.open_array(zstore, path=STEPS_DONE, mode="r+", config={"write_empty_chunks": True})
    diverged = zarr.open_array(zstore, path=DIVERGED_STEP, mode="r+", config={"write_empty_chunks": True})
    for c in chains:
        steps[c : c + 1] = np.zeros(1, np.int64)
        diverged[c : c + 1] = np.full(1, -1, np.int64)
    group = zarr.open_group(zstore, mode="r+")
    if "completed" in group.attrs:
        del group.attrs["completed"]  # one metadata write, by this process only
    logger.warning("%s: rewriting chain(s) %s from their start", location, list(chains))


def damaged_chains(location: StoreSource, chains: Sequence[int]) -> list[int]:
    """Of the chains a resumed run is about to extend, those with a damaged or missing chunk (warned)."""
    if not chains:
        return []
    result = verify(location, chains=chains)
    bad = sorted({p.chain for p in result.problems if p.chain is not None})
    for c in bad:
        lines = "; ".join(p.line() for p in result.problems if p.chain == c)
        warnings.warn(
            f"{handle(location)}: chain {c} has {lines}; it restarts from its start (its checkpoints are not used)",
            stacklevel=3,
        )
    return bad
