"""Benchmarks must not rot: every script's --smoke mode runs (tiny sizes, seconds) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKES = {
    # the bare loop, batched (equal, options), bf16 (devinterp children: bench_sampling --smoke by hand)
    "bench_sampling.py": ["--targets", "cpu_limit,equal,options,profile"],
    "bench_analyses.py": [],
    "bench_store.py": [],
    "bench_fsdp.py": [],  # one 2-rank torchrun job: fsdp_size 1 and 2, sharded holds less
    "accuracy_analyses.py": [],  # samples two tiny stores, runs every analysis in both packages
    "bench_trajectory.py": [],  # 1 vs 2 ranks: a trajectory of 3 checkpoints and a 2 x 2 calibration grid
    "known_answers.py": [],  # calibrate() + fixed settings on a monomial and an empirical regression (~10 s)
    "bench_checksum.py": [],  # sample() without / with the chunk checksum, and the codec alone
    "bench_sweep.py": [],  # a 2-cell sweep and its aggregation, local, 1 rank (~10 s)
}
SLOW = {"bench_sampling.py", "bench_fsdp.py", "accuracy_analyses.py", "bench_trajectory.py", "bench_sweep.py"}


@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in SMOKES]
)
def test_benchmark_smoke_mode_runs(script: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--json", str(out), *SMOKES[script]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert json.loads(out.read_text())


def test_gpu_script_is_valid_bash(tmp_path: Path) -> None:
    """benchmarks/gpu.sh parses, and where CUDA is missing says so and exits 3 before running anything."""
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    import torch

    if not torch.cuda.is_available():
        env = {**os.environ, "OUT": str(tmp_path / "out")}
        res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 3 and "CUDA is not available" in res.stderr


def test_device_scripts_are_valid_bash_and_fail_fast_without_wheels(tmp_path: Path) -> None:
    """scripts/device_check.sh and device_wheels.sh parse; without wheels the check stops at once (rc 2),
    saying what to run, and still writes its summary JSON."""
    for name in ("device_check.sh", "device_wheels.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)]).returncode == 0, name
    (tmp_path / "none").mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WHEELS": str(tmp_path / "none")}
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2 and "run 'bash scripts/device_wheels.sh'" in res.stdout, res.stdout
    summary = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert summary["parts"]["install"]["rc"] == 2


def test_known_answers_data_seeds_sample_with_disjoint_chain_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each data seed's chains draw their own noise (chain c seeds with init_seed + c), so the mean over data
    seeds averages the sampler's noise too; data seed 0 keeps devinterp's init_seed 100."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import known_answers as ka

    case = next(c for c in ka.cases(1000, 5, smoke=True) if c.kind == "empirical")
    seeds = [ka.shared_settings(case, s)["init_seed"] for s in range(5)]
    assert seeds[0] == 100
    chains = [set(range(s, s + 64)) for s in seeds]  # up to 64 chains a cell
    assert all(a.isdisjoint(b) for i, a in enumerate(chains) for b in chains[i + 1 :])


def test_known_answers_references_keep_a_merged_rows_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """--references-from over rows merged from two runs: a row that carries its references keeps them, so
    only the new rows pay for the float64 reference."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import known_answers as ka

    case = next(c for c in ka.cases(1000, 1, smoke=True) if c.kind == "empirical")
    row = {"case": case.name, "seed": 0, "chosen": {"localization": 1.0}, "reference": {"1": {"mean": 4.2}}}
    before = json.dumps(row, sort_keys=True)
    ka.add_references([row], [case], [1.0], smoke=True)
    assert json.dumps(row, sort_keys=True) == before
