"""llc(), bif(), susceptibilities(): sample(), then compute. Above sample() and the analyses, so neither
imports the other."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from distinterp.analyses.bif import (
    AnalysisInputError,
    ChainReductionMethod,
    CorrelationMethod,
    _check_options,
    compute_bif,
)
from distinterp.analyses.calibration import line_to_zero
from distinterp.analyses.llc import compute_llc
from distinterp.analyses.susceptibilities import (
    Restriction,
    check_restriction_names,
    compute_susceptibilities,
    restriction_path,
)
from distinterp.masks import create_param_masks
from distinterp.parallel.distributed import runtime
from distinterp.sampling import sample


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
    every lr's estimate taken to lr -> 0 (`analyses.calibration.line_to_zero`), its standard error
    `llc_extrapolated_se` (chains' noise and, over three or more lr, the line's shape), and `llc_by_lr`.
    """
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
    stem = str(kwargs["output_path"]).rstrip("/").removesuffix(".zarr")
    lrs, means, sems = [float(lr)], [float(result.llc_mean)], [_sem(result)]
    for other in extrapolate:
        settings = {**kwargs, **other, "output_path": f"{stem}.lr={float(other['lr']):g}.zarr"}
        res = compute_llc(sample(**run, n_beta=n_beta, **settings))
        lrs.append(float(other["lr"]))
        means.append(float(res.llc_mean))
        sems.append(_sem(res))
    estimate, _, estimate_se = line_to_zero(lrs, means, sems)
    return result.assign(
        llc_extrapolated=estimate,
        llc_extrapolated_se=estimate_se,
        llc_by_lr=xr.DataArray(means, dims="lr", coords={"lr": lrs}),
    )


def _sem(res: xr.Dataset) -> float:
    """Standard error of the mean LLC over chains."""
    n = int(res.llc_per_chain.size)
    std: float = float(res.llc_std)
    return std / math.sqrt(max(n - 1, 1))


def bif(
    model: torch.nn.Module,
    dataset: Any,
    observables: dict[str, Any],
    *,
    lr: float,
    n_beta: float,
    param_masks: dict[str, torch.Tensor | None] | None = None,
    correlation_method: CorrelationMethod = "token",
    reduce_chain_dimension_method: ChainReductionMethod = "stack",
    average_tokenwise_bif: bool = False,
    compute_covariance: bool = False,
    bif_batch_size: int = 32,
    bif_device: str | torch.device | None = None,
    bif_output_path: str | Path | None = None,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    **kwargs: Any,
) -> xr.Dataset | None:
    """Sample (on every rank under torchrun) and compute the BIF; rank 0 returns it, other ranks None.

    Under torchrun the token-wise pairs of blocks are split round-robin over the ranks (see `_token_bif`).
    `bif_output_path` is compute_bif's `output_path`; kwargs go to sample() (num_chains, num_draws,
    batch_size, output_path, ...).
    """

    _check_options(correlation_method, reduce_chain_dimension_method, bif_batch_size, "bif_batch_size")
    samples = sample(
        model=model,
        dataset=dataset,
        observables=observables,
        param_masks=param_masks,
        lr=lr,
        n_beta=n_beta,
        loss_fn=loss_fn,
        **kwargs,
    )
    return compute_bif(
        samples,
        runtime=runtime(),
        correlation_method=correlation_method,
        reduce_chain_dimension_method=reduce_chain_dimension_method,
        average_tokenwise_bif=average_tokenwise_bif,
        compute_covariance=compute_covariance,
        batch_size=bif_batch_size,
        device=bif_device,
        output_path=bif_output_path,
    )


def susceptibilities(
    model: torch.nn.Module,
    dataset: Any,
    observables: dict[str, Any],
    weight_restrictions: dict[str, Restriction],
    *,
    sampling_task: str,
    lr: float,
    n_beta: float,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    include_sampling_task: bool = False,
    **kwargs: Any,
) -> xr.DataTree | None:
    """Sample every weight restriction (all ranks, one after another) and compute susceptibilities on
    rank 0; other ranks return None. `output_path` names no single store: restriction `w` is sampled into
    `<stem>_<w><suffix>` beside it, as devinterp does (output_path="sus.zarr" writes sus_full.zarr,
    sus_l0h1.zarr, ...). Observables are name -> dataset, or name -> (dataset, batches_per_draw)."""

    check_restriction_names(weight_restrictions, "weight_restrictions")
    if sampling_task not in observables:
        raise AnalysisInputError(
            f"sampling_task: {sampling_task!r} is not one of the observables {list(observables)}"
        )
    if not include_sampling_task and not [name for name in observables if name != sampling_task]:
        raise AnalysisInputError(
            "observables: need at least one observable besides sampling_task (or set include_sampling_task=True)"
        )
    masks = {
        name: create_param_masks(model, r) if isinstance(r, str | list) else r
        for name, r in weight_restrictions.items()
    }
    base = kwargs.pop("output_path", None)
    wr_map = {}
    for name, m in masks.items():
        path = None if base is None else restriction_path(base, name)
        wr_map[name] = sample(
            model=model,
            dataset=dataset,
            observables=observables,
            param_masks=m,
            lr=lr,
            n_beta=n_beta,
            loss_fn=loss_fn,
            output_path=path,
            **kwargs,
        )
    if not runtime().is_coordinator:
        return None
    return compute_susceptibilities(wr_map, sampling_task, include_sampling_task=include_sampling_task)
