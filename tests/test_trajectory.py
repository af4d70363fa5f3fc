"""trajectory(): one store per checkpoint, each equal to a standalone sample(); every layout (1 process,
2 torchrun ranks, array tasks mixing both) writes the same bytes; kill-and-rerun resumes; a changed
config is refused untouched; an unfinished trajectory aggregates only when asked to."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

import distinterp
from distinterp.jobs.sweep import RECORD, aggregate_sweep, check_label, work_blocks
from distinterp.jobs.trajectory import trajectory
from distinterp.store import IncompleteStoreError, StoreConfigMismatch
from tests.conftest import SMALL, token_dataset
from tests.test_distributed import finish, kill_tree, run_single, torchrun
from tests.test_sampling import tree_hash
from tests.trajectory_job import LABELS, checkpoint, run

JOB = "tests.trajectory_job"


def hashes(root: Path, labels=LABELS) -> dict[str, str]:
    return {str(s): tree_hash(root / f"{s}.zarr") for s in labels}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The trajectory of LABELS in this process."""
    root = tmp_path_factory.mktemp("traj") / "ref"
    run(str(root))
    return root


def test_each_checkpoint_store_equals_a_standalone_sample(reference, tmp_path):
    """Store <root>/<label>.zarr is byte for byte sample() of that checkpoint; the root records the labels."""
    ds = token_dataset()
    for step in LABELS:
        out = tmp_path / f"alone{step}.zarr"
        distinterp.sample(checkpoint(step), ds, {"train": ds}, output_path=str(out), **SMALL)
        assert tree_hash(reference / f"{step}.zarr") == tree_hash(out), step
    record = json.loads((reference / RECORD).read_text())
    assert record["kind"] == "trajectory" and record["labels"] == ["0", "10", "200"]
    res = aggregate_sweep(str(reference))
    assert list(res.checkpoint.values) == ["0", "10", "200"]
    assert list(res.step.values) == [0, 10, 200]
    assert res.llc_per_chain.dims == ("checkpoint", "chain") and res.sizes["chain"] == SMALL["num_chains"]
    alone = distinterp.compute_llc(distinterp.sample(checkpoint(10), ds, {"train": ds}, **SMALL))
    np.testing.assert_array_equal(res.llc_per_chain.sel(checkpoint="10").values, alone.llc_per_chain.values)


def test_loaders_are_called_one_at_a_time_and_never_for_finished_checkpoints(reference, tmp_path):
    """A loader runs when its checkpoint's turn comes (one model in memory); a rerun loads nothing."""
    calls: list[int] = []
    ds = token_dataset()

    def loader(step):
        def load():
            calls.append(step)
            return checkpoint(step)

        return load

    out = trajectory(
        {s: loader(s) for s in LABELS}, ds, {"train": ds}, output_path=str(tmp_path / "t"), **SMALL
    )
    assert calls == list(LABELS) and out is not None
    assert hashes(tmp_path / "t") == hashes(reference)
    again = trajectory(
        {s: loader(s) for s in LABELS}, ds, {"train": ds}, output_path=str(tmp_path / "t"), **SMALL
    )
    assert calls == list(LABELS), "a complete checkpoint's model was loaded again"
    assert again.llc_mean.equals(out.llc_mean)


def test_changed_config_is_refused_before_anything_is_written(reference, tmp_path):
    """Another lr, or another list of checkpoints, against an existing root: refused, bytes untouched."""
    before = tree_hash(reference)
    with pytest.raises(StoreConfigMismatch, match=r"lr: stored=0.001, current=0.002"):
        run(str(reference), lr=2e-3)
    with pytest.raises(StoreConfigMismatch, match="labels"):
        run(str(reference), labels=(0, 10, 300))
    assert tree_hash(reference) == before
    with pytest.raises(ValueError, match="checkpoint label 'a/b'"):
        trajectory({"a/b": checkpoint(0)}, token_dataset(), {}, output_path="x", **SMALL)
    with pytest.raises(TypeError, match="'num_chain'"):
        run(str(tmp_path / "typo"), num_chain=2)
    assert not (tmp_path / "typo").exists()


def test_work_blocks_cut_the_flattened_checkpoint_chain_list():
    """Array task i of n takes a contiguous block of (label, chain) pairs, grouped by label."""
    sizes = [("a", 3), ("b", 3), ("c", 3)]
    assert work_blocks(sizes, None) == [("a", (0, 1, 2)), ("b", (0, 1, 2)), ("c", (0, 1, 2))]
    assert work_blocks(sizes, (0, 2)) == [("a", (0, 1, 2)), ("b", (0, 1))]
    assert work_blocks(sizes, (1, 2)) == [("b", (2,)), ("c", (0, 1, 2))]
    assert check_label(1000) == "1000" and check_label("step1000") == "step1000"


@pytest.mark.slow
def test_array_tasks_on_one_process_and_on_two_ranks_write_the_same_stores(reference, tmp_path):
    """Array task 1 of 2 in one process, then task 0 of 2 on 2 torchrun ranks: the reference's bytes.
    Between them the root is partial: aggregation refuses naming what is missing, or uses what is complete."""
    root = tmp_path / "tasks"
    run_single(root, {"array_task": [1, 2]}, module=JOB)  # (10, chain 2) and all of 200
    with pytest.raises(
        IncompleteStoreError, match=r"0: not started\n  10: incomplete: chain 0 \(0/6\), chain 1"
    ):
        aggregate_sweep(str(root))
    with pytest.warns(UserWarning, match="complete chains only"):
        part = aggregate_sweep(str(root), allow_partial=True)
    assert part.num_chains_used.values.tolist() == [0, 1, 3] and part.attrs["missing"] == ["0", "10"]
    assert np.isnan(part.llc_mean.values[0])
    finish(torchrun(2, root, {"array_task": [0, 2]}, module=JOB))  # all of 0 and (10, chains 0-1), sharded
    assert hashes(root) == hashes(reference)
    assert aggregate_sweep(str(root)).llc_per_chain.equals(aggregate_sweep(str(reference)).llc_per_chain)


@pytest.mark.slow
def test_killed_trajectory_resumes_to_the_uninterrupted_stores(tmp_path):
    """SIGKILL a 2-rank trajectory once its second checkpoint is under way; the rerun gives the same bytes."""
    opts = {"num_draws": 100}
    run(str(tmp_path / "clean"), **opts)
    root = tmp_path / "killed"
    proc = torchrun(2, root, opts, module=JOB)
    deadline = time.monotonic() + 120
    steps = np.zeros(3)
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(Exception):  # not created yet
            steps = zarr.open_array(str(root / "10.zarr" / "chain_steps_done"), mode="r")[...]
        if steps.sum() > 0:
            break
        time.sleep(0.05)
    kill_tree(proc)
    assert 0 < steps.sum() < 3 * 100, f"kill did not land mid-trajectory (progress {steps})"
    finish(torchrun(2, root, opts, module=JOB))
    assert hashes(root) == hashes(tmp_path / "clean")


def test_cli_trajectory_of_state_dict_files(tmp_path, capsys):
    """`distinterp trajectory CONFIG` over a glob of state dicts (natural order); each store equals
    `distinterp sample` of that file, records its settings (--from-store), and `aggregate ROOT` reads it."""
    from distinterp import toy
    from distinterp.jobs.cli import main
    from tests.test_cli import TINY

    for step in (1000, 20, 300):
        torch.save(toy.tiny_gpt2(vocab_size=3, seed=step).state_dict(), tmp_path / f"step{step}.pt")
    root = tmp_path / "traj"
    config = {
        **TINY,
        "model": {"name": "tiny-gpt2"},
        "checkpoints": {"state_dicts": str(tmp_path / "step*.pt")},
        "output_path": str(root),
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    assert main(["trajectory", str(tmp_path / "t.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["step20", "step300", "step1000"], lines
    alone = {**config, "model": {"name": "tiny-gpt2", "state_dict": str(tmp_path / "step300.pt")}}
    alone["output_path"] = str(tmp_path / "alone.zarr")
    del alone["checkpoints"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(alone))
    assert main(["sample", str(tmp_path / "s.yaml")]) == 0
    assert tree_hash(root / "step300.zarr") == tree_hash(tmp_path / "alone.zarr")
    assert main(["sample", "--from-store", str(root / "step300.zarr")]) == 0  # complete: reruns nothing
    assert tree_hash(root / "step300.zarr") == tree_hash(tmp_path / "alone.zarr")
    capsys.readouterr()
    assert main(["aggregate", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[0] == "step20"
    assert main(["trajectory", str(tmp_path / "t.yaml"), "--set", "sampler.lr=0.01"]) == 2
    assert "lr: stored=0.001, current=0.01" in capsys.readouterr().err


def test_report_of_a_trajectory_root_draws_the_llc_over_training(reference, tmp_path, capsys):
    """`distinterp report ROOT --log-step`: one figure (LLC per checkpoint, error bars), a table of stores."""
    from distinterp.jobs.cli import main
    from distinterp.jobs.sweep_report import trajectory_figure

    assert main(["report", str(reference), "--out", str(tmp_path / "rep"), "--log-step"]) == 0
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "trajectory.png").is_file()
    table = aggregate_sweep(str(reference))
    fig = trajectory_figure(table.assign(healthy=("checkpoint", [True, False, True])), log_step=True)
    assert fig.data["healthy"].tolist() == [True, False, True] and "Unhealthy: 10" in fig.caption
    np.testing.assert_array_equal(fig.data["step"], [0, 10, 200])


def test_a_version_1_root_still_aggregates_and_continues(reference, tmp_path):
    """A root written before records named their axes (version 1): aggregated as before, and a rerun with
    the same settings is accepted (compared in its own form), leaving its record as it was."""
    import shutil

    from distinterp.jobs.sweep import legacy

    root = tmp_path / "v1"
    shutil.copytree(reference, root)
    record = json.loads((root / RECORD).read_text())
    assert record["version"] == 2 and record["axes"] == [["checkpoint", ["0", "10", "200"]]]
    (root / RECORD).write_text(json.dumps(legacy(record)))
    old = aggregate_sweep(str(root))
    assert old.llc_per_chain.equals(aggregate_sweep(str(reference)).llc_per_chain)
    assert list(old.step.values) == [0, 10, 200]
    assert run(str(root)) is not None
    assert json.loads((root / RECORD).read_text()) == legacy(record)
