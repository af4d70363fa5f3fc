"""`distinterp report ROOT` for a trajectory, calibration or grid root: the LLC over training, the sweep of
LLC against lr with the choice, or a grid's heatmaps (`distinterp.jobs.grid_report`), drawn with the
report's helpers (`distinterp.jobs.report`)."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from distinterp.jobs.grid_report import is_grid, write_grid_report
from distinterp.jobs.page import ReportFigure, new_figure, render, table_html, write_report
from distinterp.jobs.sweep import aggregate_sweep, read_record
from distinterp.store import Location

logger = logging.getLogger(__name__)


def trajectory_figure(table: xr.Dataset, *, log_step: bool = False) -> ReportFigure:
    """LLC mean over chains per checkpoint with +- std error bars; unhealthy checkpoints marked in red."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    labels = [str(x) for x in table.checkpoint.values]
    x = table.step.values.astype(float) if "step" in table.coords else np.arange(len(labels), dtype=float)
    mean, std = table.llc_mean.values, table.llc_std.values
    healthy = table.healthy.values.astype(bool)
    ax.plot(x, mean, color="0.6", lw=1, zorder=1)
    ax.errorbar(x[healthy], mean[healthy], yerr=std[healthy], fmt="o", color="C0", capsize=3, label="healthy")
    if (~healthy).any():
        ax.errorbar(
            x[~healthy],
            mean[~healthy],
            yerr=std[~healthy],
            fmt="x",
            color="C3",
            capsize=3,
            ms=8,
            label="unhealthy",
        )
    if log_step:
        if (x <= 0).any():
            ax.set_xscale("symlog", linthresh=max(1.0, float(np.min(x[x > 0])) if (x > 0).any() else 1.0))
        else:
            ax.set_xscale("log")
    if "step" not in table.coords:
        ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_xlabel("training step" if "step" in table.coords else "checkpoint")
    ax.set_ylabel("LLC (mean over chains, error bar = std)")
    ax.legend(loc="best")
    bad = [
        f"{labels[i]}: {(str(table.problems.values[i]).splitlines() or ['unhealthy'])[0]}"
        for i in np.flatnonzero(~healthy)
    ]
    caption = "Unhealthy: " + "; ".join(bad) if bad else "Every checkpoint's diagnosis is healthy."
    return render(fig, "trajectory", "LLC over training", caption, step=x, llc_mean=mean, healthy=healthy)


def calibration_figure(table: xr.Dataset) -> ReportFigure:
    """LLC against lr (log) per setting of the other grid fields; unhealthy cells hollow, the choice starred."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    lr = table.lr.values.astype(float)
    others = [c for c in table.coords if c not in ("cell", "lr") and table[c].dims == ("cell",)]
    keys = [tuple(table[c].values[i] for c in others) for i in range(table.sizes["cell"])]
    mean, sem = table.llc_mean.values, table.llc_sem.values
    healthy = table.healthy.values.astype(bool)
    for n, key in enumerate(dict.fromkeys(keys)):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        idx = idx[np.argsort(lr[idx])]
        name = ", ".join(f"{c}={v:g}" for c, v in zip(others, key)) or "cells"
        color = f"C{n % 10}"
        ax.plot(lr[idx], mean[idx], color=color, lw=1, label=name)
        ok = idx[healthy[idx]]
        ax.errorbar(lr[ok], mean[ok], yerr=sem[ok], fmt="o", color=color, capsize=3)
        bad = idx[~healthy[idx]]
        ax.plot(lr[bad], mean[bad], "o", mfc="none", color=color)
    chosen = table.attrs.get("between", [])
    if chosen:
        i = list(table.cell.values).index(chosen[0])
        ax.plot(lr[i], mean[i], "*", ms=16, color="k", label="choice")
    estimate = table.attrs.get("estimate", float("nan"))
    if np.isfinite(estimate):
        se = float(table.attrs.get("estimate_se", float("nan")))
        label = f"rule's estimate {estimate:.4g}" + (f" +- {se:.2g} (s.e.)" if np.isfinite(se) else "")
        ax.axhline(estimate, color="k", ls=":", lw=1, label=label)
        if np.isfinite(se):
            z = float(table.attrs.get("estimate_z", 2.0))  # 95 %: Student's t over the chains
            ax.axhspan(estimate - z * se, estimate + z * se, color="k", alpha=0.08, lw=0)
    ax.set_xscale("log")
    finite = mean[np.isfinite(mean)]
    if finite.size and (finite > 0).all() and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel("LLC (mean over chains, error bar = s.e.)")
    ax.legend(loc="best", fontsize="small")
    caption = "Filled: healthy cells; hollow: unhealthy. " + str(table.attrs.get("reason", ""))
    return render(fig, "calibration", "Calibration sweep: LLC against lr", caption, lr=lr, llc_mean=mean)


def sweep_report(
    root: str | Path,
    *,
    out: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
    log_step: bool = False,
    allow_partial: bool = True,
) -> Path:
    """Write the figure and a table of every store for a trajectory or calibration root; returns the page."""
    location = Location(str(root), dict(storage_options or {}))
    record = read_record(location)
    if record is None:
        raise FileNotFoundError(f"report: {root} is not a trajectory or calibration root")
    if record["kind"] == "calibration":
        from distinterp.jobs.calibrate import choose_cell

        table = choose_cell(location, allow_partial=allow_partial).table
        figures = [calibration_figure(table)]
        dim = "cell"
    else:
        table = aggregate_sweep(location, allow_partial=allow_partial)
        if is_grid(table):
            page = write_grid_report(
                table, _target(location, root, out), f"distinterp {record['kind']}: {root}"
            )
            logger.info("report: wrote %s", page)
            return page
        figures = [trajectory_figure(table, log_step=log_step)]
        dim = "checkpoint"
    rows = [
        (
            str(label),
            f"LLC {float(table.llc_mean[i]):.4g} ± {float(table.llc_std[i]):.3g}, "
            f"{int(table.num_chains_used[i])} chains, {'healthy' if table.healthy.values[i] else 'UNHEALTHY'}",
        )
        for i, label in enumerate(table[dim].values)
    ]
    header = ""
    if table.attrs.get("reason"):
        header += f"<p><b>choice</b>: {html.escape(str(table.attrs['reason']))}</p>"
    if table.attrs.get("missing"):
        header += f"<p><b>unfinished</b>: {html.escape(', '.join(table.attrs['missing']))}</p>"
    page = write_report(
        _target(location, root, out),
        f"distinterp {record['kind']}: {root}",
        figures,
        header + table_html(rows),
    )
    logger.info("report: wrote %s", page)
    return page


def _target(location: Location, root: str | Path, out: str | Path | None) -> Path:
    """Where the page goes: `out`, else `<root stem>.report` beside a local root or in the working directory."""
    if out:
        return Path(out)
    stem = str(root).rstrip("/").rsplit("/", 1)[-1]
    return location.local_path.with_name(stem + ".report") if location.is_local else Path(stem + ".report")
