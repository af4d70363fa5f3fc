"""FSDP memory and speed: per-rank bytes of parameters + gradients + sampler state, and SGLD steps/s, for one
chain unsharded (fsdp_size=1) and sharded over 2 / 4 ranks (torchrun, gloo on CPU, nccl on GPU).

    python benchmarks/bench_fsdp.py [--ranks 1,2,4] [--config wide] [--steps 20] [--json out.json]
    python benchmarks/bench_fsdp.py --smoke          # a 2-rank run of the tiny config (a test runs it)
    python benchmarks/bench_fsdp.py --largest        # GPU: widest GPT-2 that steps at fsdp_size=1 vs all GPUs

Each layout runs in fresh processes that build the engine as sample() does (working_model, then one chain
of RMSprop-SGLD with localization, so the sampler state is a centre and a square average per parameter)
and time gradient_step + update after two warm-up steps. Bytes are counted from the tensors each rank
holds (local shards); on CUDA the peak allocated memory is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS = {
    "tiny": dict(n_layer=2, n_embd=32, n_head=2, vocab=64, ctx=16, batch_size=4),
    "wide": dict(n_layer=4, n_embd=256, n_head=4, vocab=2048, ctx=64, batch_size=8),
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, ctx=256, batch_size=8),
}
ROOT = Path(__file__).resolve().parents[1]


def _model(c: dict[str, int]) -> Any:
    import warnings

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

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
        return GPT2LMHeadModel(cfg)


def _nbytes(t: Any) -> int:
    from torch.distributed.tensor import DTensor

    if t is None:
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def measure(c: dict[str, int], fsdp_size: int, steps: int) -> dict[str, Any]:
    """One chain at fsdp_size on this job's ranks: bytes this rank holds and steps/s (all ranks call it)."""
    import torch
    import torch.distributed as dist

    from distinterp.chain import ChainSetup, snapshot
    from distinterp.config import SamplerConfig
    from distinterp.loss import compute_per_token_loss
    from distinterp.parallel.distributed import runtime
    from distinterp.parallel.engine import engine_for
    from distinterp.parallel.plan import Plan

    rt = runtime()
    dev = rt.default_device()
    model = _model(c)
    config = SamplerConfig(
        lr=1e-5,
        n_beta=10.0,
        num_chains=1,
        num_draws=steps + 2,
        batch_size=c["batch_size"],
        localization=10.0,
        sampling_method="rmsprop_sgld",
    )
    plan = Plan.build(rt, 1, fsdp_size=fsdp_size)
    engine = engine_for(plan)
    masks = dict.fromkeys(n for n, _ in model.named_parameters())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(dev)
    working = engine.working_model(model, masks, config, dev, plan)
    ids = torch.randint(
        0, c["vocab"], (4 * c["batch_size"], c["ctx"] + 1), generator=torch.Generator().manual_seed(1)
    )
    setup = ChainSetup(
        model=working,
        start_state=snapshot(working),
        masks=masks,
        config=config,
        sampling_ids=ids,
        observables=[],
        loss_fn=compute_per_token_loss,
        device=dev,
        noise="blocked",
    )
    eng = engine(setup, (0,))
    eng.begin([None])
    for step in range(2):
        eng.gradient_step(step)
        eng.update()
    eng.gradient_step(2)
    named = dict(working.named_parameters())
    params = sum(_nbytes(p) for p in named.values())
    grads = sum(_nbytes(p.grad) for p in named.values())
    state = sum(_nbytes(s.center) + _nbytes(s.square_avg) + _nbytes(s.mask) for s in eng.slots)
    eng.update()
    if rt.is_distributed:
        dist.barrier()
    start = time.perf_counter()
    for step in range(3, 3 + steps):
        eng.gradient_step(step)
        eng.update()
    if torch.cuda.is_available():
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - start
    out = {
        "params": params,
        "grads": grads,
        "sampler_state": state,
        "total": params + grads + state,
        "steps_per_s": steps / elapsed,
        "peak_cuda": torch.cuda.max_memory_allocated(dev) if torch.cuda.is_available() else None,
    }
    worst = rt.all_gather(out)  # the largest rank's figures (shards can be uneven)
    return {k: max(w[k] for w in worst) if out[k] is not None else None for k in out} | {
        "steps_per_s": min(w["steps_per_s"] for w in worst)
    }


def largest(fsdp_size: int, steps: int) -> dict[str, Any]:
    """GPU: the widest GPT-2 (12 layers, growing n_embd) that runs a few steps at fsdp_size; best effort
    (an out-of-memory error on one rank can stall the others in a collective)."""
    import torch

    best: dict[str, Any] = {}
    for width in (768, 1024, 1536, 2048, 3072, 4096, 5120, 6144, 8192):
        c = {**CONFIGS["gpt2"], "n_embd": width, "n_head": width // 64}
        try:
            r = measure(c, fsdp_size, steps)
        except torch.cuda.OutOfMemoryError:
            break
        n_params = 12 * 12 * width * width + c["vocab"] * width
        best = {"n_embd": width, "approx_params": n_params, **r}
        torch.cuda.empty_cache()
    return best


def worker(args: argparse.Namespace) -> None:
    """Inside the measured processes: each requested layout, one JSON line from rank 0."""
    from distinterp.parallel.distributed import runtime

    rt = runtime()
    results = []
    for size in args.sizes:
        if args.largest:
            results.append({"fsdp_size": size, **largest(size, args.steps)})
        else:
            results.append({"fsdp_size": size, **measure(CONFIGS[args.config], size, args.steps)})
    if rt.is_coordinator:
        print("RESULT " + json.dumps({"ranks": rt.world_size, "results": results}), flush=True)


def launch(nproc: int, sizes: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the worker on nproc ranks (a plain process for 1) and return its results."""
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [__file__, "--worker", "--config", args.config, "--steps", str(args.steps)]
    cmd += ["--sizes", ",".join(map(str, sizes))] + (["--largest"] if args.largest else [])
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return [{"ranks": nproc, **r} for r in json.loads(lines[-1][len("RESULT ") :])["results"]]


def table(rows: list[dict[str, Any]]) -> str:
    mib = 2**20
    out = [
        "| ranks | fsdp_size | n_embd | params MiB | grads MiB | sampler state MiB | total MiB/rank "
        "| peak CUDA MiB | steps/s |"
    ]
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_cuda'] / mib:.0f}" if r.get("peak_cuda") else "-"
        out.append(
            f"| {r['ranks']} | {r['fsdp_size']} | {r.get('n_embd', '-')} | {r['params'] / mib:.2f} | "
            f"{r['grads'] / mib:.2f} | {r['sampler_state'] / mib:.2f} | {r['total'] / mib:.2f} | {peak} | "
            f"{r['steps_per_s']:.1f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts; fsdp_size = ranks")
    p.add_argument("--config", default="wide", choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="tiny config, 3 steps, one 2-rank job (fsdp 1 and 2)")
    p.add_argument("--largest", action="store_true", help="GPU only: widest model per layout")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="1", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.worker:
        worker(args)
        return
    if args.largest:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--largest needs CUDA GPUs")
        args.ranks = ",".join(map(str, sorted({1, torch.cuda.device_count()})))
    if args.smoke:
        args.config, args.steps = "tiny", 3
        rows = launch(2, [1, 2], args)
        unsharded, sharded = rows
        assert sharded["total"] < unsharded["total"], rows
    else:
        rows = [row for n in map(int, args.ranks.split(",")) for row in launch(n, [n], args)]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
