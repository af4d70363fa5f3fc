"""`distinterp-run` (python -m distinterp.jobs.launch): torchrun's arguments for any job, and Ctrl-C ends
with one line and exit 130 (plain torchrun adds its own traceback and exits 1; issue 19, item 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_cli import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_ctrl_c_under_distinterp_run_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    config = {**TINY, "model": {"name": "tiny-gpt2"}, "output_path": str(store)}
    config["sampler"] = {**TINY["sampler"], "num_draws": 4000}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "distinterp.jobs.launch", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.Popen(
        [*cmd, "-m", "distinterp", "sample", str(tmp_path / "c.yaml")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (store / "chain_steps_done" / "zarr.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # sampling
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip() and "SGLD steps" not in line]
    assert proc.returncode == 130, err
    assert lines == [
        "distinterp sample: interrupted; rerun the same command to continue (complete chains are kept)"
    ], err
