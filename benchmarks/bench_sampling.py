"""SGLD sampling throughput: steps/s per chain and in total, 1 rank vs 2 ranks (torchrun), and devinterp 2.x.

    python benchmarks/bench_sampling.py [--json out.json] [--configs tiny,wide] [--draws N]

Each measurement is a fresh process (torchrun for 2 ranks) that times its own sample() call with
time.perf_counter, so interpreter start-up and imports are excluded; compare ratios from one run.
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

CONFIGS = {
    "tiny": dict(n_layer=1, n_embd=16, n_head=2, vocab=32, ctx=16, batch_size=8),
    "wide": dict(n_layer=4, n_embd=256, n_head=4, vocab=512, ctx=128, batch_size=8),
}


def child(cfg_name: str, engine: str, out: str, num_chains: int, num_draws: int) -> None:
    """Runs inside the measured process: build the model/data, time sample(), print one JSON line."""
    import warnings

    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    c = CONFIGS[cfg_name]
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=c["n_layer"],
        n_embd=c["n_embd"],
        n_head=c["n_head"],
        vocab_size=c["vocab"],
        n_positions=c["ctx"] + 1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, c["vocab"], (256, c["ctx"] + 1), generator=torch.Generator().manual_seed(1))
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    kwargs = dict(
        lr=1e-4,
        n_beta=10.0,
        num_chains=num_chains,
        num_draws=num_draws,
        batch_size=c["batch_size"],
        num_init_loss_batches=2,
        batches_per_draw=1,
    )
    if engine == "devinterp":
        from devinterp.slt.sampling import sample

        ds = ds.with_format("torch")
        kwargs["device"] = "cpu"
    else:
        from distinterp import sample
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample(model, ds, {"train": ds}, output_path=out, **kwargs)
    elapsed = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"seconds": elapsed}), flush=True)


def measure(cfg_name: str, engine: str, nproc: int, threads: int, num_chains: int, num_draws: int) -> float:
    """Seconds of one sample() call in a fresh process (or torchrun job), `threads` torch threads per rank."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "s.zarr")
        script = [
            str(Path(__file__).resolve()),
            "--child",
            cfg_name,
            engine,
            out,
            str(num_chains),
            str(num_draws),
        ]
        if nproc > 1:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={nproc}",
                *script,
            ]
        else:
            cmd = [sys.executable, *script]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env["OMP_NUM_THREADS"] = str(threads)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode != 0 or not lines:
            raise RuntimeError(
                f"{engine} {cfg_name} x{nproc} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
            )
        return float(json.loads(lines[0][7:])["seconds"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,wide")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--json", help="write the rows as JSON here")
    args = p.parse_args()
    try:
        import devinterp  # noqa: F401

        has_devinterp = True
    except ImportError:
        has_devinterp = False
    rows = []
    for cfg_name in args.configs.split(","):
        # Every rank gets cores // ranks threads; the 1-thread single rank shows per-core chain scaling.
        cores = os.cpu_count() or 1
        runs = [("distinterp", 1, cores), ("distinterp", 1, 1), ("distinterp", 2, max(1, cores // 2))]
        runs += [("devinterp", 1, cores)] if has_devinterp else []
        times = {}
        for engine, nproc, threads in runs:
            seconds = measure(cfg_name, engine, nproc, threads, args.chains, args.draws)
            if (engine, nproc) not in times or threads > 1:
                times[(engine, nproc)] = seconds
            steps = args.chains * args.draws  # burn-in 0, one step between draws
            per_chain = steps / args.chains / (seconds / args.chains * nproc)
            rows.append(
                dict(
                    config=cfg_name,
                    engine=engine,
                    ranks=nproc,
                    threads_per_rank=threads,
                    seconds=round(seconds, 3),
                    steps_per_s_total=round(steps / seconds, 2),
                    steps_per_s_per_chain=round(per_chain, 2),
                )
            )
        base = times[("distinterp", 1)]
        for r in rows:
            if r["config"] == cfg_name:
                r["speedup_vs_distinterp_1rank"] = round(base / r["seconds"], 2)
                if has_devinterp:
                    r["speedup_vs_devinterp"] = round(times[("devinterp", 1)] / r["seconds"], 2)
    cols = list(rows[0])
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r.get(c, ''):>14}" for c in cols))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"chains": args.chains, "draws": args.draws, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
