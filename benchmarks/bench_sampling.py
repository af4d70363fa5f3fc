"""SGLD sampling speed: each target of issue #10 as a ratio measured side by side in one run.

    python benchmarks/bench_sampling.py [--targets cpu_limit,cpu_overhead,cpu_ranks] [--device cpu]
        [--draws N] [--json out.json] [--smoke]

Targets (each a table; two observables, one step between draws, burn-in 0):
  cpu_limit     distinterp's whole sample() per chain-step against the physical limit: a bare PyTorch loop
                doing the same forward + backward + SGLD update + observable forwards (mid: GPT-2 4x128, ctx 64),
                alternated 3 times in one process, fastest of each
  cpu_overhead  whole sample() of devinterp 2.0.1 / distinterp, store creation and start-up included (tiny 2x64)
  cpu_ranks     2 ranks x 1 thread against 1 rank x 1 thread: chain-parallel efficiency (mid)
  batched       8 chains with chains_per_batch=8 against the same 8 chains one at a time (small: 2x256, ctx 128)
  devinterp     devinterp 2.0.1 against distinterp with the best options (pythia14m-sized, 8 chains)
  options       compile=True and autocast_dtype="bfloat16" each against plain, K=8 (small)
  profile       where the time of one sample() goes: wall time of each part of the inner loop, timed around the
                engines' and recorders' methods (device synchronised around each part), as % of the call
                (CPU: tiny and mid, 1 thread, one chain at a time; CUDA: small, K=1 and K=8)
  equal         not a speed: 3 chains with chains_per_batch=3 against one at a time on --device, the largest
                |difference| of the recorded losses (fails above 1e-3: the per-chain generators' streams)
Each measurement is a fresh process timing its own sample() call (imports excluded). --smoke runs every
target in this process on a 1-layer model for a few steps (seconds; checks the scripts, not the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

CPU_TARGETS = ("cpu_limit", "cpu_overhead", "cpu_ranks", "profile")
GPU_TARGETS = ("equal", "batched", "devinterp", "options", "profile")
PROFILE_PARTS = {
    "forward + backward": ("engine", "gradient_step"),
    "SGLD update": ("engine", "update"),
    "observable forwards": ("engine", "observe"),
    "init loss": ("engine", "init_loss"),
    "recorder, store writes": ("recorder", "step", "metrics", "draw", "end_step", "init_loss"),
}
"""The parts of the profile target: the methods whose wall time each part sums."""
SMOKE_SPEC = dict(model="smoke", chains=2, draws=3)


def sample_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    c = harness.MODELS[spec["model"]]
    return dict(
        lr=1e-4,
        n_beta=10.0,
        num_chains=spec["chains"],
        num_draws=spec["draws"],
        batch_size=c["batch_size"],
        num_init_loss_batches=2,
        batches_per_draw=1,
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement: build model and data, time sample() (or the bare loop), return seconds."""
    import warnings

    import torch
    from datasets import Dataset

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model = harness.build_model(spec["model"])
    ids = harness.token_rows(spec["model"], 256, seed=1)
    probe = harness.token_rows(spec["model"], 64, seed=2)
    device = spec.get("device", "cpu")
    kwargs = sample_kwargs(spec)
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    pr = Dataset.from_dict({"input_ids": probe.tolist()})
    if spec["engine"] == "interleaved":
        return interleaved(model, ds, pr, ids, probe, kwargs, device, spec["rounds"])
    if spec["engine"] == "profile":
        return profile(model, ds, pr, kwargs, device, spec.get("k", 1))
    if spec["engine"] == "devinterp":
        from devinterp.slt.sampling import sample

        ds, pr = ds.with_format("torch"), pr.with_format("torch")
    else:
        from distinterp import sample

        kwargs.update(
            chains_per_batch=spec.get("k", 1),
            compile=spec.get("compile", False),
            autocast_dtype=spec.get("autocast"),
        )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = spec.get("out") or f"{tmp}/s.zarr"  # ranks share the parent's path
        harness.synchronize(device)
        start = time.perf_counter()
        sample(model, ds, {"train": ds, "probe": pr}, output_path=out, device=device, **kwargs)
        harness.synchronize(device)
        return {"seconds": time.perf_counter() - start}


def interleaved(
    model: Any, ds: Any, pr: Any, ids: Any, probe: Any, kwargs: dict[str, Any], device: str, rounds: int
) -> dict[str, float]:
    """Fastest of `rounds` alternated runs of sample() and of the bare loop, in seconds."""
    import copy
    import warnings

    from distinterp import sample

    best = {"sample": float("inf"), "limit": float("inf")}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            sample(
                model, ds, {"train": ds, "probe": pr}, output_path=f"{tmp}/s.zarr", device=device, **kwargs
            )
            harness.synchronize(device)
            best["sample"] = min(best["sample"], time.perf_counter() - start)
        best["limit"] = min(best["limit"], bare_loop(copy.deepcopy(model), ids, probe, kwargs, device))
    return best


def profile(model: Any, ds: Any, pr: Any, kwargs: dict[str, Any], device: str, k: int) -> dict[str, Any]:
    """One timed sample() with each PROFILE_PARTS method wrapped in a device-synchronised timer."""
    import functools
    import warnings

    from distinterp import sample
    from distinterp.parallel.batched import BatchedEngine
    from distinterp.parallel.serial import SerialEngine
    from distinterp.store import ChainRecorder

    owners = {"engine": (SerialEngine, BatchedEngine), "recorder": (ChainRecorder,)}
    spent = dict.fromkeys(PROFILE_PARTS, 0.0)
    saved = []

    def timed(part: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            harness.synchronize(device)
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                harness.synchronize(device)
                spent[part] += time.perf_counter() - start

        return wrapper

    for part, (owner, *methods) in PROFILE_PARTS.items():
        for cls in owners[owner]:
            for m in methods:
                if m in vars(cls):  # each class's own method, once (no double count through inheritance)
                    saved.append((cls, m, vars(cls)[m]))
                    setattr(cls, m, timed(part, vars(cls)[m]))
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            harness.synchronize(device)
            start = time.perf_counter()
            sample(
                model,
                ds,
                {"train": ds, "probe": pr},
                output_path=f"{tmp}/s.zarr",
                device=device,
                chains_per_batch=k,
                **kwargs,
            )
            harness.synchronize(device)
            total = time.perf_counter() - start
    finally:
        for cls, m, fn in saved:
            setattr(cls, m, fn)
    parts = {p: round(100 * t / total, 1) for p, t in spent.items()}
    parts["everything else (set-up, store creation, Python)"] = round(100 - sum(parts.values()), 1)
    return {"seconds": total, "parts": parts}


def bare_loop(model: Any, ids: Any, probe: Any, kwargs: dict[str, Any], device: str) -> float:
    """The physical limit: the same forwards, backwards, updates and observable forwards, nothing else."""
    import torch
    import torch.nn.functional as F

    model = model.to(device).train()
    params = list(model.parameters())
    start_state = [p.detach().clone() for p in params]
    B, lr, n_beta = kwargs["batch_size"], kwargs["lr"], kwargs["n_beta"]
    train_obs, probe_obs = ids[:B].to(device), probe[:B].to(device)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    harness.synchronize(device)
    start = time.perf_counter()
    for chain in range(kwargs["num_chains"]):
        torch.manual_seed(chain)
        with torch.no_grad():
            for p, s in zip(params, start_state):
                p.copy_(s)
            for k in range(kwargs["num_init_loss_batches"]):
                loss(ids[k * B : (k + 1) * B].to(device))
        for step in range(kwargs["num_draws"]):
            k = step % (len(ids) // B)
            loss(ids[k * B : (k + 1) * B].to(device)).backward()
            with torch.no_grad():
                grads = [p.grad for p in params]
                torch._foreach_add_(params, grads, alpha=-0.5 * lr * n_beta)
                torch._foreach_add_(params, [torch.randn_like(p) for p in params], alpha=lr**0.5)
                for p in params:
                    p.grad = None
                loss(train_obs)
                loss(probe_obs)
    harness.synchronize(device)
    return time.perf_counter() - start


def batched_vs_serial(spec: dict[str, Any]) -> float:
    """Largest |difference| between the losses batched and serial chains record on spec's device."""
    import warnings

    import numpy as np
    from datasets import Dataset

    from distinterp import sample

    model = harness.build_model(spec["model"])
    ds = Dataset.from_dict({"input_ids": harness.token_rows(spec["model"], 64, seed=1).tolist()})
    kwargs = {**sample_kwargs(spec), "init_noise": 0.01, "save_metrics": True}
    out = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (1, spec["chains"]):
            tree = sample(
                model,
                ds,
                {"train": ds},
                output_path=f"{tmp}/{k}.zarr",
                device=spec["device"],
                chains_per_batch=k,
                **kwargs,
            )
            out.append(tree.dataset.sampling_loss_micro.values)
    return float(np.abs(out[0] - out[1]).max())


def measure(spec: dict[str, Any], smoke: bool, nproc: int = 1, threads: int | None = None) -> float:
    if smoke:
        return child(spec)["seconds"]
    return harness.run_child(__file__, spec, nproc=nproc, threads=threads)["seconds"]


def per_chain_step(seconds: float, spec: dict[str, Any]) -> float:
    return seconds / (spec["chains"] * spec["draws"])


def run_target(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Rows of one target and its ratio."""
    smoke, dev = args.smoke, args.device
    cores = args.threads or os.cpu_count() or 1

    def spec(model: str, chains: int, **kw: Any) -> dict[str, Any]:
        base = dict(SMOKE_SPEC) if smoke else dict(model=model, chains=chains, draws=args.draws)
        return {**base, "device": dev, **kw}

    rows: list[dict[str, Any]] = []

    def row(label: str, s: dict[str, Any], seconds: float, **extra: Any) -> None:
        rows.append(
            dict(
                run=label,
                model=s["model"],
                chains=s["chains"],
                draws=s["draws"],
                seconds=round(seconds, 3),
                ms_per_chain_step=round(1e3 * per_chain_step(seconds, s), 3),
                **extra,
            )
        )

    if name == "cpu_limit":
        # one process, the two alternated `rounds` times, fastest of each: robust to a drifting machine load
        s = spec("mid", 2, threads=cores, engine="interleaved", rounds=1 if smoke else 3)
        res = child(s) if smoke else harness.run_child(__file__, s)
        row("distinterp sample()", s, res["sample"])
        row("bare PyTorch loop (limit)", s, res["limit"])
        return {
            "rows": rows,
            "ratio": round(res["sample"] / res["limit"], 3),
            "ratio_meaning": "distinterp / limit (goal <= 1.05)",
        }
    if name == "cpu_overhead":
        s = spec("tiny", 4, threads=cores)
        ours = measure({**s, "engine": "distinterp"}, smoke)
        theirs = measure({**s, "engine": "devinterp"}, smoke)
        row("distinterp", s, ours)
        row("devinterp 2.0.1", s, theirs)
        return {
            "rows": rows,
            "ratio": round(theirs / ours, 3),
            "ratio_meaning": "devinterp / distinterp (goal >= 2)",
        }
    if name == "cpu_ranks":
        s = spec("mid", 4, threads=1)
        one = measure({**s, "engine": "distinterp"}, smoke, threads=1)
        with tempfile.TemporaryDirectory() as tmp:
            two = (
                one if smoke else measure({**s, "engine": "distinterp", "out": f"{tmp}/s.zarr"}, smoke, 2, 1)
            )
        row("1 rank x 1 thread", s, one)
        row("2 ranks x 1 thread", s, two, ranks=2)
        return {
            "rows": rows,
            "ratio": round(one / (2 * two), 3),
            "ratio_meaning": "efficiency T1 / (2 T2) (goal >= 0.9)",
        }
    if name == "batched":
        s = spec("small", 8)
        serial = measure({**s, "engine": "distinterp"}, smoke)
        batched = measure({**s, "engine": "distinterp", "k": 8}, smoke)
        row("one chain at a time", s, serial)
        row("chains_per_batch=8", s, batched, k=8)
        return {
            "rows": rows,
            "ratio": round(serial / batched, 3),
            "ratio_meaning": "serial / batched (goal >= 3)",
        }
    if name == "devinterp":
        s = spec("pythia14m", 8)
        best = dict(k=8, autocast="bfloat16" if dev.startswith("cuda") else None, compile=args.compile_best)
        theirs = measure({**s, "engine": "devinterp"}, smoke)
        ours = measure({**s, "engine": "distinterp", **best}, smoke)
        row("devinterp 2.0.1", s, theirs)
        row(f"distinterp {best}", s, ours)
        return {
            "rows": rows,
            "ratio": round(theirs / ours, 3),
            "ratio_meaning": "devinterp / distinterp best (goal >= 3)",
        }
    if name == "profile":
        cuda = dev.startswith("cuda")
        runs = [("small", 1), ("small", 8)] if cuda else [("tiny", 1), ("mid", 1)]
        table: dict[str, dict[str, Any]] = {}
        for n, (model, k) in enumerate(runs):
            s = spec(model, 8 if k > 1 else 2, engine="profile", k=k, threads=None if cuda else 1)
            res = child(s) if smoke else harness.run_child(__file__, s, threads=None if cuda else 1)
            col = f"{s['model']} K={k}" + (f" #{n}" if smoke else "")
            cells = {
                "seconds": round(res["seconds"], 3),
                "ms per chain-step": round(1e3 * per_chain_step(res["seconds"], s), 2),
                **{f"{part} (%)": pct for part, pct in res["parts"].items()},
            }
            for what, value in cells.items():
                table.setdefault(what, {"": what})[col] = value
        return {"rows": list(table.values()), "ratio_meaning": "where one sample() call's time goes"}
    if name == "equal":
        s = spec("tiny", 3, draws=20)
        diff = batched_vs_serial(s)
        rows.append(dict(run="K=3 vs one at a time", model=s["model"], device=dev, max_abs_diff=diff))
        if not diff < 1e-3:
            raise SystemExit(f"equal: batched chains differ from serial ones by {diff} on {dev}")
        return {"rows": rows, "ratio": diff, "ratio_meaning": "max |batched - serial| of recorded losses"}
    if name == "options":
        s = spec("small", 8, engine="distinterp", k=8)
        plain = measure(s, smoke)
        row("K=8", s, plain)
        out: dict[str, Any] = {"rows": rows, "ratio_meaning": "plain / with option"}
        # (the smoke skips compile: its first-call compilation takes many seconds; tests/test_batched covers it)
        for label, extra in [("compile=True", {"compile": True}), ("bf16", {"autocast": "bfloat16"})][smoke:]:
            t = measure({**s, **extra}, smoke)
            row(f"K=8 {label}", s, t)
            out[f"gain_{label}"] = round(plain / t, 3)
        return out
    raise ValueError(f"--targets: unknown target {name!r}; choose from {CPU_TARGETS + GPU_TARGETS}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        harness.report(child(json.loads(sys.argv[2])))
        harness.finish()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(CPU_TARGETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--threads", type=int, help="torch threads of single-process runs (default: all cores)")
    p.add_argument("--compile-best", action="store_true", help="include compile=True in the devinterp target")
    p.add_argument("--json", help="write the tables as JSON here")
    p.add_argument("--smoke", action="store_true", help="every target, tiny, in-process: seconds")
    args = p.parse_args()
    targets = {}
    for name in args.targets.split(","):
        res = run_target(name, args)
        harness.print_table(f"{name}: {res['ratio_meaning']}: {res.get('ratio', '')}", res["rows"])
        for k, v in res.items():
            if k.startswith("gain_"):
                print(f"   {k} = {v}")
        targets[name] = res
    harness.write_json(args.json, targets)


if __name__ == "__main__":
    main()
