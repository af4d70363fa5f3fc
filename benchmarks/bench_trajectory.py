"""Trajectory and calibration jobs: wall time of a 40-checkpoint trajectory and of a 3 x 3 calibration
grid on 1 vs 2 ranks (torchrun), and the calibration rule's known answers from the full default grid.

    python benchmarks/bench_trajectory.py [--json out.json] [--smoke] [--known-answers]

Each timing is a fresh process (torchrun for 2 ranks) that times its own trajectory()/calibrate() call,
so start-up and imports are excluded. --smoke runs tiny sizes in seconds (a test runs it);
--known-answers runs calibrate() from the full default grid (30 cells) on the monomials, the bigram
(V=6) and a 3-layer deep linear network, and prints each estimate against the learning coefficient.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(checkpoints=40, chains=4, draws=50, grid=3)
SMOKE = dict(checkpoints=3, chains=2, draws=4, grid=2)


def child(kind: str, root: str, sizes: dict) -> None:
    """Runs inside the measured process: a tiny GPT-2 trajectory or calibration, timed; one JSON line."""
    import warnings

    import torch
    from datasets import Dataset

    from distinterp import toy
    from distinterp.jobs.calibrate import calibrate
    from distinterp.jobs.trajectory import trajectory

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

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "trajectory":
            ckpts = {
                step: (lambda s=step: toy.tiny_gpt2(32, 1, s, n_positions=32))
                for step in range(sizes["checkpoints"])
            }
            trajectory(ckpts, ds, {"train": ds}, output_path=root, lr=1e-3, **kwargs)
        else:
            n = sizes["grid"]
            grid = {"lr": [1e-4, 1e-3, 1e-2][:n], "localization": [0.0, 10.0, 100.0][:n]}
            calibrate(
                toy.tiny_gpt2(32, 1, 0, n_positions=32),
                ds,
                {"train": ds},
                output_path=root,
                grid=grid,
                **kwargs,
            )
    elapsed = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"seconds": elapsed}), flush=True)


def measure(kind: str, nproc: int, sizes: dict) -> float:
    """Seconds of one trajectory()/calibrate() call in a fresh process or an nproc-rank torchrun job."""
    with tempfile.TemporaryDirectory() as tmp:
        script = [str(Path(__file__).resolve()), "--child", kind, str(Path(tmp) / "root"), json.dumps(sizes)]
        launch = [sys.executable]
        if nproc > 1:
            launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        if nproc == 1:
            env.pop("WORLD_SIZE", None)
        res = subprocess.run([*launch, *script], env=env, capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(f"{kind} on {nproc} rank(s) failed:\n{res.stdout[-2000:]}{res.stderr[-4000:]}")
        line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
        return float(json.loads(line.removeprefix("RESULT "))["seconds"])


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
    p.add_argument("--child", nargs=3, metavar=("KIND", "ROOT", "SIZES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]))
        return
    sizes = SMOKE if args.smoke else FULL
    results: dict = {"sizes": sizes, "timings": []}
    print(f"sizes {sizes}")
    for kind in ("trajectory", "calibration"):
        times = {n: measure(kind, n, sizes) for n in (1, 2)}
        what = (
            f"{sizes['checkpoints']} checkpoints"
            if kind == "trajectory"
            else f"{sizes['grid']}x{sizes['grid']} grid"
        )
        print(
            f"{kind:12s} {what:16s} 1 rank {times[1]:7.2f} s   2 ranks {times[2]:7.2f} s   speed-up {times[1] / times[2]:.2f}x"
        )
        results["timings"].append(
            {"kind": kind, "what": what, "seconds_1_rank": times[1], "seconds_2_ranks": times[2]}
        )
    if args.known_answers:
        results["known_answers"] = known_answers(args.draws)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
