"""`distinterp inspect [--strict]`, and the verdict that sample / aggregate / compute_llc report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import distinterp
from distinterp.analyses.diagnostics import UnhealthyRunWarning
from distinterp.jobs.cli import main
from distinterp.store import Location, open_tree
from tests.test_cli import TINY


def _config(tmp_path: Path, **sampler: float) -> Path:
    path = tmp_path / "tiny.yaml"
    settings = {**TINY, "sampler": {**TINY["sampler"], **sampler}, "output_path": str(tmp_path / "run.zarr")}
    path.write_text(yaml.safe_dump(settings))
    return path


def test_all_diverged_run_is_not_reported_complete(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Was '2/2 chains complete' and an error; now the count, the diagnosis and exit 1."""
    config = _config(tmp_path, lr=1e38, n_beta=1000.0)
    assert main(["sample", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "warning: Chain 1 diverged at step 0" in err
    assert "0/2 chains complete, 2 diverged" in out
    assert "diagnosis UNHEALTHY" in out and "diverged: 2/2 chains (chains 0, 1)" in out


def test_inspect_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """inspect lists config, schema with sizes, progress, what lies beside, the diagnosis; --strict exits 1."""
    assert main(["sample", str(_config(tmp_path, lr=1e30))]) == 0
    out = capsys.readouterr().out
    assert "2/2 chains complete" in out and "diagnosis UNHEALTHY" in out and "d/2 = 4.5" in out
    store = str(tmp_path / "run.zarr")
    (tmp_path / "run.bif.zarr").mkdir()
    assert main(["inspect", store]) == 0
    out = capsys.readouterr().out
    for text in [
        "distinterp-written",
        "lr=1e+30",
        "d=9 sampled parameters",
        "sampling_loss_micro",
        "(chain=2, step=5, batch_sampling=4, token_pos=8) float32  chunks (1, 5, 4, 8)",
        "2/2 chains complete, 0 diverged, 0 unfinished (completed)",
        "beside    run.bif.zarr",
        "bounds: chains 0, 1: LLC",
    ]:
        assert text in out, text
    assert main(["inspect", store, "--strict"]) == 1
    assert main(["inspect", str(tmp_path / "nothing.zarr")]) == 2


def test_compute_llc_records_and_warns_the_verdict(tmp_path: Path) -> None:
    main(["sample", str(_config(tmp_path, lr=1e30))])
    tree = open_tree(Location(str(tmp_path / "run.zarr")))
    with pytest.warns(UnhealthyRunWarning, match="bounds: chains 0, 1"):
        res = distinterp.compute_llc(tree)
    assert res.attrs["healthy"] == 0 and res.attrs["diagnosis"].startswith("UNHEALTHY")
    assert "lower lr" in res.attrs["diagnosis_problems"]
    assert "healthy" not in distinterp.compute_llc(tree, check=False).attrs
