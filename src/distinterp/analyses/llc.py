"""LLC from a sampling store: n_beta * (mean sampling loss - mean init loss), per chain and pooled.

The estimator is Lau et al. 2023 (arXiv 2308.12108), reduced as devinterp 2.x does: over every step
(burn-in included) and micro-batch of `sampling_loss_micro`. Diverged chains are excluded and named.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from distinterp.analyses.chains import chain_status, llc_estimate, usable_chains  # noqa: F401 - their old home
from distinterp.analyses.diagnostics import diagnose
from distinterp.integrity import names_damaged_chunks
from distinterp.store.source import Samples, samples_of


@names_damaged_chunks
def compute_llc(
    samples: Samples,
    *,
    allow_partial: bool = False,
    check: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """LLC per chain and pooled from a sampling store (devinterp 2.x's compute_llc, plus exclusions).

    `samples`: what sample() returned, or the store's path, URL or SampleStore (opened lazily, with
    `storage_options`). With `check`, the store is diagnosed too: attrs `healthy`, `diagnosis` and
    `diagnosis_problems`, and an UnhealthyRunWarning naming the problems when it is not healthy.
    """
    opened = samples_of(samples, storage_options)
    ds = opened.dataset if isinstance(opened, xr.DataTree) else opened
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


def __getattr__(name: str) -> Any:
    """llc(): moved to distinterp.api (sample, then compute: above this module); the old import works."""
    if name in ("llc",):
        from distinterp import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
