"""Trajectory and calibration jobs: wall time of a 40-checkpoint trajectory and of a 3 x 3 calibration
grid on 1 vs 2 ranks (torchrun). The calibration rule's known answers are benchmarks/known_answers.py.

    python benchmarks/bench_trajectory.py [--json out.json] [--smoke]

Each layout is a fresh process (torchrun for 2 ranks) that times its own trajectory() and calibrate()
calls, so start-up and imports are excluded. --smoke runs tiny sizes in seconds (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(checkpoints=40, chains=4, draws=50, grid=3)
SMOKE = dict(checkpoints=3, chains=2, draws=4, grid=2)


def child(spec: dict) -> None:
    """Runs inside the measured process: a tiny GPT-2 trajectory, then a calibration grid, each timed."""
    import warnings

    import torch
    from datasets import Dataset

    from distinterp import toy
    from distinterp.jobs.calibrate import calibrate
    from distinterp.jobs.trajectory import trajectory
    from distinterp.parallel.distributed import runtime

    sizes = spec["sizes"]
    tmp = tempfile.TemporaryDirectory() if int(os.environ.get("RANK", "0")) == 0 else None
    base = runtime().broadcast(tmp.name if tmp else None)
    ids = torch.randint(0, 32, (64, 17), generator=torch.Generator().manual_seed(1))
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    kwargs = dict(
        n_beta=10.0,
        num_chains=sizes["chains"],
        num_draws=sizes["draws"],
        batch_size=8,
        num_init_loss_batches=2,
        batches_per_draw=1,
    )
    toy.tiny_gpt2(32, 1, 0, n_positions=32)  # imports (transformers, arviz) before the clock starts
    import arviz_stats.base  # noqa: F401

    seconds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        ckpts = {
            s: (lambda s=s: toy.tiny_gpt2(32, 1, s, n_positions=32)) for s in range(sizes["checkpoints"])
        }
        trajectory(ckpts, ds, {"train": ds}, output_path=f"{base}/traj", lr=1e-3, **kwargs)
        runtime().barrier()
        seconds["trajectory"] = time.perf_counter() - start
        n = sizes["grid"]
        grid = {"lr": [1e-4, 1e-3, 1e-2][:n], "localization": [0.0, 10.0, 100.0][:n]}
        start = time.perf_counter()
        model = toy.tiny_gpt2(32, 1, 0, n_positions=32)
        calibrate(
            model, ds, {"train": ds}, output_path=f"{base}/cal", grid=grid, scale_draws=False, **kwargs
        )  # fixed draws per cell: this times layouts, not the rule (known_answers.py measures that)
        runtime().barrier()
        seconds["calibration"] = time.perf_counter() - start
    harness.report(seconds)
    if tmp is not None:
        tmp.cleanup()
    harness.finish()


def measure(nproc: int, sizes: dict) -> dict[str, float]:
    """Seconds of trajectory() and of calibrate() in one fresh process or nproc-rank torchrun job."""
    return harness.run_child(__file__, {"sizes": sizes}, nproc=nproc, threads=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    sizes = SMOKE if args.smoke else FULL
    results: dict = {"sizes": sizes, "timings": []}
    print(f"sizes {sizes}")
    times = {n: measure(n, sizes) for n in (1, 2)}
    for kind in ("trajectory", "calibration"):
        one, two = times[1][kind], times[2][kind]
        what = (
            f"{sizes['checkpoints']} checkpoints"
            if kind == "trajectory"
            else f"{sizes['grid']}x{sizes['grid']} grid"
        )
        print(f"{kind:12s} {what:16s} 1 rank {one:7.2f} s   2 ranks {two:7.2f} s   speed-up {one / two:.2f}x")
        results["timings"].append({"kind": kind, "what": what, "seconds_1_rank": one, "seconds_2_ranks": two})
    harness.write_json(args.json, results)


if __name__ == "__main__":
    main()
