"""Trajectory and calibration jobs: wall time of a 40-checkpoint trajectory and of a 3 x 3 calibration
grid on 1 vs 2 ranks (torchrun), and the calibration rule's known answers from the full default grid.

    python benchmarks/bench_trajectory.py [--json out.json] [--smoke] [--known-answers]

Each layout is a fresh process (torchrun for 2 ranks) that times its own trajectory() and calibrate()
calls, so start-up and imports are excluded. --smoke runs tiny sizes in seconds (a test runs it);
--known-answers runs calibrate() from the full default grid (30 cells) on the monomials, the bigram
(V=6) and a 3-layer deep linear network, and prints each estimate against the learning coefficient.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
        calibrate(model, ds, {"train": ds}, output_path=f"{base}/cal", grid=grid, **kwargs)
        runtime().barrier()
        seconds["calibration"] = time.perf_counter() - start
    harness.report(seconds)
    if tmp is not None:
        tmp.cleanup()


def measure(nproc: int, sizes: dict) -> dict[str, float]:
    """Seconds of trajectory() and of calibrate() in one fresh process or nproc-rank torchrun job."""
    return harness.run_child(__file__, {"sizes": sizes}, nproc=nproc, threads=1)


def known_answers(draws: int) -> list[dict]:
    """calibrate() from the full default grid on three problems with a known learning coefficient."""
    import numpy as np
    import torch

    from distinterp import toy
    from distinterp.jobs.calibrate import calibrate

    sys.path.insert(0, str(ROOT))
    from tests.test_known_answers import MONOMIAL_K, Monomials, monomial_loss

    torch.set_num_threads(1)
    ids = torch.zeros((64, 2), dtype=torch.int64)
    d = toy.BIGRAM_DEMO
    data = toy.markov_dataset(
        toy.markov_chain(d["V"], d["chain_seed"]), d["seq_len"], d["n_rows"], d["data_seed"]
    )
    widths, rank = [3, 2, 2, 3], 1
    problems = [
        (
            "monomials w1^2 + w2^4",
            Monomials(MONOMIAL_K),
            ids,
            monomial_loss,
            {},
            sum(1 / (2 * k) for k in MONOMIAL_K),
        ),
        ("bigram V=6, n_beta=1000", toy.bigram_mle(data, d["V"]), data, None, {"n_beta": 1000.0}, 15.0),
        (
            f"deep linear {widths} rank {rank}, n_beta=1000",
            toy.DeepLinearNetwork(widths, rank),
            ids,
            toy.dln_population_loss,
            {"n_beta": 1000.0},
            float(toy.dln_learning_coefficient(widths, rank)[0]),
        ),
    ]
    rows = []
    for name, model, data_, loss_fn, extra, lam in problems:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            cal = calibrate(
                model, data_, {}, loss_fn=loss_fn, output_path=f"{tmp}/cal", num_draws=draws, **extra
            )
            seconds = time.perf_counter() - start
        est = float(cal.estimate) if cal is not None else float("nan")
        rows.append(
            {
                "problem": name,
                "lambda": lam,
                "estimate": est,
                "relative_error": (est - lam) / lam if np.isfinite(est) else None,
                "best": {k: v for k, v in (cal.best or {}).items() if k in ("lr", "localization", "n_beta")},
                "reason": cal.reason if cal is not None else "",
                "seconds": seconds,
            }
        )
        print(
            f"{name:42s} lambda {lam:7.3f}  estimate {est:8.3f}  ({rows[-1]['relative_error']:+.1%})  "
            f"{rows[-1]['best']}  {seconds:.0f} s\n    {rows[-1]['reason']}",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
    p.add_argument("--known-answers", action="store_true", help="also calibrate the known answers (minutes)")
    p.add_argument("--draws", type=int, default=1000, help="draws per calibration cell for --known-answers")
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
    if args.known_answers:
        results["known_answers"] = known_answers(args.draws)
    harness.write_json(args.json, results)


if __name__ == "__main__":
    main()
