"""compute_bif / compute_susceptibilities: time and peak memory as the store grows (draws x1, x10), and devinterp 2.x;
and the token-wise BIF against the matmul it reduces to (the roofline target).

    python benchmarks/bench_analyses.py [--json out.json] [--scales 1,10] [--chains 4] [--draws 50]
        [--seqs 48] [--ctx 32] [--batch-size 16] [--targets scaling,roofline] [--device cpu] [--smoke]

roofline: on a store of 4 chains x 50 draws and 80 sequences (two observables of 40) x 64 tokens, the
best of 5 compute_bif(correlation_method="token", "stack") calls against the best of 5 float32 matmuls of
(n*T x S) by (S x n*T), S = chains x draws, on the same device and threads (both allocate their output);
accuracy is the largest |error| against a float64 reference, for distinterp and devinterp 2.0.1.
--smoke: tiny stores, in this process, distinterp only (seconds; checks the script, not the speed).

Stores of the reference schema are filled with random losses (no sampling). Each measurement is a fresh
process that resets its peak RSS after imports (/proc/self/clear_refs), times the call with
time.perf_counter and reports the growth of VmHWM over the post-import RSS, so imports are excluded.
The token-wise BIF is also timed with its blocks split over 2 ranks (torchrun, gloo; each rank gets half the
cores' threads; rank 0's time, which includes gathering the result, and rank 0's peak).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

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

        from distinterp.analyses.bif import compute_bif
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

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    if engine == RANKS_2:
        compute_bif(open_("full.zarr"), runtime=rt, batch_size=batch_size, device="cpu")
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


def roofline(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Token BIF (stack) vs the float32 matmul of its FLOPs, and both BIFs' errors vs float64."""
    import numpy as np
    import torch
    import xarray as xr

    from distinterp.analyses.bif import compute_bif

    chains, draws, seqs, ctx = (2, 4, 3, 4) if args.smoke else (4, 50, 40, 64)
    make_store(tmp / "roof.zarr", chains, draws, seqs, ctx, seed=0)
    tree = xr.open_datatree(tmp / "roof.zarr", engine="zarr", consolidated=False)
    dev = args.device
    repeats = 1 if args.smoke else 5
    n, S, T = 2 * seqs, chains * draws, ctx
    ours = compute_bif(tree, device=dev)["influences"].values
    t_bif = harness.best_of(lambda: compute_bif(tree, device=dev), repeats, dev)
    x = torch.randn(n * T, S, device=dev)
    t_mm = harness.best_of(lambda: x @ x.T, repeats, dev)
    # float64 reference: every (row, token) series over the (chain, draw) observations
    loss = np.concatenate([tree.dataset[f"loss_{k}"].values for k in ("pile", "probe")], axis=2)
    series = loss.astype(np.float64).transpose(2, 3, 0, 1).reshape(n, T, S)
    series -= series.mean(axis=-1, keepdims=True)
    series /= np.sqrt((series**2).sum(axis=-1, keepdims=True))
    ref = np.einsum("isk,jtk->ijst", series, series)
    row = dict(
        store=f"{chains}x{draws} draws, {n} seqs x {T} tokens",
        device=dev,
        threads=torch.get_num_threads(),
        bif_s=round(t_bif, 4),
        matmul_s=round(t_mm, 4),
        ratio=round(t_bif / t_mm, 2),
        matmul_gflops=round(2 * (n * T) ** 2 * S / t_mm / 1e9, 1),
        err_distinterp=float(np.abs(ours - ref).max()),
        rms_err_distinterp=float(np.sqrt(((ours - ref) ** 2).mean())),
    )
    if not args.smoke:
        try:
            from devinterp.slt.bif import compute_bif as dv_compute_bif

            theirs = dv_compute_bif(tree, device=dev)["influences"].values
            row["err_devinterp"] = float(np.abs(theirs - ref).max())
            row["rms_err_devinterp"] = float(np.sqrt(((theirs - ref) ** 2).mean()))
            row["devinterp_s"] = round(
                harness.best_of(lambda: dv_compute_bif(tree, device=dev), repeats, dev), 4
            )
        except ImportError:
            pass
    return {"rows": [row], "ratio": row["ratio"], "ratio_meaning": "token BIF / float32 matmul (goal <= 2)"}


def measure(
    analysis: str, engine: str, store_dir: Path, batch_size: int, smoke: bool = False
) -> dict[str, float]:
    if smoke:  # in this process: checks the code path only
        start = time.perf_counter()
        child(analysis, engine, str(store_dir), batch_size)
        return {"seconds": time.perf_counter() - start, "peak_mb": 0.0}
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
    p.add_argument("--targets", default="scaling,roofline")
    p.add_argument("--device", default="cpu", help="device of the roofline target")
    p.add_argument("--smoke", action="store_true", help="tiny stores, in this process: seconds")
    p.add_argument("--child", nargs=3, metavar=("ANALYSIS", "ENGINE", "STORE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, batch_size=args.batch_size)
        return
    if args.smoke:
        args.scales, args.chains, args.draws, args.seqs, args.ctx, args.batch_size = "1", 2, 4, 3, 4, 2
    targets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-analyses-") as tmp:
        if "roofline" in args.targets.split(","):
            targets["roofline"] = roofline(args, Path(tmp))
            harness.print_table(
                f"roofline: {targets['roofline']['ratio_meaning']}", targets["roofline"]["rows"]
            )
        if "scaling" in args.targets.split(","):
            targets["scaling"] = {"rows": scaling(args, Path(tmp))}
            harness.print_table(
                "scaling: time and peak memory as the store grows", targets["scaling"]["rows"]
            )
    harness.write_json(args.json, targets)


def scaling(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Time and peak memory of every analysis per store scale, distinterp against devinterp and 2 ranks."""
    engines = ["distinterp"]
    if not args.smoke:
        try:
            import devinterp  # noqa: F401

            engines.append("devinterp")
        except ImportError:
            pass
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        store_dir = Path(tmp) / f"x{scale}"
        draws = args.draws * scale
        for i, name in enumerate(("full", "l0")):
            make_store(store_dir / f"{name}.zarr", args.chains, draws, args.seqs, args.ctx, seed=i)
        store_mb = sum(f.stat().st_size for f in (store_dir / "full.zarr").rglob("*") if f.is_file()) / 2**20
        for analysis in args.analyses.split(","):
            runs = [*engines, RANKS_2] if analysis == "bif_token" and not args.smoke else engines
            res = {e: measure(analysis, e, store_dir, args.batch_size, args.smoke) for e in runs}
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
    return rows


if __name__ == "__main__":
    main()
