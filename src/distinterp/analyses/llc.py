"""LLC from a sampling store: n_beta * (mean sampling loss - mean init loss), per chain and pooled.

The estimator is Lau et al. 2023 (arXiv 2308.12108), reduced as devinterp 2.x does: over every step
(burn-in included) and micro-batch of `sampling_loss_micro`. Diverged chains are excluded and named.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
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


def compute_llc(
    samples: xr.DataTree | xr.Dataset, *, allow_partial: bool = False, check: bool = True
) -> xr.Dataset:
    """LLC per chain and pooled from a sampling store (devinterp 2.x's compute_llc, plus exclusions).

    With `check`, the store is diagnosed too: attrs `healthy`, `diagnosis` and `diagnosis_problems`, and
    an UnhealthyRunWarning naming the problems when it is not healthy.
    """
    ds = samples.dataset if isinstance(samples, xr.DataTree) else samples
    n_beta = float(ds.attrs["metadata"]["config"]["sampler"]["n_beta"])
    use = usable_chains(ds, allow_partial=allow_partial, what="compute_llc")
    all_chains = ds.sizes["chain"]
    sub = ds.isel(chain=use) if len(use) != all_chains else ds
    init_loss_mean = float(sub.init_loss.values.mean())
    loss_trace = sub.sampling_loss_micro.mean(dim=["batch_sampling", "token_pos"])
    llc_per_chain = llc_estimate(loss_trace.mean(dim="step"), init_loss_mean, n_beta)
    llc_scalar = llc_estimate(float(sub.sampling_loss_micro.mean()), init_loss_mean, n_beta)
    excluded = sorted(set(range(all_chains)) - set(use))
    attrs: dict[str, Any] = {"excluded_chains": excluded, "chains": list(use)}
    if check:
        from distinterp.analyses.diagnostics import diagnose

        diagnosis = diagnose(ds)
        attrs.update(diagnosis.attrs())
        diagnosis.report("compute_llc", stacklevel=3)
    return xr.Dataset(
        {
            "llc_mean": llc_per_chain.mean(),
            "llc_std": llc_per_chain.std(),
            "llc_per_chain": llc_per_chain,
            "llc_scalar": llc_scalar,
            "loss_trace": loss_trace,
            "init_loss": init_loss_mean,
        },
        attrs=attrs,
    )


def llc(
    model: Any,
    dataset: Any,
    observables: dict[str, Any],
    *,
    lr: float,
    n_beta: float,
    param_masks: dict[str, Any] | None = None,
    loss_fn: Any = None,
    extrapolate: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Sample and compute the LLC in one call (kwargs go to sample()).

    `extrapolate` (a calibration's `.extrapolate`: [{lr, num_draws}, ...]) also samples those step sizes,
    each into `<output_path stem>.lr=<lr>.zarr`, and adds `llc_extrapolated`, the straight line through
    every lr's estimate taken to lr -> 0 (`analyses.calibration.extrapolate_to_zero`), and `llc_by_lr`.
    """
    from distinterp.sampling import sample

    run = dict(
        model=model, dataset=dataset, observables=observables, param_masks=param_masks, loss_fn=loss_fn
    )
    if extrapolate:
        path = kwargs.get("output_path")
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(
                "extrapolate: needs output_path (a path or URL) to put each step size's store beside it"
            )
        for other in extrapolate:
            if "lr" not in other or not float(other["lr"]) > 0 or float(other["lr"]) == float(lr):
                raise ValueError(
                    f"extrapolate: each entry needs an lr > 0 other than lr={lr:g}, got {dict(other)}"
                )
    result = compute_llc(sample(**run, lr=lr, n_beta=n_beta, **kwargs))
    if not extrapolate:
        return result
    from distinterp.analyses.calibration import extrapolate_to_zero

    stem = str(kwargs["output_path"]).rstrip("/").removesuffix(".zarr")
    lrs, means, sems = [float(lr)], [float(result.llc_mean)], [_sem(result)]
    for other in extrapolate:
        settings = {**kwargs, **other, "output_path": f"{stem}.lr={float(other['lr']):g}.zarr"}
        res = compute_llc(sample(**run, n_beta=n_beta, **settings))
        lrs.append(float(other["lr"]))
        means.append(float(res.llc_mean))
        sems.append(_sem(res))
    return result.assign(
        llc_extrapolated=extrapolate_to_zero(lrs, means, sems),
        llc_by_lr=xr.DataArray(means, dims="lr", coords={"lr": lrs}),
    )


def _sem(res: xr.Dataset) -> float:
    n = int(res.llc_per_chain.size)
    std: float = float(res.llc_std)
    return std / math.sqrt(max(n - 1, 1))
