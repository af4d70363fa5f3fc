"""How a sweep's cost grows with its cells: 1, 10, 100, 1000 tiny cells, 1 and 2 ranks, local and S3.

    python benchmarks/bench_sweep.py [--cells 1,10,100,1000] [--ranks 1,2] [--backends local,s3]
                                     [--s3-max-cells 100] [--json out.json] [--smoke]

Per (backend, ranks, cells): the sweep's wall time (a fresh process, or a torchrun job, timing its own
call), then in another fresh process the aggregator's wall time and its peak RSS growth (ru_maxrss after
aggregating minus before), and on S3 the requests each made (GET / PUT / LIST / HEAD / other, counted by
a hook on the S3 client's API calls; summed over ranks). S3 runs on a loopback SeaweedFS of our own.
A tiny cell: a 1-layer GPT-2 (16 wide), 1 chain (2 with 2 ranks), 2 draws of one batch of 4 rows; the
cells are `distinterp.sweep(model, ..., grid={"init_seed": range(cells)})` (one checkpoint, loaded once).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]
CELL = dict(lr=1e-3, n_beta=10.0, num_draws=2, batch_size=4, num_init_loss_batches=1, batches_per_draw=1)

_OPS = {
    "GetObject": "GET",
    "PutObject": "PUT",
    "ListObjectsV2": "LIST",
    "ListObjects": "LIST",
    "HeadObject": "HEAD",
    "HeadBucket": "HEAD",
}
requests: Counter[str] = Counter()


def count_s3_requests() -> None:
    """Count every S3 API call this process makes, by kind (aiobotocore's client: s3fs's transport)."""
    from aiobotocore.client import AioBaseClient

    call = AioBaseClient._make_api_call

    async def counted(self: Any, operation_name: str, api_params: Any) -> Any:
        requests[_OPS.get(operation_name, "other")] += 1
        return await call(self, operation_name, api_params)

    AioBaseClient._make_api_call = counted  # type: ignore[method-assign]


def _dataset() -> Any:
    import torch
    from datasets import Dataset

    ids = torch.randint(0, 32, (16, 9), generator=torch.Generator().manual_seed(1))
    return Dataset.from_dict({"input_ids": ids.tolist()})


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _total(counts: Counter[str]) -> dict[str, int]:
    """Request counts summed over the ranks of a torchrun job."""
    from distinterp.parallel.distributed import runtime

    rt = runtime()
    if rt.world_size == 1:
        return dict(counts)
    out: Counter[str] = Counter()
    for c in rt.all_gather(dict(counts)):
        out.update(c)
    return dict(out)


def child(spec: dict[str, Any]) -> None:
    """Runs inside a measured process: the sweep of `cells` tiny cells, or its aggregation."""
    import warnings

    import numpy as np

    from distinterp import toy
    from distinterp.jobs.grid import sweep
    from distinterp.jobs.sweep import aggregate_sweep
    from distinterp.parallel.distributed import runtime

    options = spec["options"]
    if options:
        count_s3_requests()
    ds = _dataset()
    toy.tiny_gpt2(32, 1, 0, n_positions=16)  # imports (transformers, arviz) before the clock starts
    import arviz_stats.base  # noqa: F401

    result: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["part"] == "sweep":
            model = toy.tiny_gpt2(32, 1, 0, n_positions=16)
            requests.clear()
            start = time.perf_counter()
            sweep(
                model,
                ds,
                {"train": ds},
                output_path=spec["root"],
                grid={"init_seed": list(range(spec["cells"]))},  # one cell per seed, one model load
                storage_options=options or None,
                num_chains=spec["chains"],
                **CELL,
            )
            runtime().barrier()
            result["seconds"] = time.perf_counter() - start
            result["requests"] = _total(requests)
        else:
            from distinterp.jobs.sweep import read_record
            from distinterp.store import Location

            read_record(Location(spec["root"], options))  # the S3 client and its imports, before the baseline
            before = _rss_mb()
            requests.clear()
            start = time.perf_counter()
            table = aggregate_sweep(spec["root"], storage_options=options or None)
            result["seconds"] = time.perf_counter() - start
            result["rss_growth_mb"] = _rss_mb() - before
            result["requests"] = dict(requests)
            assert table.llc_mean.size == spec["cells"] and bool(np.isfinite(table.llc_mean).all())
    harness.report(result)
    harness.finish()


def measure(backend: str, ranks: int, cells: int, base: str, options: dict[str, Any]) -> dict[str, Any]:
    """One row: sweep, then aggregation, each in a fresh process."""
    root = f"{base}/sweep-r{ranks}-c{cells}"
    spec = {"root": root, "cells": cells, "chains": max(ranks, 1), "options": options}
    swept = harness.run_child(__file__, {**spec, "part": "sweep"}, nproc=ranks, threads=1)
    agg = harness.run_child(__file__, {**spec, "part": "aggregate"}, nproc=1, threads=1)
    row: dict[str, Any] = {
        "backend": backend,
        "ranks": ranks,
        "cells": cells,
        "sweep_s": swept["seconds"],
        "sweep_s_per_cell": swept["seconds"] / cells,
        "aggregate_s": agg["seconds"],
        "aggregate_rss_growth_mb": agg["rss_growth_mb"],
    }
    if options:
        for part, res in (("sweep", swept), ("aggregate", agg)):
            req = res["requests"]
            row[f"{part}_requests"] = sum(req.values())
            for kind in ("GET", "PUT", "LIST", "HEAD", "other"):
                row[f"{part}_{kind}"] = req.get(kind, 0)
        row["aggregate_requests_per_cell"] = row["aggregate_requests"] / cells
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="1,10,100,1000", help="comma-separated cell counts")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (2: torchrun)")
    p.add_argument("--backends", default="local,s3")
    p.add_argument("--s3-max-cells", type=int, default=100, help="skip S3 rows with more cells than this")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="2 cells, 1 rank, local: seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.smoke:
        args.cells, args.ranks, args.backends = "2", "1", "local"
    cells = [int(x) for x in args.cells.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    backends = args.backends.split(",")
    unknown = sorted(set(backends) - {"local", "s3"})
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}; use local and/or s3")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            if backend == "local":
                for r in ranks:
                    rows += [measure("local", r, n, f"{tmp}/local", {}) for n in cells]
                continue
            import bench_store

            (Path(tmp) / "s3").mkdir()
            with bench_store.seaweedfs(Path(tmp) / "s3") as options:
                for r in ranks:
                    rows += [
                        measure("s3", r, n, f"s3://{bench_store.BUCKET}/b", options)
                        for n in cells
                        if n <= args.s3_max_cells
                    ]
    harness.print_table("sweep cost against cells", rows)
    harness.write_json(args.json, {"cell": CELL, "rows": rows})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
