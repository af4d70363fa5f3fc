"""Rank 0's live view: the running LLC equals compute_llc at the end, a resumed run says so and counts its
rate from what it adds, diverged chains are counted, and analyses' bars stay quiet when fast."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import distinterp
from distinterp.progress import RunningLLC, progress_bar
from distinterp.store import Location
from tests.conftest import SMALL, tiny_gpt2, token_dataset


def _sample(path: Path, **kw: object) -> object:
    ds = token_dataset()
    return distinterp.sample(tiny_gpt2(), ds, {"train": ds}, output_path=path, **{**SMALL, **kw})


def test_resumed_run_starts_from_the_store_and_ends_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "run.zarr"
    _sample(path, chains=[0])
    first = capsys.readouterr().err
    assert "resuming" not in first
    assert re.search(
        r"sampled 6 steps in [\d.]+ s \([\d.]+ steps/s, all ranks\); 6/6 steps in the store", first
    )
    tree = _sample(path)  # chains 1 and 2 remain
    err = capsys.readouterr().err
    assert "resuming: 1 of 3 chains complete (6/18 steps already in" in err
    line = re.search(
        r"sampled (\d+) steps in ([\d.]+) s \(([\d.]+) steps/s, all ranks\); 18/18 steps in the store, 0 chain\(s\) diverged, LLC ≈ (\S+)",
        err,
    )
    assert line, err
    steps, seconds, rate = int(line[1]), float(line[2]), float(line[3])
    assert steps == 12 and abs(steps / rate - seconds) <= 0.051  # this session's steps only (s rounded)
    res = distinterp.compute_llc(tree)
    assert float(line[4]) == pytest.approx(float(res.llc_mean), rel=1e-3)


def test_running_llc_equals_compute_llc(tmp_path: Path) -> None:
    tree = _sample(tmp_path / "run.zarr", num_draws=60)  # two chunks per chain
    running = RunningLLC(Location(str(tmp_path / "run.zarr")), 3, SMALL["n_beta"])
    for c in range(3):
        running.fold(c, 50)
        running.fold(c, 50)  # nothing new: nothing added twice
        running.fold(c, 60)
    res = distinterp.compute_llc(tree)
    assert running.estimate([0, 1, 2]) == pytest.approx(float(res.llc_mean), rel=1e-5)
    assert running.folded.tolist() == [60, 60, 60]
    assert np.isnan(RunningLLC(Location(str(tmp_path / "run.zarr")), 3, 1.0).estimate([0]))


def test_diverged_chains_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.warns(UserWarning, match="diverged"):
        _sample(tmp_path / "run.zarr", lr=1e38, n_beta=1e6)
    err = capsys.readouterr().err
    assert "3 chain(s) diverged" in err and "LLC ≈" not in err


def test_progress_bar_is_silent_for_fast_loops(capsys: pytest.CaptureFixture) -> None:
    assert list(progress_bar(range(5), desc="quick")) == [0, 1, 2, 3, 4]
    assert "quick" not in capsys.readouterr().err
