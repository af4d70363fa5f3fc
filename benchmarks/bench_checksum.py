"""Cost of the chunk checksum (zstd's frame checksum) on the write path: sample() A/B in one run.

    python benchmarks/bench_checksum.py [--rounds 3] [--chains 2] [--draws 200] [--json out.json] [--smoke]

The same sample() call (bench_store's small GPT-2, local store) runs alternately without and with the
checksum, `--rounds` times each; the table gives the median wall time, the writer thread's busy time per
draw, and the ratio with/without (goal: within 1 %). A codec micro-benchmark encodes and decodes one
chunk of sampling_loss_micro's shape both ways for the raw cost per MiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store


def with_checksum(flag: bool) -> None:
    """Make the store write arrays with (or without) zstd's frame checksum, for the next sample() call."""
    import zarr.codecs

    import distinterp.store

    module = getattr(distinterp.store, "schema", distinterp.store)  # the store package, or the old store.py

    def codec(**kwargs: Any) -> Any:
        return zarr.codecs.ZstdCodec(**{**kwargs, "checksum": flag})

    module.ZstdCodec = codec


def codec_cost(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """ms per MiB to encode + decode one chunk with zstd level 0 (numcodecs, as zarr's ZstdCodec), without
    and with the checksum, interleaved and the fastest of `repeats` (robust on a busy machine)."""
    from numcodecs import Zstd

    raw = np.random.default_rng(0).standard_normal(shape).astype(np.float32).tobytes()
    codecs = {"without": Zstd(level=0, checksum=False), "with": Zstd(level=0, checksum=True)}
    best = dict.fromkeys(codecs, float("inf"))
    for _ in range(repeats):
        for name, codec in codecs.items():
            start = time.perf_counter()
            codec.decode(codec.encode(raw))
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1e3 * t / (len(raw) / 2**20) for name, t in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=129)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round (seconds)")
    args = p.parse_args()
    if args.smoke:
        args.rounds, args.draws, args.batch_size, args.seq_len = 1, 10, 2, 17
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in ("without", "with") if r % 2 == 0 else ("with", "without"):
                with_checksum(name == "with")
                url = f"{tmp}/{name}{r}.zarr"
                runs[name].append(bench_store.sample_once(url, {}, args))
                codecs = json.loads(Path(url, "sampling_loss", "zarr.json").read_text())["codecs"]
                assert any(c["configuration"].get("checksum") for c in codecs) == (name == "with"), codecs
    with_checksum(True)
    shape = (1, 50, args.batch_size, args.seq_len - 1)
    codec = codec_cost(shape, repeats=3 if args.smoke else 300)
    result: dict[str, Any] = {"settings": vars(args), "codec_ms_per_MiB": codec}
    print(
        f"{'':10s} {'sample_s':>9s} {'busy ms/draw':>13s} {'blocked ms/draw':>16s}  ({args.rounds} rounds, median)"
    )
    for name, rs in runs.items():
        med = {
            k: statistics.median(x[k] for x in rs)
            for k in ("sample_s", "busy_ms_per_draw", "blocked_ms_per_draw")
        }
        result[name] = {"median": med, "runs": rs}
        print(
            f"{name:10s} {med['sample_s']:9.3f} {med['busy_ms_per_draw']:13.4f} {med['blocked_ms_per_draw']:16.4f}"
        )
    ratio = result["with"]["median"]["sample_s"] / result["without"]["median"]["sample_s"]
    result["ratio_sample_s"] = ratio
    print(f"ratio     {ratio:9.4f}  (with / without checksum; goal within 1 %)")
    print(
        f"codec     {codec['without']:.3f} -> {codec['with']:.3f} ms per MiB (encode + decode, fastest of many, chunk {shape})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
