"""Real torchrun (gloo, CPU): chain sharding writes the same store as one process; kill-and-rerun resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.test_sampling import tree_hash

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
PYTHONPATH = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
"""This checkout's package and tests, whichever distinterp is installed."""


def torchrun(
    nproc: int, out: Path, overrides: dict | None = None, module: str = "tests.jobs", **popen
) -> subprocess.Popen:
    """`python -m MODULE OUT JSON` on nproc real torchrun ranks (gloo, one thread each)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        str(out),
        json.dumps(overrides or {}),
    ]
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a job and all its workers at once, as a lost node would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def run_single(out: Path, overrides: dict | None = None, module: str = "tests.jobs") -> None:
    """The same job in one plain process."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run(
        [sys.executable, "-m", module, str(out), json.dumps(overrides or {})],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_world_size_does_not_change_the_store(tmp_path: Path) -> None:
    """1 process, 2 ranks and 3 ranks (chains 5: uneven) write byte-identical stores, dropout and metrics on."""
    opts = {"num_chains": 5, "dropout": 0.1, "save_metrics": True, "gradient_accumulation_steps": 2}
    run_single(tmp_path / "one.zarr", opts)
    procs = {n: torchrun(n, tmp_path / f"ranks{n}.zarr", opts) for n in (2, 3)}
    for p in procs.values():
        finish(p)
    reference = tree_hash(tmp_path / "one.zarr")
    for n in procs:
        assert tree_hash(tmp_path / f"ranks{n}.zarr") == reference, f"{n} ranks wrote a different store"


LONG = {"num_chains": 4, "num_draws": 400}
"""The kill tests' job: long enough that a kill lands mid-run."""


@pytest.fixture(scope="module")
def clean_long(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tree hash of LONG run uninterrupted in one process (the kill tests' reference, computed once)."""
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    run_single(out, LONG)
    return tree_hash(out)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, clean_long: str) -> None:
    """SIGKILL the whole 2-rank job mid-run (node loss), rerun the same command: byte-identical store."""
    opts = LONG
    out = tmp_path / "killed.zarr"
    proc = torchrun(2, out, opts)
    deadline = time.monotonic() + 180
    steps = np.zeros(4)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            steps = zarr.open_array(str(out / "chain_steps_done"), mode="r")[...]
        except Exception:  # noqa: BLE001 - not created yet
            steps = np.zeros(4)
        if steps.sum() > 0:
            break
        time.sleep(0.05)
    kill_tree(proc)
    assert 0 < steps.sum() < 4 * 400, f"kill did not land mid-run (progress {steps})"
    assert "completed" not in zarr.open_group(str(out), mode="r").attrs
    finish(torchrun(2, out, opts))
    assert tree_hash(out) == clean_long


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The torchrun workers (processes running tests.jobs) below a torchrun launcher."""
    pids = []
    for pid in descendants(proc.pid):
        with contextlib.suppress(OSError):
            if b"tests.jobs" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def test_one_rank_killed_mid_chain_resumes_from_its_checkpoint(tmp_path: Path, clean_long: str) -> None:
    """SIGKILL one rank once a chain has a checkpoint; the rerun continues that chain mid-way, same bytes."""
    opts = {**LONG, "checkpoint_every": 50}
    out = tmp_path / "killed.zarr"
    ckpts = tmp_path / "killed.zarr.checkpoints"
    proc = torchrun(2, out, opts)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not any(ckpts.glob("chain_*.pt")):
        time.sleep(0.02)
    workers = worker_pids(proc)
    assert workers and proc.poll() is None, "the job ended before any checkpoint was written"
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun tears the other down
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    steps = zarr.open_array(str(out / "chain_steps_done"), mode="r")[...]
    assert (steps < 400).any(), f"kill did not land mid-run (progress {steps})"
    log = finish(torchrun(2, out, opts))
    assert "continues from its checkpoint at step" in log, log[-3000:]
    assert tree_hash(out) == clean_long
    assert not ckpts.exists(), "checkpoints of a completed store are removed"
