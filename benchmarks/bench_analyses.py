"""compute_bif / compute_susceptibilities: time and peak memory as the store grows (draws x1, x10), and devinterp 2.x.

    python benchmarks/bench_analyses.py [--json out.json] [--scales 1,10] [--chains 4] [--draws 50]
        [--seqs 48] [--ctx 32] [--batch-size 16]

Stores of the reference schema are filled with random losses (no sampling). Each measurement is a fresh
process that resets its peak RSS after imports (/proc/self/clear_refs), times the call with
time.perf_counter and reports the growth of VmHWM over the post-import RSS, so imports are excluded.
The token-wise BIF is also timed with its blocks split over 2 ranks (torchrun, gloo; each rank gets half the
cores' threads; rank 0's time, which includes gathering the result, and rank 0's peak).
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

ANALYSES = ("bif_token", "bif_sequence", "susceptibilities")
RANKS_2 = "distinterp_2ranks"
"""Engine name of the 2-rank token-wise BIF."""


def make_store(path: Path, chains: int, draws: int, seqs: int, ctx: int, seed: int) -> None:
    """A reference-schema store with observables 'pile' and 'probe' (seqs rows each), written chunk by chunk."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(seed)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    chunk = min(50, draws)
    init = root.create_array(
        "init_loss", shape=(chains, ctx), dtype="float32", dimension_names=("chain", "token_pos")
    )
    init[...] = 3.0 + rng.normal(size=(chains, ctx)) * 0.1
    for key in ("pile", "probe"):
        dims = ("chain", "draw", f"batch_{key}", "token_pos")
        arr = root.create_array(
            f"loss_{key}",
            shape=(chains, draws, seqs, ctx),
            chunks=(1, chunk, seqs, ctx),
            dtype="float32",
            dimension_names=dims,
        )
        for c in range(chains):
            for d in range(0, draws, chunk):
                k = min(chunk, draws - d)
                common = rng.normal(size=(k, 1, ctx))
                arr[c, d : d + k] = 3.0 + common + rng.normal(size=(k, seqs, ctx))
        ids = root.create_array(
            f"input_ids_{key}",
            shape=(seqs, ctx + 1),
            dtype="int64",
            dimension_names=(f"batch_{key}", "token"),
        )
        ids[...] = np.random.default_rng(99).integers(0, 100, (seqs, ctx + 1))  # same in every store


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(analysis: str, engine: str, store_dir: str, batch_size: int) -> None:
    """Runs inside the measured process: open the store(s), time one analysis, print one JSON line."""
    import warnings

    import xarray as xr

    warnings.simplefilter("ignore")
    rank = 0
    if engine == RANKS_2:
        import torch

        from distinterp.analyses.bif import _compute_bif
        from distinterp.parallel.distributed import runtime

        rt = runtime()
        rank = rt.rank
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rt.world_size))
        rt.barrier()
    elif engine == "devinterp":
        from devinterp.slt.bif import compute_bif
        from devinterp.slt.susceptibilities import compute_susceptibilities
    else:
        from distinterp.analyses.bif import compute_bif
        from distinterp.analyses.susceptibilities import compute_susceptibilities

    def open_(name: str) -> xr.DataTree:
        return xr.open_datatree(Path(store_dir) / name, engine="zarr", consolidated=False)

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    if engine == RANKS_2:
        _compute_bif(open_("full.zarr"), rt, batch_size=batch_size, device="cpu")
    elif analysis == "bif_token":
        compute_bif(open_("full.zarr"), batch_size=batch_size, device="cpu")
    elif analysis == "bif_sequence":
        compute_bif(open_("full.zarr"), correlation_method="sequence", device="cpu")
    else:
        compute_susceptibilities({"full": open_("full.zarr"), "l0": open_("l0.zarr")}, "pile")
    elapsed = time.perf_counter() - start
    peak = _rss_kb("VmHWM") - base
    if rank == 0:
        print("RESULT " + json.dumps({"seconds": elapsed, "peak_mb": peak / 1024}), flush=True)


def measure(analysis: str, engine: str, store_dir: Path, batch_size: int) -> dict[str, float]:
    launcher = [sys.executable]
    if engine == RANKS_2:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd = [
        *launcher,
        __file__,
        "--child",
        analysis,
        engine,
        str(store_dir),
        "--batch-size",
        str(batch_size),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [line[line.index("RESULT ") :] for line in res.stdout.splitlines() if "RESULT " in line]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} {analysis} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(lines[0][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--scales", default="1,10", help="draw multipliers of the base store")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=50, help="draws of the x1 store")
    p.add_argument("--seqs", type=int, default=48, help="rows per observable (two observables)")
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="compute_bif batch_size (block of sequences)")
    p.add_argument("--analyses", default=",".join(ANALYSES))
    p.add_argument("--child", nargs=3, metavar=("ANALYSIS", "ENGINE", "STORE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, batch_size=args.batch_size)
        return
    try:
        import devinterp  # noqa: F401

        engines = ["distinterp", "devinterp"]
    except ImportError:
        engines = ["distinterp"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-analyses-") as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            store_dir = Path(tmp) / f"x{scale}"
            draws = args.draws * scale
            for i, name in enumerate(("full", "l0")):
                make_store(store_dir / f"{name}.zarr", args.chains, draws, args.seqs, args.ctx, seed=i)
            store_mb = (
                sum(f.stat().st_size for f in (store_dir / "full.zarr").rglob("*") if f.is_file()) / 2**20
            )
            for analysis in args.analyses.split(","):
                runs = [*engines, RANKS_2] if analysis == "bif_token" else engines
                res = {e: measure(analysis, e, store_dir, args.batch_size) for e in runs}
                row = {"analysis": analysis, "scale": scale, "draws": draws, "store_mb": round(store_mb, 1)}
                for e, r in res.items():
                    row[f"{e}_s"] = round(r["seconds"], 3)
                    row[f"{e}_peak_mb"] = round(r["peak_mb"], 1)
                if "devinterp" in res:
                    row["time_ratio"] = round(res["distinterp"]["seconds"] / res["devinterp"]["seconds"], 2)
                    row["peak_ratio"] = round(
                        max(res["distinterp"]["peak_mb"], 0.1) / max(res["devinterp"]["peak_mb"], 0.1), 2
                    )
                if RANKS_2 in res:
                    row["speedup_2ranks"] = round(res["distinterp"]["seconds"] / res[RANKS_2]["seconds"], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    cols = list(rows[0])
    print(" | ".join(f"{c:>16}" for c in cols))
    for row in rows:
        print(" | ".join(f"{row.get(c, ''):>16}" for c in cols))
    if args.json:
        config = {k: getattr(args, k) for k in ("chains", "draws", "seqs", "ctx", "batch_size")}
        Path(args.json).write_text(json.dumps({"config": config, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
