"""A grid's outputs: the report (heatmaps, LLC over training, unhealthy and missing cells), the
susceptibility table and per-token vectors, and BIF summaries per checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from distinterp.jobs.grid_report import cell_rows, grid_figures, heatmap_figure, is_grid, write_grid_report


def grid_table(missing: bool = True) -> xr.Dataset:
    """An aggregate table as a grid's: 3 restrictions x 4 checkpoints x 2 datasets, one cell unhealthy,
    one missing (NaN, 'not started')."""
    rng = np.random.default_rng(0)
    shape = (3, 4, 2)
    mean = rng.uniform(1.0, 5.0, shape)
    healthy = np.ones(shape, bool)
    healthy[1, 2, 0] = False
    problems = np.full(shape, "", dtype=object)
    problems[1, 2, 0] = "split R-hat 1.3 > 1.1"
    if missing:
        mean[2, 3, 1] = np.nan
        healthy[2, 3, 1] = False
        problems[2, 3, 1] = "not started"
    dims = ("restriction", "checkpoint", "dataset")
    return xr.Dataset(
        {
            "llc_mean": (dims, mean),
            "llc_std": (dims, np.full(shape, 0.1)),
            "healthy": (dims, healthy),
            "problems": (dims, problems.astype(str)),
            "num_chains_used": (dims, np.where(np.isfinite(mean), 2, 0)),
        },
        coords={
            "restriction": ["l0h0", "l0h1", "full"],
            "checkpoint": ["0", "10", "100", "1000"],
            "dataset": ["code", "prose"],
            "step": ("checkpoint", np.array([0, 10, 100, 1000])),
        },
        attrs={"missing": ["full-1000-prose"] if missing else []},
    )


def test_is_grid_tells_a_grid_from_a_trajectory_and_a_calibration() -> None:
    table = grid_table()
    assert is_grid(table)
    assert is_grid(table.isel(dataset=0, drop=True))  # restriction x checkpoint
    assert is_grid(table.isel(restriction=0, drop=True))  # checkpoint x dataset
    trajectory = table.isel(restriction=0, dataset=0, drop=True)
    assert not is_grid(trajectory)
    assert not is_grid(xr.Dataset({"llc_mean": ("cell", [1.0, 2.0])}))


def test_grid_report_marks_unhealthy_and_missing_cells(tmp_path: Path) -> None:
    table = grid_table()
    fig = heatmap_figure(table)
    assert fig.png.startswith(b"\x89PNG")
    assert fig.data["panels"] == ["dataset=code", "dataset=prose"]
    assert "1 unhealthy" in fig.caption and "1 missing" in fig.caption
    names = [f.name for f in grid_figures(table)]
    assert names == ["grid_heatmap", "grid_training"]
    rows = dict(cell_rows(table))
    assert rows["restriction=full, checkpoint=1000, dataset=prose"] == "missing"
    assert "UNHEALTHY: split R-hat" in rows["restriction=l0h1, checkpoint=100, dataset=code"]
    assert rows["restriction=l0h0, checkpoint=0, dataset=code"].endswith("2 chains, healthy")
    page = write_grid_report(table, tmp_path / "out", "grid")
    text = page.read_text()
    assert "24 cells" in text and "1 unhealthy, 1 missing" in text and "full-1000-prose" in text
    assert (tmp_path / "out" / "grid_heatmap.png").is_file()
    assert (tmp_path / "out" / "grid_training.png").is_file()


def test_grid_report_without_checkpoint_axis_draws_the_heatmap_only() -> None:
    table = grid_table(missing=False).isel(checkpoint=0, drop=True).drop_vars("step", errors="ignore")
    figures = grid_figures(table)
    assert [f.name for f in figures] == ["grid_heatmap"]


@pytest.mark.parametrize("panels", [1, 14])
def test_grid_heatmap_panels_over_grid_fields(panels: int) -> None:
    """A sampler-settings axis adds panels; past MAX_PANELS the caption says how many were drawn."""
    base = grid_table(missing=False).isel(dataset=0, drop=True)
    table = xr.concat([base] * panels, dim=xr.DataArray(np.geomspace(1e-4, 1e-2, panels), dims="lr"))
    fig = heatmap_figure(table)
    assert len(fig.data["panels"]) == min(panels, 12)
    assert ("First 12 of 14 panels" in fig.caption) == (panels == 14)
