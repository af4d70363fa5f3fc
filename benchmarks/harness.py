"""The benchmarks' own harness: models of known sizes, fresh-process timing, tables and JSON.

Every benchmark prints one table per target and, with --json, writes {"machine": ..., "targets": ...}.
Timings in a fresh process exclude interpreter start-up and imports (the child times its own call).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

MODELS: dict[str, dict[str, Any]] = {
    "smoke": dict(kind="gpt2", n_layer=1, n_embd=16, n_head=2, vocab=32, ctx=8, batch_size=2),
    "tiny": dict(kind="gpt2", n_layer=2, n_embd=64, n_head=2, vocab=256, ctx=32, batch_size=8),
    "mid": dict(kind="gpt2", n_layer=4, n_embd=128, n_head=4, vocab=512, ctx=64, batch_size=16),
    "small": dict(kind="gpt2", n_layer=2, n_embd=256, n_head=4, vocab=2048, ctx=128, batch_size=16),
    # Pythia-14m's shape (EleutherAI/pythia-14m config), random init: no download
    "pythia14m": dict(
        kind="neox", n_layer=6, n_embd=128, n_head=4, vocab=50304, ctx=128, batch_size=16, intermediate=512
    ),
}
"""Benchmark models: GPT-2 shapes as `layers x width`, context `ctx` tokens, sampled in batches of batch_size."""


def build_model(name: str) -> Any:
    """A random-init model of MODELS[name], dropout off, from a fixed seed."""
    import warnings

    import torch

    c = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if c["kind"] == "neox":
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            cfg = GPTNeoXConfig(
                num_hidden_layers=c["n_layer"],
                hidden_size=c["n_embd"],
                num_attention_heads=c["n_head"],
                intermediate_size=c["intermediate"],
                vocab_size=c["vocab"],
                max_position_embeddings=2048,
                rotary_pct=0.25,
                hidden_dropout=0.0,
                attention_dropout=0.0,
            )
            return GPTNeoXForCausalLM(cfg)
        from transformers import GPT2Config, GPT2LMHeadModel

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
        return GPT2LMHeadModel(cfg)


def token_rows(name: str, rows: int, seed: int) -> Any:
    """(rows, ctx + 1) random token ids for MODELS[name], as a torch tensor."""
    import torch

    c = MODELS[name]
    return torch.randint(0, c["vocab"], (rows, c["ctx"] + 1), generator=torch.Generator().manual_seed(seed))


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def best_of(fn: Callable[[], Any], repeats: int, device: str = "cpu") -> float:
    """Fastest of `repeats` timed calls after one warm-up call (seconds)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def run_child(
    script: str, spec: dict[str, Any], *, nproc: int = 1, threads: int | None = None
) -> dict[str, Any]:
    """Run `script --child SPEC` in a fresh process (torchrun when nproc > 1); its RESULT line as a dict."""
    args = [script, "--child", json.dumps(spec)]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln[ln.index("RESULT ") + 7 :] for ln in res.stdout.splitlines() if "RESULT " in ln]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{spec} x{nproc} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(lines[0])


def report(child_result: dict[str, Any]) -> None:
    """A child's one line of output, on rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(child_result), flush=True)


def finish() -> NoReturn:
    """End a measured child once its RESULT is out: every rank meets at a barrier, then the process exits
    without any teardown (no destroy_process_group, no interpreter finalisation). On a loaded machine
    gloo's teardown has aborted a child whose measurement was complete ("terminate called without an
    active exception"), both with and without an explicit destroy: nothing is left to tear down here."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """One aligned table: a title line, then the rows' keys as columns."""
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n== {title}")
    print(" | ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r.get(c, "")).rjust(width[c]) for c in cols))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_json(path: str | None, targets: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps({"machine": machine(), "targets": targets}, indent=2))
