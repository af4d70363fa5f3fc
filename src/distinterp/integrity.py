"""Integrity of stored data: every chunk checked against its checksum, damage named by chain and draws.

Arrays are written with zstd's frame checksum (`ZstdCodec(checksum=True)`): any zstd reader (zarr,
xarray, devinterp, tensorstore) verifies it on decode, so a damaged chunk fails instead of returning
numbers. This module turns that failure into a message that says which chains to rerun (for the CLI, and
for every analysis through `names_damaged_chunks`), and walks a whole store chunk by chunk
(`distinterp inspect STORE --verify`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import zarr
from zarr.core.sync import sync

from distinterp.errors import ChunkProblem as ChunkProblem  # re-exported: its old home
from distinterp.errors import DamagedCheckpoint as DamagedCheckpoint  # re-exported: its old home
from distinterp.errors import DamagedStoreError as DamagedStoreError  # re-exported: its old home
from distinterp.store import DIVERGED_STEP, STEPS_DONE, Location, redact
from distinterp.store.source import StoreSource, handle, handles_of

logger = logging.getLogger(__name__)

PROGRESS_ARRAYS = (STEPS_DONE, DIVERGED_STEP)
REMOTE_READERS = 16
"""Chunks read at once from a remote store (parallel GETs); a local store reads with 2 threads."""


# ─── Pure helpers ────────────────────────────────────────────────────────────


def chunk_slices(shape: Sequence[int], chunks: Sequence[int], index: Sequence[int]) -> tuple[slice, ...]:
    """The region of an array that chunk `index` covers."""
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))


def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every chunk index of an array, in C order."""
    return itertools.product(*(range(math.ceil(n / c)) if c else range(1) for n, c in zip(shape, chunks)))


def covers(
    dims: Sequence[str], shape: Sequence[int], chunks: Sequence[int], index: Sequence[int]
) -> tuple[int | None, str]:
    """(chain, words) for what a chunk holds: 'chain 3, draws 50-99', or 'the whole array' when shared."""
    region = chunk_slices(shape, chunks, index)
    chain = None
    parts = []
    for dim, s in zip(dims, region):
        if dim == "chain":
            chain = s.start if s.stop - s.start == 1 else None
            parts.append(f"chain {s.start}" if chain is not None else f"chains {s.start}-{s.stop - 1}")
        elif dim in ("draw", "step"):
            parts.append(f"{dim}s {s.start}-{s.stop - 1}")
    return chain, ", ".join(parts) or "the whole array (shared by every chain)"


def durable_steps(steps_done: int, diverged_at: int) -> int:
    """Steps of a chain whose rows must be in the store (a diverged chain's rows stop before its step)."""
    return diverged_at if diverged_at >= 0 else steps_done


def draws_before(step: int, burnin: int, every: int, num_draws: int) -> int:
    """Draws taken before `step` (a draw at every `every`-th step from `burnin` on)."""
    return min(num_draws, max(0, -(-(step - burnin) // every)))


def expected(
    name: str,
    dims: Sequence[str],
    shape: Sequence[int],
    chunks: Sequence[int],
    index: Sequence[int],
    progress: dict[int, int] | None,
    sampler: dict[str, Any],
) -> bool:
    """Whether a chunk must exist, from the chain's durable progress (`progress`: chain -> durable steps;
    None: a store without progress arrays, where only shared arrays are checked)."""
    if name in PROGRESS_ARRAYS:
        return False  # absent means "nothing yet" (steps 0, not diverged): the fill value says so
    if not dims or dims[0] != "chain":
        return True  # shared arrays are written when the store is created
    if progress is None:
        return False
    region = chunk_slices(shape, chunks, index)
    done = progress.get(int(region[0].start), 0)
    if len(dims) < 2 or dims[1] not in ("step", "draw"):
        return done > 0  # init_loss: written before the first step
    start = int(region[1].start)
    if dims[1] == "step":
        return start < done
    burnin = int(sampler.get("num_burnin_steps") or 0)
    every = int(sampler.get("num_steps_bw_draws") or 1)
    return start < draws_before(done, burnin, every, shape[1])


def is_damage(error: BaseException) -> bool:
    """Whether an exception is a chunk failing its checksum or its decoding (zstd, crc32c); a
    DamagedStoreError is not: its chunks are named already."""
    if isinstance(error, DamagedStoreError):
        return False
    text = str(error)
    zstd = isinstance(error, RuntimeError) and "Zstd decompression error" in text
    return zstd or (isinstance(error, ValueError) and "checksum do not match" in text)


def rerun_advice(problems: Sequence[ChunkProblem], settings_hint: str) -> str:
    """What to do about damaged chunks: rerun exactly the chains they belong to."""
    chains = sorted({p.chain for p in problems if p.chain is not None})
    shared = any(p.chain is None for p in problems)
    if not chains:
        chains = [0]  # shared arrays are rewritten by any rerun
    listed = " ".join(map(str, chains))
    return (
        f"rerun {'chain' if len(chains) == 1 else 'chains'} {', '.join(map(str, chains))}: "
        f"`distinterp sample {settings_hint} --rerun-chains {listed}` (from Python: sample(..., "
        f"rerun_chains={chains})); it rewrites exactly those chains"
        + (" and the arrays shared by every chain" if shared else "")
        + " and leaves the others untouched"
    )


def damage_message(location: StoreSource, problems: Sequence[ChunkProblem], settings_hint: str) -> str:
    """The store, each problem chunk (array, chain, draws), and what to do."""
    location = handle(location)
    lines = [f"{location}: {len(problems)} chunk(s) damaged or missing; their data is not returned:"]
    lines += [f"  {p.line()}" for p in problems[:20]]
    if len(problems) > 20:
        lines.append(
            f"  ... and {len(problems) - 20} more (`distinterp inspect {location} --verify` lists all)"
        )
    lines.append(rerun_advice(problems, settings_hint))
    return "\n".join(lines)


# ─── Reading ─────────────────────────────────────────────────────────────────


def checksummed(meta: Any) -> bool:
    """Whether an array's codecs carry a checksum (zstd's, or a crc32c codec)."""
    for codec in meta.codecs:
        if type(codec).__name__ == "Crc32cCodec" or getattr(codec, "checksum", False):
            return True
    return False


def _present(store: Any, name: str) -> set[str]:
    """Keys of the chunks of array `name` that exist (one listing, not one request per chunk)."""

    async def collect() -> set[str]:
        return {key async for key in store.list_prefix(f"{name}/") if not key.endswith("zarr.json")}

    return sync(collect())


def _progress(group: zarr.Group) -> dict[int, int] | None:
    names = set(group.array_keys())
    if STEPS_DONE not in names:
        return None
    steps = np.asarray(zarr.open_array(group.store, path=STEPS_DONE, mode="r")[...])
    diverged = (
        np.asarray(zarr.open_array(group.store, path=DIVERGED_STEP, mode="r")[...])
        if DIVERGED_STEP in names
        else np.full_like(steps, -1)
    )
    return {c: durable_steps(int(s), int(d)) for c, (s, d) in enumerate(zip(steps, diverged))}


@dataclass(frozen=True)
class Verification:
    """The outcome of reading every chunk: problems, and which arrays carry no checksum (older stores)."""

    problems: list[ChunkProblem]
    chunks_read: int
    unchecksummed: list[str]


def verify(
    location: StoreSource,
    *,
    chains: Iterable[int] | None = None,
    workers: int | None = None,
    on_problem: Callable[[ChunkProblem], None] | None = None,
) -> Verification:
    """Read every chunk of every array (only `chains`' chunks when given): damaged and missing chunks.

    Streams: at most `workers` chunks are in memory at once; reads run in parallel (16 on a remote store).
    """
    location = handle(location).location
    store = location.zarr_store(read_only=True)
    group = zarr.open_group(store, mode="r")
    attrs: dict[str, Any] = dict(group.attrs)
    sampler = dict(attrs.get("metadata", {}).get("config", {}).get("sampler", {}) or {})
    progress = _progress(group)
    only = None if chains is None else set(chains)
    workers = workers or (2 if location.is_local else REMOTE_READERS)
    problems: list[ChunkProblem] = []
    unchecksummed: list[str] = []
    Job = tuple[zarr.Array[Any], str, tuple[int, ...], tuple[str, ...]]
    counted = [0]

    def jobs() -> Iterator[Job]:
        """The chunks to read, lazily (a listing per array); missing ones are recorded on the way."""
        for name in sorted(group.array_keys()):
            arr = zarr.open_array(store, path=name, mode="r")
            if not checksummed(arr.metadata):
                unchecksummed.append(name)
            dims = tuple(str(d) for d in getattr(arr.metadata, "dimension_names", None) or ())
            present = _present(store, name)
            for index in chunk_grid(arr.shape, arr.chunks):
                chain, words = covers(dims, arr.shape, arr.chunks, index)
                if only is not None and (chain is None or chain not in only):
                    continue
                if f"{name}/{arr.metadata.encode_chunk_key(index)}" in present:
                    counted[0] += 1
                    yield arr, name, index, dims
                elif expected(name, dims, arr.shape, arr.chunks, index, progress, sampler):
                    problems.append(ChunkProblem(name, index, "missing", words, chain, "not in the store"))
                    if on_problem:
                        on_problem(problems[-1])

    def read(job: Job) -> ChunkProblem | None:
        arr, name, index, dims = job
        try:
            arr[chunk_slices(arr.shape, arr.chunks, index)]  # decoded and dropped: memory stays bounded
        except Exception as e:  # noqa: BLE001 - a decode error of any codec is damage; others are too
            chain, words = covers(dims, arr.shape, arr.chunks, index)
            why = "checksum mismatch" if is_damage(e) else f"{type(e).__name__}: {redact(str(e))[:120]}"
            return ChunkProblem(name, index, "damaged", words, chain, why)
        return None

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="distinterp-verify") as pool:
        window: list[Future[ChunkProblem | None]] = []
        for job in jobs():
            window.append(pool.submit(read, job))
            if len(window) >= 4 * workers:
                _collect(window[:workers], problems, on_problem)
                window = window[workers:]
        _collect(window, problems, on_problem)
    store.close()
    problems.sort(key=lambda p: (p.array, p.chunk))
    return Verification(problems=problems, chunks_read=counted[0], unchecksummed=unchecksummed)


def _collect(
    futures: list[Future[ChunkProblem | None]],
    problems: list[ChunkProblem],
    on_problem: Callable[[ChunkProblem], None] | None,
) -> None:
    for fut in futures:
        problem = fut.result()
        if problem is not None:
            problems.append(problem)
            if on_problem:
                on_problem(problem)


def settings_hint(location: StoreSource) -> str:
    """How to name this store's sampling job on the command line (`--from-store STORE` when it records it)."""
    return f"--from-store {handle(location)}"


def raise_if_damaged(location: StoreSource, chains: Iterable[int] | None = None) -> None:
    """Verify the store (or `chains`' chunks) and raise DamagedStoreError naming every problem chunk."""
    result = verify(location, chains=chains)
    if result.problems:
        raise DamagedStoreError(
            damage_message(location, result.problems, settings_hint(location)), result.problems
        )


def explain(location: StoreSource, error: BaseException) -> DamagedStoreError | None:
    """For a read that failed on a damaged chunk: the store's damaged chunks, named (None: not damage)."""
    return damage_in([location], error) if is_damage(error) else None


def damage_in(locations: Sequence[StoreSource], error: BaseException) -> DamagedStoreError:
    """The damaged chunks behind a failed read, named in whichever of `locations` holds them; what is known
    (the stores, the decoder's words, how to find the chunk) when none can be walked or none is known."""
    stores = [handle(location) for location in locations]
    for location in stores:
        try:
            problems = verify(location).problems
        except Exception:  # noqa: BLE001 - cannot even walk this store: try the next, else say what we know
            continue
        if problems:
            return DamagedStoreError(damage_message(location, problems, settings_hint(location)), problems)
    unknown = ChunkProblem("?", (), "damaged", "unknown chunk", None, redact(str(error)))
    where = (
        ", ".join(map(str, stores)) or "the samples (not opened from a store path: which store is unknown)"
    )
    store = str(stores[0]) if len(stores) == 1 else "STORE"
    return DamagedStoreError(
        f"{where}: a chunk failed its checksum on read ({unknown.detail}); its data is not returned. Find "
        f"it with `distinterp inspect {store} --verify`, then rerun the chains it names: `distinterp sample "
        f"--from-store {store} --rerun-chains C` (from Python: sample(..., rerun_chains=[C])); it rewrites "
        "exactly those chains and leaves the others untouched",
        [unknown],
    )


def store_locations(samples: Any, storage_options: Mapping[str, Any] | None = None) -> list[Location]:
    """The stores an analysis reads, from what it was given: a path, URL, Location or SampleStore, a
    DataTree or Dataset opened from one, or a mapping of them (store.source.handles_of's addresses)."""
    return [h.location for h in handles_of(samples, storage_options)]


P = ParamSpec("P")
R = TypeVar("R")


def names_damaged_chunks(analysis: Callable[P, R]) -> Callable[P, R]:
    """An analysis whose read of a damaged chunk raises DamagedStoreError naming the store, array, chain,
    draws and the rerun that repairs them, instead of the decoder's bare checksum error."""
    first = next(iter(inspect.signature(analysis).parameters))

    @functools.wraps(analysis)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return analysis(*args, **kwargs)
        except (RuntimeError, ValueError) as e:
            if not is_damage(e):
                raise
            samples = args[0] if args else kwargs.get(first)
            options = kwargs.get("storage_options")
            locations = handles_of(samples, options if isinstance(options, Mapping) else None)
            if locations:
                logger.warning(
                    "%s: a chunk failed its checksum; reading every chunk of %s to name it",
                    analysis.__name__,
                    ", ".join(map(str, locations)),
                )
            raise damage_in(locations, e) from e

    return wrapper


# ─── Checkpoints ─────────────────────────────────────────────────────────────

SEAL = b"distinterp-checkpoint-sha256\n"
"""Leads a checkpoint file: then the SHA-256 of the payload (32 bytes), then the payload (torch.save's)."""


def seal(payload: bytes) -> bytes:
    """A checkpoint's bytes with their digest in front, so a damaged copy is never loaded as state."""
    return SEAL + hashlib.sha256(payload).digest() + payload


def unseal(data: bytes) -> bytes:
    """The payload of sealed bytes, checked against its digest; unsealed bytes (older checkpoints) as is."""
    if not data.startswith(SEAL):
        return data
    digest, payload = data[len(SEAL) : len(SEAL) + 32], data[len(SEAL) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise DamagedCheckpoint("its bytes do not match the SHA-256 it was saved with")
    return payload
