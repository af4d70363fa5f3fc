"""FSDP memory and speed: per-rank bytes of parameters + gradients + sampler state, and SGLD steps/s, for one
chain unsharded (fsdp_size=1) and sharded over 2 / 4 ranks (torchrun, gloo on CPU, nccl on GPU).

    python benchmarks/bench_fsdp.py [--ranks 1,2,4] [--model small] [--steps 20] [--json out.json]
    python benchmarks/bench_fsdp.py --smoke          # one 2-rank job of the smoke model (a test runs it)
    python benchmarks/bench_fsdp.py --largest        # GPUs: widest GPT-2 that steps at fsdp_size=1 vs all GPUs

Each layout runs in fresh processes that build the engine as sample() does (working_model, then one chain
of RMSprop-SGLD with localization, so the sampler state is a centre and a square average per parameter)
and time gradient_step + update after two warm-up steps. Bytes are counted from the tensors each rank
holds (local shards); on CUDA the peak allocated memory is reported too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def _nbytes(t: Any) -> int:
    from torch.distributed.tensor import DTensor

    if t is None:
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def measure(name: str, fsdp_size: int, steps: int) -> dict[str, Any]:
    """One chain at fsdp_size on this job's ranks: bytes this rank holds and steps/s (all ranks call it)."""
    import torch
    import torch.distributed as dist

    from distinterp.chain import ChainSetup, snapshot
    from distinterp.config import SamplerConfig
    from distinterp.loss import compute_per_token_loss
    from distinterp.parallel.distributed import runtime
    from distinterp.parallel.plan import Plan
    from distinterp.parallel.registry import engine_for

    rt = runtime()
    dev = rt.default_device()
    c = harness.MODELS[name]
    model = harness.build_model(name)
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
    harness.synchronize(dev.type)
    elapsed = time.perf_counter() - start
    out = {
        "param_bytes": params,
        "grad_bytes": grads,
        "sampler_state_bytes": state,
        "total_bytes": params + grads + state,
        "steps_per_s": steps / elapsed,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(dev) if torch.cuda.is_available() else None,
    }
    worst = rt.all_gather(out)  # the largest rank's figures (shards can be uneven)
    return {k: max(w[k] for w in worst) if out[k] is not None else None for k in out} | {
        "steps_per_s": min(w["steps_per_s"] for w in worst)
    }


def largest(fsdp_size: int, steps: int) -> dict[str, Any]:
    """GPUs: the widest 12-layer GPT-2 (growing n_embd) that runs a few steps at fsdp_size; best effort
    (an out-of-memory error on one rank can stall the others in a collective)."""
    import torch

    best: dict[str, Any] = {}
    for width in (768, 1024, 1536, 2048, 3072, 4096, 5120, 6144, 8192):
        name = f"gpt2-12x{width}"
        harness.MODELS[name] = dict(
            kind="gpt2", n_layer=12, n_embd=width, n_head=width // 64, vocab=50257, ctx=256, batch_size=8
        )
        try:
            r = measure(name, fsdp_size, steps)
        except torch.cuda.OutOfMemoryError:
            break
        best = {"model": name, "approx_params": 12 * 12 * width * width + 50257 * width, **r}
        torch.cuda.empty_cache()
    return best


def child(spec: dict[str, Any]) -> None:
    """Inside the measured processes: each requested fsdp_size in turn; rank 0 reports."""
    rows = []
    for size in spec["sizes"]:
        if spec["largest"]:
            rows.append({"fsdp_size": size, **largest(size, spec["steps"])})
        else:
            rows.append(
                {"fsdp_size": size, "model": spec["model"], **measure(spec["model"], size, spec["steps"])}
            )
    harness.report({"rows": rows})
    harness.finish()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts; fsdp_size = ranks")
    p.add_argument("--model", default="small", choices=list(harness.MODELS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="smoke model, 3 steps, one 2-rank job (fsdp 1 and 2)")
    p.add_argument("--largest", action="store_true", help="GPUs only: the widest model per layout")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    spec = {"model": args.model, "steps": args.steps, "largest": args.largest}
    if args.largest:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--largest needs CUDA GPUs")
        args.ranks = ",".join(map(str, sorted({1, torch.cuda.device_count()})))
    if args.smoke:
        spec.update(model="smoke", steps=3, sizes=[1, 2])
        rows = [{"ranks": 2, **r} for r in harness.run_child(__file__, spec, nproc=2, threads=1)["rows"]]
        unsharded, sharded = rows
        assert sharded["total_bytes"] < unsharded["total_bytes"], rows
    else:
        rows = []
        for n in map(int, args.ranks.split(",")):
            result = harness.run_child(__file__, {**spec, "sizes": [n]}, nproc=n)
            rows += [{"ranks": n, **r} for r in result["rows"]]
    harness.print_table("one chain: per-rank bytes (largest shard) and steps/s", rows)
    harness.write_json(args.json, {"fsdp": rows})


if __name__ == "__main__":
    main()
