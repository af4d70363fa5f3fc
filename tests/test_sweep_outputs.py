"""A grid's outputs: the report (heatmaps, LLC over training, unhealthy and missing cells), the
susceptibility table and per-token vectors, and BIF summaries per checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# ─── analyses of a grid's root ────────────────────────────────────────────────

CHECKPOINTS = ("0", "100")
RESTRICTIONS: dict[str, str | None] = {"full": None, "l0h0": "l0h0", "l0h1": "l0h1"}


def run_grid(root: Path) -> xr.Dataset:
    """A 2-checkpoint x 3-restriction grid with every grid analysis (one process)."""
    import distinterp
    from tests.conftest import SMALL, tiny_gpt2, token_dataset

    train, probe = token_dataset(16, seed=1), token_dataset(4, seed=2)
    table = distinterp.sweep(
        {step: (lambda step=step: tiny_gpt2(seed=int(step))) for step in CHECKPOINTS},
        train,
        {"train": train, "probe": probe},
        output_path=str(root),
        restrictions=RESTRICTIONS,
        analyses=("llc", "bif", "susceptibilities"),
        **{**SMALL, "num_chains": 2, "batches_per_draw": 1},
    )
    assert table is not None
    return table


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    root = tmp_path_factory.mktemp("grid") / "grid"
    return root, run_grid(root)


@pytest.fixture(scope="module")
def grid_root(grid: tuple[Path, xr.Dataset]) -> Path:
    return grid[0]


def test_sweep_merges_the_grid_analyses_into_its_table(grid: tuple[Path, xr.Dataset]) -> None:
    from distinterp.analyses.grid import bif_summaries, susceptibility_table

    root, table = grid
    assert table.llc_mean.dims == ("checkpoint", "restriction", "dataset")
    xr.testing.assert_equal(
        table.susceptibility.drop_vars("step"), susceptibility_table(str(root)).susceptibility
    )
    xr.testing.assert_equal(table.bif_mean.drop_vars("step"), bif_summaries(str(root)).bif_mean)
    assert np.isfinite(table.llc_mean.values).all()


def test_report_of_a_grid_root_draws_the_grid(grid: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    from distinterp.jobs.sweep_report import sweep_report

    page = sweep_report(grid[0], out=tmp_path / "rep")
    text = page.read_text()
    assert "6 cells" in text and 'id="grid_heatmap"' in text and 'id="grid_training"' in text


def test_grid_cells_follow_the_record(grid_root: Path) -> None:
    from distinterp.analyses.grid import GridCells

    cells = GridCells.open(str(grid_root))
    assert list(cells.axes) == ["checkpoint", "restriction", "dataset"]
    assert (
        cells.label(checkpoint="100", restriction="l0h0", dataset="default")
        == "checkpoint=100+restriction=l0h0"
    )
    assert len(list(cells.cells())) == 6
    assert cells.full_restriction() == "full"
    assert cells.location(checkpoint="0", restriction="full", dataset="default").local_path.is_dir()
    assert cells.outer() == [
        {"checkpoint": "0", "dataset": "default"},
        {"checkpoint": "100", "dataset": "default"},
    ]


def test_susceptibility_table_equals_each_checkpoint_computed_alone(grid_root: Path) -> None:
    """Each checkpoint's (restriction, token) slice is compute_susceptibilities of its stores, baseline NaN."""
    from distinterp.analyses.grid import susceptibility_table
    from distinterp.analyses.susceptibilities import compute_susceptibilities
    from distinterp.store import Location, open_tree

    table = susceptibility_table(str(grid_root))
    sus = table.susceptibility
    assert sus.dims == ("checkpoint", "dataset", "restriction", "token")
    assert sus.attrs["sampling_task"] == "train"
    tokens = (4 + 4) * 8  # every observable's rows (batch_size each) x target positions
    assert sus.sizes == {"checkpoint": 2, "dataset": 1, "restriction": 3, "token": tokens}
    for step in CHECKPOINTS:
        trees = {
            name: open_tree(Location(str(grid_root / f"checkpoint={step}+restriction={name}.zarr")))
            for name in RESTRICTIONS
        }
        ref = compute_susceptibilities(trees, "train", include_sampling_task=True)["susceptibilities"].dataset
        got = sus.sel(checkpoint=step, dataset="default")
        assert np.isnan(got.sel(restriction="full").values).all()
        for name in ("l0h0", "l0h1"):
            want = ref.sus.sel(wr=name).values
            np.testing.assert_array_equal(got.sel(restriction=name).values, want)
    # the token's input id is the context's at its target position
    ctx = open_tree(Location(str(grid_root / "checkpoint=0+restriction=full.zarr"))).dataset
    first = table.isel(token=0)
    assert int(first.token_id) == int(ctx[f"input_ids_{sus.attrs['observables'][0]}"].values[0, 1])


def test_susceptibility_vectors_round_trip_with_token_text(grid_root: Path) -> None:
    from distinterp.analyses.grid import (
        open_susceptibility_vectors,
        susceptibility_table,
        write_susceptibility_vectors,
    )

    class Digits:
        def decode(self, ids: list[int]) -> str:
            return f"<{ids[0]}>"

    table = susceptibility_table(str(grid_root))
    where = write_susceptibility_vectors(str(grid_root), table, tokenizer=Digits(), chunk_tokens=24)
    assert where.url == f"{grid_root}.token_vectors.zarr"
    vectors = open_susceptibility_vectors(str(grid_root))
    assert vectors.vectors.dims == ("token", "component")
    assert vectors.vectors.encoding["chunks"] == (24, 4)  # one chunk holds every component of its tokens
    assert list(vectors.component.values) == [
        "checkpoint=0+dataset=default+restriction=l0h0",
        "checkpoint=0+dataset=default+restriction=l0h1",
        "checkpoint=100+dataset=default+restriction=l0h0",
        "checkpoint=100+dataset=default+restriction=l0h1",
    ]
    want = table.susceptibility.sel(checkpoint="100", dataset="default", restriction="l0h1").values
    np.testing.assert_array_equal(vectors.vectors.values[:, 3], want)
    assert vectors.token_text.values[5] == f"<{int(table.token_id.values[5])}>"


def test_bif_summaries_per_cell(grid_root: Path) -> None:
    from distinterp.analyses.bif import compute_bif
    from distinterp.analyses.grid import bif_summaries
    from distinterp.store import Location, open_tree

    out = bif_summaries(str(grid_root))
    assert out.bif_mean.dims == ("checkpoint", "restriction", "dataset")
    assert out.bif.sizes["sequence_1"] == 8  # train 4 + probe 4 rows
    store = open_tree(Location(str(grid_root / "checkpoint=100+restriction=l0h1.zarr")))
    ref = np.asarray(compute_bif(store, correlation_method="sequence").influences.values, np.float64)
    off = ref[~np.eye(8, dtype=bool)]
    cell = out.sel(checkpoint="100", restriction="l0h1", dataset="default")
    assert float(cell.bif_mean) == pytest.approx(off.mean(), rel=1e-12)
    assert float(cell.bif_mean_abs) == pytest.approx(np.abs(off).mean(), rel=1e-12)
    np.testing.assert_array_equal(cell.bif.values, ref.astype(np.float32))
    small = bif_summaries(str(grid_root), max_rows=4)
    assert "bif" not in small and "bif_mean" in small


def test_grid_analyses_refuse_a_root_without_a_baseline_or_axes(tmp_path: Path, grid_root: Path) -> None:
    import json
    import shutil

    from distinterp.analyses.bif import AnalysisInputError
    from distinterp.analyses.grid import GridCells, susceptibility_table

    with pytest.raises(AnalysisInputError, match="not a sweep root"):
        GridCells.open(str(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(grid_root, copy)
    record = json.loads((copy / "distinterp-sweep.json").read_text())
    (copy / "distinterp-sweep.json").write_text(
        json.dumps({**record, "restrictions": {**RESTRICTIONS, "full": "l0"}})
    )
    with pytest.raises(AnalysisInputError, match="need an unrestricted baseline; add one with pattern None"):
        susceptibility_table(str(copy))
    (copy / "distinterp-sweep.json").write_text(json.dumps({**record, "axes": None, "kind": "trajectory"}))
    with pytest.raises(AnalysisInputError, match="trajectory root without axes"):
        GridCells.open(str(copy))


def test_aggregator_reads_s3_stores_as_open_tree_does(
    grid: tuple[Path, xr.Dataset], s3_server: Any, s3_url: str
) -> None:
    """Part of the grid copied to S3 aggregates to the local table (each store's metadata read in one LIST and a
    GET per array, see store/snapshot.py); open_store equals open_tree there; a missing store is None."""
    import json

    import fsspec

    from distinterp.jobs.sweep import aggregate_sweep
    from distinterp.store import Location, open_tree, read_root_attrs
    from distinterp.store.snapshot import open_store, root_attrs

    root, table = grid
    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", **options)
    # a grid of its own on S3: checkpoint 100's full and l0h1 stores (few files to upload)
    record = json.loads((root / "distinterp-sweep.json").read_text())
    labels = ["checkpoint=100+restriction=full", "checkpoint=100+restriction=l0h1"]
    axes = [["checkpoint", ["100"]], ["restriction", ["full", "l0h1"]], ["dataset", ["default"]]]
    bucket = s3_url.removeprefix("s3://")
    fs.pipe_file(
        f"{bucket}/distinterp-sweep.json", json.dumps({**record, "labels": labels, "axes": axes}).encode()
    )
    for label in labels:
        fs.put(str(root / f"{label}.zarr"), f"{bucket}/{label}.zarr", recursive=True)
    remote = aggregate_sweep(s3_url, storage_options=options)
    want = table[list(remote.data_vars)].sel(checkpoint=["100"], restriction=["full", "l0h1"])
    xr.testing.assert_identical(remote.drop_attrs(), want.drop_attrs())
    store = Location(f"{s3_url}/checkpoint=100+restriction=l0h1.zarr", options)
    xr.testing.assert_identical(open_store(store).dataset.load(), open_tree(store).dataset.load())
    assert root_attrs(store) == read_root_attrs(store)
    assert root_attrs(Location(f"{s3_url}/nothing.zarr", options)) is None


def test_length_one_axes_make_no_panels() -> None:
    """A sweep's table always has every axis; one of length 1 (the default dataset, a single setting) adds
    no panel and no title."""
    table = grid_table(missing=False).isel(dataset=[0]).expand_dims(init_seed=[0])
    fig = heatmap_figure(table)
    assert fig.data["panels"] == ["all cells"]
    assert [f.name for f in grid_figures(table)] == ["grid_heatmap", "grid_training"]


def test_susceptibilities_without_a_baseline_are_refused_before_sampling(tmp_path: Path) -> None:
    import distinterp
    from distinterp.analyses.bif import AnalysisInputError
    from tests.conftest import SMALL, tiny_gpt2, token_dataset

    ds = token_dataset(16)
    for restrictions in (None, {"l0h0": "l0h0", "l0h1": "l0h1"}, {"full": None}):
        with pytest.raises(AnalysisInputError, match="restrictions: analyses 'susceptibilities' need"):
            distinterp.sweep(
                tiny_gpt2(),
                ds,
                {"train": ds},
                output_path=str(tmp_path / "g"),
                restrictions=restrictions,
                analyses=("llc", "susceptibilities"),
                **SMALL,
            )
        assert not (tmp_path / "g").exists()
