"""A real one-node Slurm runs launch/: an array of 2-rank torchrun tasks writing one store, then the
aggregate job chained with --dependency=afterok. The store equals a single-process run byte for byte."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from distinterp.analyses.llc import compute_llc
from distinterp.store import Location, open_tree
from tests.fixtures.slurm import SlurmCluster
from tests.test_sampling import tree_hash

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
CONFIG = {
    "model": {"source": "builtin", "name": "bigram"},
    "dataset": {"source": "builtin", "name": "markov", "vocab_size": 6, "seq_len": 17, "num_rows": 64},
    "sampler": {
        "lr": 1e-3,
        "n_beta": 100.0,
        "num_chains": 4,
        "num_draws": 20,
        "batch_size": 4,
        "num_init_loss_batches": 2,
    },
    "analyses": [],
}


def _time(record: dict[str, str], field: str) -> datetime:
    return datetime.fromisoformat(record[field])


@pytest.mark.slurm
@pytest.mark.distributed
def test_array_then_aggregate_gives_the_single_process_store(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """launch/submit.sh: 2 array tasks (each 2 torchrun ranks, 2 of the 4 chains, started together, so both
    create the store) and the dependent aggregate job; the finished store and LLC equal one process's."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_path": str(tmp_path / "array.zarr")}))
    env = {
        **slurm_cluster.env,
        "PYTHON": sys.executable,
        "NPROC_PER_NODE": "2",
        "OMP_NUM_THREADS": "1",
        "AGGREGATE_OUTPUT": str(tmp_path / "llc.zarr"),
        "SAMPLE_SBATCH_ARGS": "--cpus-per-task=1",
    }
    submitted = subprocess.run(
        ["bash", str(LAUNCH / "submit.sh"), str(config), "2"],
        cwd=slurm_cluster.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    array_job = re.search(r"sample array\s+(\d+)", submitted.stdout).group(1)  # type: ignore[union-attr]
    aggregate_job = re.search(r"aggregate\s+(\d+)", submitted.stdout).group(1)  # type: ignore[union-attr]

    # Meanwhile, the same config in one process, without Slurm or torchrun.
    single_env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    argv = [sys.executable, "-m", "distinterp", "sample", str(config)]
    single = subprocess.Popen(
        [*argv, "--set", f"output_path={tmp_path / 'single.zarr'}"],
        cwd=tmp_path,
        env=single_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = single.communicate(timeout=180)
    finally:
        if single.poll() is None:
            single.kill()
            single.communicate(timeout=30)
    assert single.returncode == 0, out[-4000:]

    states = slurm_cluster.wait([array_job, aggregate_job], timeout=180, check=True)
    assert sorted(states) == sorted([aggregate_job, f"{array_job}_0", f"{array_job}_1"])

    tasks = slurm_cluster.jobs(array_job)
    (aggregate,) = slurm_cluster.jobs(aggregate_job)
    starts = [_time(t, "StartTime") for t in tasks]
    ends = [_time(t, "EndTime") for t in tasks]
    assert max(starts) <= min(ends), "the array tasks did not run at the same time"
    assert _time(aggregate, "StartTime") >= max(ends), "the aggregate job started before the array ended"

    store = tmp_path / "array.zarr"
    ds = open_tree(Location(str(store))).dataset
    assert ds.attrs["completed"] == 1
    assert (ds.chain_steps_done.values == 20).all()
    assert tree_hash(store) == tree_hash(tmp_path / "single.zarr")

    llc = xr.open_zarr(tmp_path / "llc.zarr", consolidated=False)
    expected = compute_llc(open_tree(Location(str(tmp_path / "single.zarr"))))
    np.testing.assert_array_equal(llc.llc_per_chain.values, expected.llc_per_chain.values)
    for task in tasks:
        log = Path(task["StdOut"]).read_text()
        assert f"array task {task['ArrayTaskId']} of 2" in log, log[-2000:]


def test_launch_scripts_are_valid_bash() -> None:
    """Every launch/ script parses (bash -n); shellcheck too where it is installed."""
    scripts = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert {p.name for p in scripts} >= {
        "torchrun.sh",
        "srun_multinode.sh",
        "sample_array.sbatch",
        "aggregate.sbatch",
        "submit.sh",
    }
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.slurm
def test_requeued_task_continues_mid_chain(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """scontrol requeue of a running array task (as preemption does): the task runs again, its chain
    continues from its checkpoint, and the store equals an uninterrupted single-process run."""
    sampler = {**CONFIG["sampler"], "num_chains": 2, "num_draws": 3000}
    config = tmp_path / "run.yaml"
    store = tmp_path / "requeued.zarr"
    config.write_text(
        yaml.safe_dump({**CONFIG, "sampler": sampler, "checkpoint_every": 50, "output_path": str(store)})
    )
    env = {"PYTHON": sys.executable, "NPROC_PER_NODE": "1", "OMP_NUM_THREADS": "1", "LAUNCH_DIR": str(LAUNCH)}
    job = slurm_cluster.sbatch(
        LAUNCH / "sample_array.sbatch",
        "--array=0-1",
        "--cpus-per-task=1",
        f"--output={tmp_path}/task-%A_%a.out",
        env=env,
        script_args=[str(config)],
    )
    checkpoint = tmp_path / "requeued.zarr.checkpoints" / "chain_0.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert time.monotonic() < deadline, slurm_cluster.job_logs([job])
        time.sleep(0.05)
    slurm_cluster.requeue(f"{job}_0")

    single_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "distinterp",
            "sample",
            str(config),
            "--set",
            f"output_path={tmp_path / 'one.zarr'}",
        ],
        env={**single_env, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-4000:]

    slurm_cluster.wait([job], timeout=300, check=True)
    log = next(tmp_path.glob("task-*_0.out")).read_text()
    assert "restart 1" in log and "chain 0 continues from its checkpoint at step" in log, log[-3000:]
    assert tree_hash(store) == tree_hash(tmp_path / "one.zarr")
