"""`distinterp inspect STORE --verify`: read every chunk of every array and report the damaged or missing
ones (exit 1 when any); and the one message a read command prints when it meets a damaged chunk."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from distinterp.integrity import (
    ChunkProblem,
    DamagedStoreError,
    explain,
    is_damage,
    rerun_advice,
    settings_hint,
    verify,
)
from distinterp.store.source import StoreSource, handle


def verify_store(url: StoreSource, storage_options: dict[str, Any] | None = None) -> int:
    """Print each damaged or missing chunk as it is found, then a summary; 1 when any, else 0."""
    store = handle(url, storage_options)
    # aiobotocore closes the S3 clients of s3fs on a loop of their own and asyncio logs each as a page of
    # "attached to a different loop" tracebacks (harmless: reads are unaffected); keep the report readable
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    store.require()
    start = time.perf_counter()

    def show(problem: ChunkProblem) -> None:
        print(f"  {problem.line()}", flush=True)

    result = verify(store, on_problem=show)
    took = time.perf_counter() - start
    if result.unchecksummed:
        print(
            f"checksums  none on {len(result.unchecksummed)} array(s) ({', '.join(result.unchecksummed)}): "
            "written before checksums; damage there cannot be detected"
        )
    else:
        print("checksums  every array (zstd frame checksum)")
    print(
        f"verify     {result.chunks_read} chunks read in {took:.1f} s: "
        + (f"{len(result.problems)} damaged or missing" if result.problems else "all good")
    )
    if result.problems:
        print(rerun_advice(result.problems, settings_hint(store)))
        return 1
    return 0


def checksum_line(url: StoreSource, storage_options: dict[str, Any] | None = None) -> str:
    """'checksums ...' for inspect: whether the arrays carry a checksum (stores written before do not)."""
    import zarr

    from distinterp.integrity import checksummed

    group = zarr.open_group(handle(url, storage_options).location.zarr_store(read_only=True), mode="r")
    names = sorted(group.array_keys())
    plain = [n for n in names if not checksummed(zarr.open_array(group.store, path=n, mode="r").metadata)]
    if not plain:
        return "checksums every array (zstd frame checksum; `inspect --verify` reads every chunk)"
    if len(plain) == len(names):
        return "checksums no checksum (written before checksums): damage cannot be detected on read"
    return f"checksums no checksum on {', '.join(plain)}"


def damage_error(
    store: StoreSource | None, storage_options: dict[str, Any] | None, error: BaseException
) -> DamagedStoreError | None:
    """A read command's error as the damaged chunks of its store, named (None: not a damaged chunk)."""
    if store is None or not is_damage(error):
        return None
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # as in verify_store: S3 client-close noise
    damaged = explain(handle(store, storage_options), error)
    if damaged is not None:
        print(f"(verifying {store} to name the damaged chunks)", file=sys.stderr)
    return damaged
