"""`distinterp report ROOT` for a grid (checkpoints x restrictions x datasets x sampler settings): heatmaps of
the refined LLC (restriction x checkpoint) and the LLC over training per restriction and dataset, with
unhealthy cells crossed and unfinished (missing) cells grey. `sweep_report` sends a grid's table here."""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from distinterp.jobs.page import ReportFigure, new_figure, render, table_html, write_report

GRID_DIMS = ("restriction", "dataset")
"""Dims only a grid has (a trajectory has `checkpoint` alone, a calibration `cell`)."""
MAX_PANELS = 12
"""Heatmap panels drawn at most (one per setting of the axes beside restriction and checkpoint)."""
MISSING_COLOR = "0.8"


def is_grid(table: xr.Dataset) -> bool:
    """Whether an aggregate table is a grid's: a restriction or dataset dim, or two axes or more."""
    if "llc_mean" not in table:
        return False
    dims = table.llc_mean.dims
    return any(d in dims for d in GRID_DIMS) or len(dims) >= 2


def panel_dims(table: xr.Dataset) -> list[str]:
    """The axes beside restriction and checkpoint: one heatmap panel per combination of their values."""
    return [d for d in table.llc_mean.dims if d not in ("restriction", "checkpoint") and table.sizes[d] > 1]


def _squeeze(da: xr.DataArray) -> xr.DataArray:
    """da without its length-1 axes other than restriction and checkpoint (no panel of their own)."""
    return da.isel({d: 0 for d in da.dims if d not in ("restriction", "checkpoint") and da.sizes[d] == 1})


def panels(table: xr.Dataset) -> list[dict[str, Any]]:
    """Every combination of the panel axes' values, as isel selectors, in the table's order."""
    dims = panel_dims(table)
    return [dict(zip(dims, idx)) for idx in itertools.product(*(range(table.sizes[d]) for d in dims))]


def _name(table: xr.Dataset, selector: dict[str, int]) -> str:
    return ", ".join(f"{d}={_value(table[d].values[i])}" for d, i in selector.items()) or "all cells"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _matrix(table: xr.Dataset, name: str, selector: dict[str, int]) -> np.ndarray:
    """`name` of one panel as a (restriction, checkpoint) matrix (a missing axis is length 1)."""
    da = _squeeze(table[name].isel(selector))
    for d in ("restriction", "checkpoint"):
        if d not in da.dims:
            da = da.expand_dims(d)
    return np.asarray(da.transpose("restriction", "checkpoint").values)


def _labels(table: xr.Dataset, dim: str) -> list[str]:
    return [_value(v) for v in table[dim].values] if dim in table.dims else [""]


def _missing(table: xr.Dataset, selector: dict[str, int]) -> np.ndarray:
    """Cells with no LLC (not started, or no complete chain)."""
    return np.asarray(~np.isfinite(_matrix(table, "llc_mean", selector).astype(float)), dtype=bool)


def _unhealthy(table: xr.Dataset, selector: dict[str, int]) -> np.ndarray:
    """Cells that have an LLC but whose diagnosis is unhealthy."""
    if "healthy" not in table:
        return np.zeros_like(_missing(table, selector))
    return np.asarray(
        ~_matrix(table, "healthy", selector).astype(bool) & ~_missing(table, selector), dtype=bool
    )


def heatmap_figure(table: xr.Dataset) -> ReportFigure:
    """rLLC heatmaps, restriction (rows) x checkpoint (columns), one panel per setting of the other axes;
    unhealthy cells crossed and hatched, missing cells grey. One colour scale over every panel."""
    from matplotlib.colors import Normalize

    selectors = panels(table)[:MAX_PANELS]
    cols = min(len(selectors), 3)
    rows = -(-len(selectors) // cols)
    restrictions, checkpoints = _labels(table, "restriction"), _labels(table, "checkpoint")
    width = min(18.0, max(5.0, 1.2 + 0.5 * len(checkpoints)) * cols)
    height = max(2.5, 0.9 + 0.35 * len(restrictions))
    fig, axes = new_figure(rows, cols, width=width, height=height)
    values = table.llc_mean.values.astype(float)
    finite = values[np.isfinite(values)]
    norm = Normalize(float(finite.min()), float(finite.max())) if finite.size else Normalize(0.0, 1.0)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(selectors):
            ax.set_visible(False)
            continue
        sel = selectors[k]
        mean = np.ma.masked_invalid(_matrix(table, "llc_mean", sel).astype(float))
        ax.set_facecolor(MISSING_COLOR)
        image = ax.imshow(mean, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        for r, c in zip(*np.nonzero(_unhealthy(table, sel))):
            ax.add_patch(_hatch(c, r))
            ax.plot(c, r, "x", color="C3", ms=10, mew=2)
        ax.set_xticks(range(len(checkpoints)), checkpoints, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(restrictions)), restrictions, fontsize="small")
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("restriction")
        if panel_dims(table):
            ax.set_title(_name(table, sel), fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="LLC (mean over chains)")
    counts = _counts(table)
    caption = (
        f"{counts['cells']} cells: {counts['unhealthy']} unhealthy (crossed, hatched), "
        f"{counts['missing']} missing (grey)."
    )
    if len(panels(table)) > MAX_PANELS:
        caption += f" First {MAX_PANELS} of {len(panels(table))} panels drawn."
    return render(
        fig,
        "grid_heatmap",
        "Refined LLC: restriction x checkpoint",
        caption,
        llc_mean=values,
        panels=[_name(table, s) for s in selectors],
    )


def _hatch(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="///", edgecolor="C3", lw=0)


def _steps(table: xr.Dataset) -> tuple[np.ndarray, str]:
    """x of the checkpoints: the training step when every label names one, else their order."""
    if "step" in table.coords and table["step"].dims == ("checkpoint",):
        return table["step"].values.astype(float), "training step"
    return np.arange(table.sizes.get("checkpoint", 1), dtype=float), "checkpoint"


def training_figure(table: xr.Dataset) -> ReportFigure | None:
    """LLC over training, one line per restriction (colour) and dataset (line style) and grid setting
    (panel); unhealthy points crossed in red, missing points left out. None without a checkpoint axis."""
    if "checkpoint" not in table.llc_mean.dims:
        return None
    x, xlabel = _steps(table)
    outer = [d for d in panel_dims(table) if d != "dataset"]
    outer_sel = [dict(zip(outer, idx)) for idx in itertools.product(*(range(table.sizes[d]) for d in outer))]
    outer_sel = outer_sel[:MAX_PANELS]
    cols = min(len(outer_sel), 2)
    rows = -(-len(outer_sel) // cols)
    fig, axes = new_figure(rows, cols, width=9.0 * cols if cols > 1 else 9.0, height=4.0)
    styles = ["-", "--", ":", "-."]
    restrictions = _labels(table, "restriction")
    datasets = _labels(table, "dataset")
    lines = 0
    for k, ax in enumerate(axes.flat):
        if k >= len(outer_sel):
            ax.set_visible(False)
            continue
        for (ri, rname), (di, dname) in itertools.product(enumerate(restrictions), enumerate(datasets)):
            sel = dict(outer_sel[k])
            if "restriction" in table.llc_mean.dims:
                sel["restriction"] = ri
            if "dataset" in table.llc_mean.dims:
                sel["dataset"] = di
            cell = table.isel(sel)
            cell = cell.isel({d: 0 for d in cell.llc_mean.dims if d != "checkpoint" and cell.sizes[d] == 1})
            mean = cell.llc_mean.values.astype(float)
            std = cell.llc_std.values.astype(float) if "llc_std" in cell else np.zeros_like(mean)
            healthy = cell.healthy.values.astype(bool) if "healthy" in cell else np.ones_like(mean, bool)
            ok = np.isfinite(mean)
            label = " / ".join(n for n in (rname, dname) if n) or "LLC"
            color = f"C{ri % 10}"
            ax.plot(
                x[ok], mean[ok], styles[di % len(styles)], color=color, lw=1.2, marker="o", ms=3, label=label
            )
            ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=color, alpha=0.12, lw=0)
            bad = ok & ~healthy
            ax.plot(x[bad], mean[bad], "x", color="C3", ms=9, mew=2)
            lines += 1
        positive = x[x > 0]
        if xlabel == "training step" and positive.size and positive.max() / positive.min() > 100:
            ax.set_xscale("symlog", linthresh=float(positive.min()))  # steps spread over decades
        ax.set_xlabel(xlabel)
        ax.set_ylabel("LLC (mean over chains, band = std)")
        if outer:
            ax.set_title(_name(table, outer_sel[k]), fontsize="small")
        if xlabel == "checkpoint":
            labels = _labels(table, "checkpoint")
            ax.set_xticks(x, labels, rotation=45, ha="right", fontsize="small")
        ax.legend(loc="best", fontsize="x-small", ncol=2 if lines > 8 else 1)
    caption = (
        "Colour: restriction; line style: dataset. Red crosses: unhealthy cells; missing cells are left out."
    )
    return render(fig, "grid_training", "LLC over training per restriction and dataset", caption, step=x)


def _counts(table: xr.Dataset) -> dict[str, int]:
    mean = table.llc_mean.values.astype(float)
    missing = ~np.isfinite(mean)
    healthy = table.healthy.values.astype(bool) if "healthy" in table else ~missing
    return {
        "cells": int(mean.size),
        "missing": int(missing.sum()),
        "unhealthy": int((~healthy & ~missing).sum()),
    }


def cell_rows(table: xr.Dataset) -> list[tuple[str, str]]:
    """One (cell, 'LLC m ± s, n chains, health') row per cell, in the table's order."""
    dims = list(table.llc_mean.dims)
    rows = []
    for idx in itertools.product(*(range(table.sizes[d]) for d in dims)):
        sel = dict(zip(dims, idx))
        cell = table.isel(sel)
        name = ", ".join(f"{d}={_value(table[d].values[i])}" for d, i in sel.items())
        mean = float(cell.llc_mean)
        if not np.isfinite(mean):
            rows.append((name, "missing"))
            continue
        std = float(cell.llc_std) if "llc_std" in cell else float("nan")
        used = f", {int(cell.num_chains_used)} chains" if "num_chains_used" in cell else ""
        health = "healthy" if "healthy" not in cell or bool(cell.healthy) else "UNHEALTHY"
        problem = str(cell.problems.values).splitlines()[:1] if "problems" in cell else []
        rows.append(
            (
                name,
                f"LLC {mean:.4g} ± {std:.3g}{used}, {health}"
                + (f": {problem[0]}" if problem and health != "healthy" else ""),
            )
        )
    return rows


def grid_figures(table: xr.Dataset) -> list[ReportFigure]:
    """The grid's figures: the heatmaps, and the LLC over training when there is a checkpoint axis."""
    figures = [heatmap_figure(table)]
    lines = training_figure(table)
    if lines is not None:
        figures.append(lines)
    return figures


def write_grid_report(
    table: xr.Dataset, out: str | Path, title: str, extra: Sequence[ReportFigure] = ()
) -> Path:
    """The grid's page: counts and unfinished cells, the figures, then one row per cell."""
    counts = _counts(table)
    header = (
        f"<p><b>{counts['cells']} cells</b> over {', '.join(f'{d} ({table.sizes[d]})' for d in table.llc_mean.dims)}"
        f": {counts['unhealthy']} unhealthy, {counts['missing']} missing</p>"
    )
    if table.attrs.get("missing"):
        header += f"<p><b>unfinished</b>: {html.escape(', '.join(map(str, table.attrs['missing'])))}</p>"
    return write_report(out, title, [*grid_figures(table), *extra], header + table_html(cell_rows(table)))
