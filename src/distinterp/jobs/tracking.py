"""Weights & Biases logging of a finished (or live) store, by rank 0: per-step LLC estimates, loss traces,
metrics_*, the diagnosis, the final LLC and the report's figures. Optional: `pip install 'distinterp[wandb]'`."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import xarray as xr

from distinterp.analyses.diagnostics import Diagnosis, diagnose
from distinterp.jobs.settings import WandbSettings

logger = logging.getLogger(__name__)


def require_wandb() -> Any:
    """The wandb module, or an error naming the setting and the fix (checked before any work)."""
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "logging.wandb: needs the wandb package: pip install 'distinterp[wandb]' (or unset logging.wandb)"
        ) from None
    return wandb


def step_rows(ds: xr.Dataset, diagnosis: Diagnosis) -> list[dict[str, float]]:
    """One dict per SGLD step: running LLC (mean and per chain), each chain's loss, metrics_* means."""
    from distinterp.jobs.figures import running_llc

    c = diagnosis.checks
    trace = c.loss_trace.values
    running = running_llc(trace, float(c.init_loss), float(c.n_beta))
    use = c.attrs.get("chains_used", list(range(trace.shape[0])))
    metrics = {
        n.removeprefix("metrics_"): np.asarray(ds[n].values, np.float64)
        for n in map(str, ds.data_vars)
        if n.startswith("metrics_")
    }
    rows = []
    for t in range(trace.shape[1]):
        row: dict[str, float] = {}
        if use and np.isfinite(running[use, t]).any():
            row["llc/estimate"] = float(np.nanmean(running[use, t]))
        for ch in range(trace.shape[0]):
            if np.isfinite(trace[ch, t]):
                row[f"loss/chain_{ch}"] = float(trace[ch, t])
                row[f"llc/chain_{ch}"] = float(running[ch, t])
        for name, values in metrics.items():
            column = values[:, t]
            if np.isfinite(column).any():
                row[f"metrics/{name}"] = float(np.nanmean(column))
        rows.append(row)
    return rows


def summary(diagnosis: Diagnosis, results: dict[str, xr.Dataset]) -> dict[str, Any]:
    """The run's final numbers and verdict."""
    c = diagnosis.checks
    out: dict[str, Any] = {
        "diagnosis/healthy": bool(diagnosis.healthy),
        "diagnosis/summary": diagnosis.summary(),
        "diagnosis/problems": "\n".join(diagnosis.problems),
        "diagnosis/rhat": float(c.rhat),
        "diagnosis/ess_bulk": float(c.ess_bulk),
    }
    if "llc" in results:
        res = results["llc"]
        out |= {
            "llc_mean": float(res.llc_mean),
            "llc_std": float(res.llc_std),
            "llc_per_chain": [float(v) for v in res.llc_per_chain.values],
        }
    return out


def log_to_wandb(
    settings: WandbSettings,
    tree: xr.DataTree,
    results: dict[str, xr.Dataset],
    *,
    name: str,
    config: dict[str, Any] | None = None,
) -> str:
    """Log the store as one W&B run; returns the run's local directory (the offline run directory)."""
    wandb = require_wandb()
    from PIL import Image

    from distinterp.jobs.figures import store_figures

    ds = tree.dataset
    diagnosis = diagnose(ds)
    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        mode=settings.mode,
        tags=list(settings.tags),
        dir=settings.dir,
        name=name,
        config=config or {},
    )
    try:
        for t, row in enumerate(step_rows(ds, diagnosis)):
            run.log(row, step=t)
        images = {
            f"report/{f.name}": wandb.Image(Image.open(io.BytesIO(f.png)), caption=f.title)
            for f in store_figures(ds, diagnosis)
        }
        run.log(images, step=max(ds.sizes["step"] - 1, 0))
        for key, value in summary(diagnosis, results).items():
            run.summary[key] = value
        directory = str(run.dir).removesuffix("/files")
    finally:
        run.finish()
    logger.info("logged to W&B (%s): %s", settings.mode, directory)
    return directory
