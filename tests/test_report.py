"""report(): the figures draw the store's numbers, the page embeds them with the diagnosis on top; live
stores, BIF / susceptibilities beside the store (decoded with a tokenizer, or as ids), S3, the CLI."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import distinterp
from distinterp.analyses.bif import compute_bif
from distinterp.analyses.susceptibilities import compute_susceptibilities
from distinterp.jobs.cli import main
from distinterp.jobs.figures import rolling_mean, running_llc
from distinterp.jobs.report import ReportFigure, html_page, new_figure, render, report, write_report
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_susceptibilities import wr_stores

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2, 3 chains x 20 draws with save_metrics."""
    path = tmp_path_factory.mktemp("report") / "run.zarr"
    ds = token_dataset()
    distinterp.sample(
        tiny_gpt2(), ds, {"train": ds}, output_path=path, **{**SMALL, "num_draws": 20, "save_metrics": True}
    )
    return path


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_figures_draw_the_stores_numbers(store: Path, tmp_path: Path) -> None:
    rep = report(store, out=tmp_path / "out")
    figs = {f.name: f for f in rep.figures}
    assert list(figs) == ["loss_traces", "llc_over_draws", "llc_per_chain", "metrics"]
    checks = distinterp.diagnose(store).checks
    res = distinterp.compute_llc(xr.open_datatree(store, engine="zarr", consolidated=False))
    trace = xr.open_datatree(store, engine="zarr", consolidated=False).dataset.sampling_loss_micro
    expected = trace.mean(["batch_sampling", "token_pos"]).values
    np.testing.assert_allclose(figs["loss_traces"].data["trace"], expected, rtol=1e-6)
    assert figs["loss_traces"].data["init_loss"] == pytest.approx(float(res.init_loss))
    # the running estimate ends at each chain's LLC; the per-chain figure shows compute_llc's numbers
    np.testing.assert_allclose(
        figs["llc_over_draws"].data["running"][:, -1], res.llc_per_chain.values, rtol=1e-4
    )
    np.testing.assert_allclose(figs["llc_per_chain"].data["llc"], res.llc_per_chain.values, rtol=1e-4)
    assert figs["llc_per_chain"].data["mean"] == pytest.approx(float(res.llc_mean), rel=1e-4)
    assert float(checks.llc_mean) == pytest.approx(float(res.llc_mean), rel=1e-4)
    drawn = figs["metrics"].data
    assert "metrics_distance" in drawn and "metrics_localization" not in drawn  # all zero: off
    # the page: diagnosis first, every figure embedded byte for byte, PNGs beside it
    page = rep.path.read_text()
    assert rep.path == tmp_path / "out" / "index.html"
    assert page.index("diagnosis: UNHEALTHY") < page.index("<figure")
    for problem in rep.diagnosis.problems:
        assert problem.split(":")[0] + ":" in page
    assert images(page) == [f.png for f in rep.figures]
    for f in rep.figures:
        assert (tmp_path / "out" / f"{f.name}.png").read_bytes() == f.png and f.png.startswith(PNG)
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_pure_helpers() -> None:
    trace = np.array([[1.0, 2.0, 3.0, np.nan]])
    np.testing.assert_allclose(running_llc(trace, 1.0, 10.0), [[0.0, 5.0, 10.0, np.nan]])
    np.testing.assert_allclose(rolling_mean(np.arange(5.0)[None], 2), [[0.0, 0.5, 1.5, 2.5, 3.5]])


def test_another_report_reuses_the_page(tmp_path: Path) -> None:
    """Other reports (trajectories, calibration) add figures through render / write_report."""
    fig, ax = new_figure()
    ax[0, 0].plot([1, 2, 3])
    extra = render(fig, "llc_over_training", "LLC over training", "a caption", x=[1, 2, 3])
    assert isinstance(extra, ReportFigure) and extra.png.startswith(PNG)
    page = write_report(tmp_path, "trajectory", [extra], "<p>header</p>").read_text()
    assert "<p>header</p>" in page and "a caption" in page and images(page) == [extra.png]
    assert html_page("t", []).count("<figure") == 0


def test_live_store(tmp_path: Path) -> None:
    """A store with only chain 0 of 3 sampled reports what it has and says it is incomplete."""
    path = tmp_path / "live.zarr"
    distinterp.sample(
        tiny_gpt2(), token_dataset(), {"train": token_dataset()}, output_path=path, chains=[0], **SMALL
    )
    rep = report(path)
    assert rep.path == tmp_path / "live.report" / "index.html"
    assert any(p.startswith("incomplete: chains 1, 2") for p in rep.diagnosis.problems)
    running = rep.figures[1].data["running"]
    assert np.isfinite(running[0]).all() and np.isnan(running[1:]).all()


class Words:
    """A tokenizer stand-in: decode([i]) -> 'w<i>'."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


def test_bif_and_susceptibilities_beside_the_store(tmp_path: Path) -> None:
    wr = wr_stores(0, ["full", "l0"], directory=tmp_path)  # full.zarr, l0.zarr
    bif = compute_bif(wr["full"], correlation_method="sequence")
    bif.to_zarr(tmp_path / "full.bif.zarr", mode="w", consolidated=False)
    sus = compute_susceptibilities(wr, "pile")
    sus.to_zarr(tmp_path / "full.susceptibilities.zarr", mode="w", consolidated=False)
    rep = report(tmp_path / "full.zarr", tokenizer=Words())
    figs = {f.name: f for f in rep.figures}
    np.testing.assert_allclose(figs["bif"].data["matrix"], bif.influences.values, rtol=1e-6)
    s = figs["susceptibilities"].data
    first = (sus["susceptibilities"].dataset.dataset_id.values == 0) & (
        sus["susceptibilities"].dataset.batch.values == 0
    )
    np.testing.assert_allclose(s["values"], sus["susceptibilities"].dataset.sus.values[first], rtol=1e-6)
    ids = sus["context"].dataset.input_ids.values[:4]  # the first sequence: positions 0..T
    assert s["labels"] == [f"w{i}" for i in ids[1:]] and s["restrictions"] == ["l0"]
    as_ids = report(tmp_path / "full.zarr", out=tmp_path / "ids", susceptibilities=sus, bif=bif)
    assert {f.name: f for f in as_ids.figures}["susceptibilities"].data["labels"] == [str(i) for i in ids[1:]]


def test_cli_report(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(store), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diagnosis ") and f"wrote {tmp_path / 'cli' / 'index.html'} (4 figures" in out


@pytest.mark.s3
def test_report_of_an_s3_store(s3_server: Any, s3_url: str, store: Path, tmp_path: Path) -> None:
    from tests.jobs import run

    url = f"{s3_url}/run.zarr"
    run(url, storage_options=s3_server.storage_options, num_chains=2)
    rep = report(url, out=tmp_path / "s3", storage_options=s3_server.storage_options)
    assert rep.path.is_file() and [f.name for f in rep.figures][:3] == [
        "loss_traces",
        "llc_over_draws",
        "llc_per_chain",
    ]
    assert url in rep.path.read_text()
