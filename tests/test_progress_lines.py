"""Rank 0's closing line and resume notice (issue 19, item 7): the line counts every rank's last chunk, a
fresh store is not announced as resumed, and a resume without checkpoints never shows a negative rate."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import distinterp
from distinterp.parallel.distributed import runtime
from distinterp.parallel.plan import Plan
from distinterp.progress import ProgressReporter
from distinterp.store import Location, SampleStore
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_distributed import finish, torchrun


@pytest.mark.distributed
def test_closing_line_under_torchrun_counts_every_ranks_steps(tmp_path: Path) -> None:
    """With 2 ranks the line read '150/200 steps in the store' while the store was complete."""
    out = finish(torchrun(2, tmp_path / "run.zarr", {"num_chains": 4, "num_draws": 60}))
    line = re.search(r"; (\d+)/(\d+) steps in the store", out)
    assert line and line[1] == line[2] == str(4 * 60), out[-3000:]
    assert "resuming" not in out, out[-3000:]  # a fresh store


@pytest.mark.parametrize(("resumable", "first"), [(False, 6), (True, 9)])
def test_a_restarted_chain_is_not_counted_as_done(tmp_path: Path, resumable: bool, first: int) -> None:
    """Chain 1 holds 3 of 6 steps: without checkpoints it restarts, so only chain 0's 6 steps are kept."""
    path = tmp_path / "run.zarr"
    ds = token_dataset()
    distinterp.sample(tiny_gpt2(), ds, {"train": ds}, output_path=path, **SMALL)
    schema = SimpleNamespace(
        num_steps=6, num_chains=3, attrs={"metadata": {"config": {"sampler": {"n_beta": 10.0}}}}
    )
    plan = Plan.build(runtime(), 3, None)
    reporter = ProgressReporter(
        SampleStore(Location(str(path), {}), schema),
        plan,
        initial=np.array([6, 3, 0]),
        resumable=resumable,  # type: ignore[arg-type]
    )
    assert reporter.first == first
    line = reporter.stop()
    assert re.search(r"sampled \d+ steps", line) and "-" not in line.split("steps/s")[0]
