"""Estimator helpers every analysis shares (and progress and the report's figures): which chains a store
holds complete, finite or diverged, and the LLC estimator itself. Below all of them: imports only store."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from distinterp.store import DIVERGED_STEP, STEPS_DONE, IncompleteStoreError


def chain_status(ds: xr.Dataset) -> tuple[list[int], list[int], dict[int, int]]:
    """(complete chains, incomplete chains, {diverged chain: step}) from the store's progress arrays.

    Stores without progress arrays (devinterp's) count a chain diverged when its losses hold NaN.
    """
    n = ds.sizes["chain"]
    if STEPS_DONE in ds:
        num_steps = ds.sizes["step"]
        steps = np.asarray(ds[STEPS_DONE].values)
        div = np.asarray(ds[DIVERGED_STEP].values)
        diverged = {int(c): int(div[c]) for c in range(n) if div[c] >= 0}
        complete = [c for c in range(n) if steps[c] >= num_steps]
        incomplete = [c for c in range(n) if steps[c] < num_steps]
        return complete, incomplete, diverged
    nan_rows = ds.sampling_loss_micro.isnull().any(dim=["batch_sampling", "token_pos"]).values
    diverged = {int(c): int(np.argmax(nan_rows[c])) for c in range(n) if nan_rows[c].any()}
    return list(range(n)), [], diverged


def usable_chains(ds: xr.Dataset, *, allow_partial: bool = False, what: str = "analysis") -> list[int]:
    """Chains an analysis may use: complete and not diverged; refuses an incomplete store unless allowed."""
    complete, incomplete, diverged = chain_status(ds)
    if incomplete and not allow_partial:
        steps = np.asarray(ds[STEPS_DONE].values)
        missing = ", ".join(f"chain {c} ({int(steps[c])}/{ds.sizes['step']} steps)" for c in incomplete)
        raise IncompleteStoreError(
            f"{what}: the store is incomplete; missing: {missing}. Finish the run (rerun the same command) "
            "or pass allow_partial=True to use complete chains only."
        )
    if incomplete:
        warnings.warn(
            f"{what}: using complete chains only; skipping incomplete chains {incomplete}", stacklevel=3
        )
    if diverged:
        warnings.warn(
            f"{what}: excluding diverged chains "
            + ", ".join(f"{c} (at step {s})" for c, s in sorted(diverged.items())),
            stacklevel=3,
        )
    use = [c for c in complete if c not in diverged]
    if not use:
        raise IncompleteStoreError(f"{what}: no complete, finite chain in the store")
    return use


def llc_estimate(mean_loss: Any, init_loss: Any, n_beta: float) -> Any:
    """The LLC estimator n_beta * (E[L_n(w)] - L_n(w*)) (Lau et al. 2023, eq. 6) on arrays or floats."""
    return n_beta * (mean_loss - init_loss)
