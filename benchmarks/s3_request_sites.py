"""Where S3 requests come from: one sample() (and/or a sweep) into a loopback SeaweedFS, each request
counted by kind (GET / PUT / LIST / HEAD) and by the distinterp call site that caused it.

    python benchmarks/s3_request_sites.py [sample] [sweep] [--cells 1] [--depth 4]

Requests are counted at the S3 client's API call hook; the call site is the innermost distinterp frames
of the thread that scheduled the coroutine (zarr and fsspec both run theirs through
asyncio.run_coroutine_threadsafe, which is wrapped to carry the site in a context variable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import bench_store
import bench_sweep

SITE: contextvars.ContextVar[str] = contextvars.ContextVar("site", default="?")
sites: Counter[tuple[str, str]] = Counter()


def install(depth: int) -> None:
    """Count every S3 request by (call site, kind)."""
    from aiobotocore.client import AioBaseClient

    schedule = asyncio.run_coroutine_threadsafe

    def scheduled(coro: Any, loop: Any) -> Any:
        frames = [f for f in traceback.extract_stack()[:-1] if "/distinterp/" in f.filename]
        site = " < ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(frames[-depth:]))

        async def carried() -> Any:
            SITE.set(site or "?")
            return await coro

        return schedule(carried(), loop)

    asyncio.run_coroutine_threadsafe = scheduled  # type: ignore[assignment]
    call = AioBaseClient._make_api_call

    async def counted(self: Any, operation_name: str, api_params: Any) -> Any:
        sites[(SITE.get(), bench_sweep._OPS.get(operation_name, "other"))] += 1
        return await call(self, operation_name, api_params)

    AioBaseClient._make_api_call = counted  # type: ignore[method-assign]


def dump(title: str) -> None:
    kinds: Counter[str] = Counter()
    for (_, kind), n in sites.items():
        kinds[kind] += n
    print(f"=== {title}: {dict(kinds)} total={sum(kinds.values())}")
    for (site, kind), n in sorted(sites.items(), key=lambda x: -x[1]):
        print(f"{n:5d} {kind:5s} {site}")
    sites.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="*", default=["sample", "sweep"], choices=["sample", "sweep"])
    p.add_argument("--cells", type=int, default=1, help="cells of the sweep")
    p.add_argument("--depth", type=int, default=4, help="distinterp frames named per call site")
    args = p.parse_args()
    install(args.depth)
    from distinterp import sample, toy
    from distinterp.jobs.grid import sweep

    ds = bench_sweep._dataset()
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_store.seaweedfs(Path(tmp)) as options,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        model = toy.tiny_gpt2(32, 1, 0, n_positions=16)
        sites.clear()
        base = f"s3://{bench_store.BUCKET}"
        if "sample" in args.what:
            sample(model, ds, {"train": ds}, output_path=f"{base}/one", storage_options=options,
                   num_chains=1, **bench_sweep.CELL)  # fmt: skip
            dump("sample()")
        if "sweep" in args.what:
            sweep(model, ds, {"train": ds}, output_path=f"{base}/sweep",
                  grid={"init_seed": list(range(args.cells))}, storage_options=options, num_chains=1,
                  **bench_sweep.CELL)  # fmt: skip
            dump(f"sweep of {args.cells} cells")


if __name__ == "__main__":
    main()
