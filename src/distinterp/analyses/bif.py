"""Bayesian influence function (BIF): correlations of observable per-token losses across SGLD draws.

devinterp 2.x's `bif()` / `compute_bif()`, streamed: the store is read one chunk (chain, draws) at a time,
and the token-wise result is built from pairs of batch blocks, so peak memory is set by `batch_size`, the
context length and the store's chunk, never by chains x draws x sequences. A token-wise result too large
for memory goes block by block into a zarr group next to the samples and comes back lazily. Under torchrun,
bif() splits the token-wise pairs of blocks round-robin over the ranks and rank 0 returns the result.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
import zarr

from distinterp.analyses.covariance import (
    Moments,
    cross_products,
    normalise_block,
    standardise,
    xr_corrcoef_with_torch_backend,
)
from distinterp.analyses.observables import ObservableLosses as ObservableLosses  # re-exported: its old home
from distinterp.analyses.observables import available_observables as available_observables
from distinterp.errors import AnalysisInputError as AnalysisInputError  # re-exported: its old home
from distinterp.integrity import names_damaged_chunks
from distinterp.parallel.distributed import Runtime
from distinterp.progress import progress_bar
from distinterp.store.source import Samples, samples_of

logger = logging.getLogger(__name__)

CorrelationMethod = Literal["token", "sequence"]
ChainReductionMethod = Literal["stack", "mean"]
MAX_RESULT_BYTES = 1 << 30
"""Token-wise results larger than this are written to zarr and returned lazily instead of held in memory."""
_RESULT_CHUNK_BYTES = 16 << 20
MAX_DENSE_BYTES = 512 << 20
"""Token-wise BIF inputs up to this size (float32 rows x tokens x observations) are standardised in memory
and reduced by one batched matmul per block; larger ones stream through a scratch copy block by block."""


def _index_range(field: str, value: Literal["all"] | Sequence[int], n: int) -> np.ndarray:
    """Row indices into the concatenated observables; 'all' or a sequence of ints in [0, n)."""
    if isinstance(value, str):
        if value != "all":
            raise AnalysisInputError(
                f"compute_bif: {field}: expected 'all' or a sequence of ints, got {value!r}"
            )
        return np.arange(n)
    try:
        items = list(value)
    except TypeError as e:
        raise AnalysisInputError(
            f"compute_bif: {field}: expected 'all' or a sequence of ints, got {value!r}"
        ) from e
    if not items:
        raise AnalysisInputError(f"compute_bif: {field}: is empty")
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, int | np.integer)]
    if bad:
        raise AnalysisInputError(f"compute_bif: {field}: entries must be ints, got {bad[:3]}")
    out = np.asarray(items, dtype=np.int64)
    outside = out[(out < 0) | (out >= n)]
    if outside.size:
        raise AnalysisInputError(
            f"compute_bif: {field}: indices {outside[:5].tolist()} out of bounds; the selected observables "
            f"have {n} sequences (valid: 0..{n - 1})"
        )
    return out


def _choice(field: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise AnalysisInputError(f"{field}: expected one of {list(allowed)}, got {value!r}")


def _check_options(
    correlation_method: Any, reduce_chain_dimension_method: Any, batch_size: Any, field: str
) -> None:
    _choice("correlation_method", correlation_method, ("token", "sequence"))
    _choice("reduce_chain_dimension_method", reduce_chain_dimension_method, ("stack", "mean"))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AnalysisInputError(f"{field}: expected an int >= 1, got {batch_size!r}")


# ─── Working copy: the selected rows, transposed for block reads ─────────────


class _Rows:
    """The rows a BIF needs, as (group, row, token_pos, draw) float32 plus per-(row, token) moments.

    group = chain for 'stack', one chain-mean for 'mean'. Kept in a scratch zarr array chunked
    (1, batch_size, T, draw chunk) so a block of rows is read without touching the others.
    """

    def __init__(
        self, obs: ObservableLosses, rows: np.ndarray, *, mean_chains: bool, block: int, scratch: Path
    ):
        self.obs = obs
        self.rows = rows  # sorted unique indices into the concatenation
        self.groups = 1 if mean_chains else len(obs.chains)
        T, D = obs.context_length, obs.num_draws
        self.data = zarr.create_array(
            zarr.storage.LocalStore(scratch),
            shape=(self.groups, len(rows), T, D),
            chunks=(1, min(block, len(rows)), T, obs.draw_chunk),
            dtype="float32",
            compressors=None,
            fill_value=np.nan,
        )
        means, m2s = [], []
        count = 0
        for key, off, n in zip(obs.keys, obs.offsets, obs.sizes):
            lo, hi = np.searchsorted(rows, [off, off + n])
            if lo == hi:
                continue
            local = rows[lo:hi] - off
            moments = Moments.empty((hi - lo, T))
            for draws in obs.draw_slices():
                if mean_chains:
                    total = np.zeros((draws.stop - draws.start, hi - lo, T))
                    for c in obs.chains:
                        total += obs.read(key, c, draws)[:, local]
                    chunks = [(0, (total / len(obs.chains)).astype(np.float32))]
                else:
                    chunks = [(g, obs.read(key, c, draws)[:, local]) for g, c in enumerate(obs.chains)]
                for g, x in chunks:
                    xt = np.ascontiguousarray(x.transpose(1, 2, 0))  # (rows, T, draws)
                    self.data[g, lo:hi, :, draws] = xt
                    moments.update(xt)
            means.append(moments.mean)
            m2s.append(moments.m2)
            count = moments.count
        self.count = count  # observations per series: groups x draws
        self.mean = np.concatenate(means)
        self.std = (
            np.sqrt(np.concatenate(m2s) / (count - 1)) if count > 1 else np.full_like(self.mean, np.nan)
        )

    def centred_chunks(self, positions: np.ndarray, device: torch.device) -> Iterator[torch.Tensor]:
        """Rows at `positions` minus their means, one (rows, T, draws) tensor per stored chunk."""
        uniq, inverse = np.unique(positions, return_inverse=True)
        contiguous = uniq[-1] - uniq[0] + 1 == len(uniq)
        mean = torch.as_tensor(self.mean[positions, :, None], dtype=torch.float32, device=device)
        for g in range(self.groups):
            for draws in self.obs.draw_slices():
                if contiguous:
                    x = self.data[g, int(uniq[0]) : int(uniq[-1]) + 1, :, draws]
                else:
                    x = self.data.get_orthogonal_selection((g, uniq, slice(None), draws))
                yield torch.as_tensor(np.asarray(x)[inverse], device=device) - mean


def dense_bytes(obs: ObservableLosses, rows: np.ndarray, mean_chains: bool) -> int:
    """Bytes of the rows as standardised float32 (rows, token_pos, observations)."""
    groups = 1 if mean_chains else len(obs.chains)
    return int(len(rows) * obs.context_length * groups * obs.num_draws * 4)


def standardised_rows(
    obs: ObservableLosses, rows: np.ndarray, mean_chains: bool, covariance: bool
) -> np.ndarray:
    """The rows as (rows, token_pos, observations) float32, standardised (see `standardise`) so a token
    pair's correlation (or covariance) is one dot product; observations are (chain, draw), or draws of the
    chain mean."""
    groups = 1 if mean_chains else len(obs.chains)
    T, D = obs.context_length, obs.num_draws
    out = np.empty((len(rows), T, groups * D), dtype=np.float32)
    for key, off, n in zip(obs.keys, obs.offsets, obs.sizes):
        lo, hi = np.searchsorted(rows, [off, off + n])
        if lo == hi:
            continue
        local = rows[lo:hi] - off
        x = np.empty((hi - lo, T, groups, D), dtype=np.float64 if mean_chains else np.float32)
        for draws in obs.draw_slices():
            if mean_chains:
                total = sum(obs.read(key, c, draws)[:, local].astype(np.float64) for c in obs.chains)
                x[:, :, 0, draws] = (
                    (np.asarray(total) / len(obs.chains)).astype(np.float32).transpose(1, 2, 0)
                )
            else:
                for g, c in enumerate(obs.chains):
                    x[:, :, g, draws] = obs.read(key, c, draws)[:, local].transpose(1, 2, 0)
        out[lo:hi] = standardise(x.reshape(hi - lo, T, groups * D), covariance)
    return out


# ─── Results ─────────────────────────────────────────────────────────────────


def _divisor_at_most(n: int, limit: float) -> int:
    return max([d for d in range(1, n + 1) if n % d == 0 and d <= limit] or [1])


class _ZarrResult:
    """A token-wise result written block by block to a zarr group; `dataset()` reopens it lazily."""

    def __init__(self, path: Path, array: zarr.Array[Any]):
        self.path = path
        self.array = array

    @classmethod
    def create(
        cls, path: Path, shape: tuple[int, int, int, int], block: int, coords: dict[str, np.ndarray]
    ) -> _ZarrResult:
        """A fresh group at `path`. Chunks divide `block`, so every block of rows is whole chunks: one writer each."""
        T = shape[2]
        per_row = max(1, T * T * 4)
        c2 = _divisor_at_most(block, _RESULT_CHUNK_BYTES / per_row)
        c1 = _divisor_at_most(block, _RESULT_CHUNK_BYTES / (per_row * c2))
        if path.exists():
            shutil.rmtree(path)
        group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
        for name, values in coords.items():
            dims = ("batch", "position") if name == "input_ids" else (name,)
            group.create_array(name, data=np.asarray(values), dimension_names=dims)
        array = group.create_array(
            "influences",
            shape=shape,
            chunks=(min(c1, shape[0]), min(c2, shape[1]), T, T),
            dtype="float32",
            compressors=None,
            fill_value=np.nan,
            dimension_names=("batch_1", "batch_2", "target_position", "target_position_T"),
        )
        return cls(path, array)

    @classmethod
    def open(cls, path: Path) -> _ZarrResult:
        """The group another rank created, for writing this rank's blocks."""
        return cls(path, zarr.open_array(zarr.storage.LocalStore(path), path="influences", mode="r+"))

    def __setitem__(self, key: tuple[slice, slice], block: np.ndarray) -> None:
        self.array[key] = block

    def dataset(self) -> xr.Dataset:
        return xr.open_dataset(self.path, engine="zarr", consolidated=False, chunks=None)


def default_result_path(samples: xr.DataTree | xr.Dataset, name: str) -> Path:
    """`<store>.<name>.zarr` beside a local store; a new temporary directory when the store has no local path."""
    source = _local_source(samples)
    if source is not None:
        return source.with_name(f"{source.name.removesuffix('.zarr')}.{name}.zarr")
    return Path(tempfile.mkdtemp(prefix="distinterp-")) / f"{name}.zarr"


def _local_source(samples: xr.DataTree | xr.Dataset) -> Path | None:
    """The store's local path, or None (in memory, or a remote URL)."""
    source = str(samples.encoding.get("source", "")) if hasattr(samples, "encoding") else ""
    return Path(source) if source and "://" not in source else None


# ─── BIF ─────────────────────────────────────────────────────────────────────


@names_damaged_chunks
def compute_bif(
    samples: Samples,
    *,
    correlation_method: CorrelationMethod = "token",
    reduce_chain_dimension_method: ChainReductionMethod = "stack",
    loss_keys: Literal["all"] | list[str] = "all",
    batch_index_range_1: Literal["all"] | Sequence[int] = "all",
    batch_index_range_2: Literal["all"] | Sequence[int] = "all",
    average_tokenwise_bif: bool = False,
    compute_covariance: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    allow_partial: bool = False,
    output_path: str | Path | None = None,
    max_result_bytes: int = MAX_RESULT_BYTES,
    runtime: Runtime | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset | None:
    """BIF of a sampling store: Pearson correlation (or covariance) between observable losses over draws.

    devinterp 2.x's compute_bif; ours: `allow_partial` (use complete chains of an unfinished store),
    `output_path` (write the token-wise result there as zarr and return it lazily; done anyway, beside the
    store, when the result exceeds `max_result_bytes`), `runtime` (the ranks that share the token-wise
    blocks, every one calling this; rank 0 returns the result, the others None; default: this process
    alone, which always gets the result). Observables are concatenated along batch in sorted id order;
    'stack' pools (chain, draw) as observations, 'mean' averages chains first. The sequence-level BIF runs
    on rank 0 alone. `samples`: what sample() returned, or the store's path, URL or SampleStore (opened
    lazily, with `storage_options`).
    """
    rt = Runtime() if runtime is None else runtime
    _check_options(correlation_method, reduce_chain_dimension_method, batch_size, "batch_size")
    samples = samples_of(samples, storage_options)
    if loss_keys == "all":
        keys = None
    elif isinstance(loss_keys, str) or not all(isinstance(k, str) for k in loss_keys):
        raise AnalysisInputError(
            f"compute_bif: loss_keys: expected 'all' or a list of observable ids, got {loss_keys!r}"
        )
    else:
        keys = list(loss_keys)
    obs = ObservableLosses.open(samples, keys, allow_partial=allow_partial, what="compute_bif")
    rows_1 = _index_range("batch_index_range_1", batch_index_range_1, obs.num_rows)
    rows_2 = _index_range("batch_index_range_2", batch_index_range_2, obs.num_rows)
    dev = torch.device(device) if device is not None else rt.default_device()
    mean_chains = reduce_chain_dimension_method == "mean"

    if correlation_method == "sequence":
        if not rt.is_coordinator:
            return None
        result: xr.Dataset | None = _sequence_bif(obs, rows_1, rows_2, mean_chains, compute_covariance, dev)
    else:
        n1, n2, T = len(rows_1), len(rows_2), obs.context_length
        big = not average_tokenwise_bif and result_bytes(n1, n2, T) > max_result_bytes
        path = None
        if not average_tokenwise_bif and (output_path is not None or big):
            if output_path is not None:
                path = Path(output_path)
            elif rt.is_coordinator:
                path = default_result_path(samples, "bif")
            path = rt.broadcast(path)  # a temporary directory is rank 0's
            if rt.spans_nodes and output_path is None and _local_source(samples) is None:
                # rank 0's temporary directory is not on the other nodes: rank 0 computes alone
                logger.info("compute_bif: result in a rank-local temporary directory; computing on rank 0")
                if not rt.is_coordinator:
                    return None
                rt = Runtime()
            if rt.is_coordinator:
                logger.info(
                    "compute_bif: writing the token-wise result (%d x %d x %d x %d) to %s", n1, n2, T, T, path
                )
        result = _token_bif(
            obs,
            rows_1,
            rows_2,
            mean_chains,
            compute_covariance,
            average_tokenwise_bif,
            batch_size,
            dev,
            path,
            rt,
        )
    if result is None:
        return None
    result.attrs.update(chains=list(obs.chains), excluded_chains=obs.excluded_chains)
    return result


def _sequence_bif(
    obs: ObservableLosses,
    rows_1: np.ndarray,
    rows_2: np.ndarray,
    mean_chains: bool,
    covariance: bool,
    device: torch.device,
) -> xr.Dataset:
    """Sequence-level BIF: token-mean losses (rows x observations, T times smaller than the store)."""
    rows = np.unique(np.concatenate([rows_1, rows_2]))
    parts = []
    for key, off, n in zip(obs.keys, obs.offsets, obs.sizes):
        lo, hi = np.searchsorted(rows, [off, off + n])
        if lo == hi:
            continue
        local = rows[lo:hi] - off
        per_chain = np.stack(
            [
                np.concatenate(
                    [obs.read(key, c, d)[:, local].mean(axis=-1, dtype=np.float64) for d in obs.draw_slices()]
                )
                for c in obs.chains
            ]
        )  # (chains, draws, rows)
        x = per_chain.mean(axis=0) if mean_chains else per_chain.reshape(-1, hi - lo)
        parts.append(x.T)
    values = np.concatenate(parts)  # (rows, observations)
    pos_1, pos_2 = np.searchsorted(rows, rows_1), np.searchsorted(rows, rows_2)
    seq1 = xr.DataArray(values[pos_1], dims=("batch", "chain_draw"))
    seq2 = xr.DataArray(values[pos_2], dims=("batch", "chain_draw"))
    full = xr_corrcoef_with_torch_backend(seq1, seq2, device=device, compute_covariance=covariance)
    n1 = len(rows_1)
    matrix = full["correlation"].values[:n1, n1:].astype(np.float32)
    return xr.Dataset(
        {"influences": (("batch_1", "batch_2"), matrix), "input_ids": obs.input_ids()},
        coords={"batch_1": rows_1, "batch_2": rows_2},
    )


@torch.no_grad()
def _token_bif(
    obs: ObservableLosses,
    rows_1: np.ndarray,
    rows_2: np.ndarray,
    mean_chains: bool,
    covariance: bool,
    average: bool,
    block: int,
    device: torch.device,
    path: Path | None,
    rt: Runtime,
) -> xr.Dataset | None:
    """Token-wise BIF from pairs of row blocks: sum over stored chunks of centred cross products.

    Every rank of `rt` makes its own scratch copy and moments (pass 1, in a rank-local temporary directory),
    then computes the pairs of blocks k with k % world_size == rank. A zarr result is created by rank 0 and
    each rank writes its own blocks (whole chunks, so one writer per chunk; `path` must be visible to every
    rank); an in-memory result is gathered to rank 0. Rank 0 returns the result, the others None. Each block
    is computed by the same code from the same inputs whichever rank runs it, so the result is bitwise the
    single-process one (given the same device and thread settings).
    """
    n1, n2, T = len(rows_1), len(rows_2), obs.context_length
    positions = np.arange(1, T + 1)
    coords = {
        "batch_1": rows_1,
        "batch_2": rows_2,
        "target_position": positions,
        "target_position_T": positions,
    }
    sink: Any = None
    if path is not None:
        if rt.is_coordinator:
            sink = _ZarrResult.create(
                path, (n1, n2, T, T), block, {**coords, "input_ids": obs.input_ids().values}
            )
        rt.barrier()
        if sink is None:
            sink = _ZarrResult.open(path)
    elif rt.is_coordinator:
        # the token-wise result is held as (n1, T, n2, T), the layout its matmuls write, viewed as (n1, n2, T, T)
        sink = (
            np.empty((n1, n2), np.float32)
            if average
            else np.empty((n1, T, n2, T), np.float32).transpose(0, 2, 1, 3)
        )
    kept: list[tuple[int, int, np.ndarray]] = []  # blocks of an in-memory result computed off rank 0
    rows = np.unique(np.concatenate([rows_1, rows_2]))
    dense = dense_bytes(obs, rows, mean_chains) <= MAX_DENSE_BYTES
    # an in-memory dense result is made a whole row block at a time, straight into its place in the result
    j_block = n2 if dense and sink is not None and not isinstance(sink, _ZarrResult) else block
    if rt.is_distributed:
        j_block = rt.broadcast(j_block)
    pairs = [(i, j) for i in range(0, n1, block) for j in range(0, n2, j_block)]
    mine = pairs[rt.rank :: rt.world_size]
    todo = progress_bar(mine, desc="compute_bif: token blocks", unit="pair", disable=not rt.is_coordinator)
    if dense:
        _dense_token_bif(
            obs,
            rows,
            rows_1,
            rows_2,
            mean_chains,
            covariance,
            average,
            (block, j_block),
            todo,
            sink,
            kept,
            device,
        )
    else:
        _streamed_token_bif(
            obs, rows, rows_1, rows_2, mean_chains, covariance, average, block, todo, sink, kept, device
        )
    if rt.is_distributed:
        logger.info("compute_bif: rank %d computed %d of %d pairs of blocks", rt.rank, len(mine), len(pairs))
    gathered = rt.gather((len(mine), kept))  # to rank 0 only; also waits for every rank's zarr writes
    if gathered is None:
        return None
    for _, blocks in gathered:
        for i, j, values in blocks:
            sink[i : i + len(values), j : j + values.shape[1]] = values
    result = _token_result(sink, obs, rows_1, rows_2, coords, average)
    if rt.is_distributed:
        result.attrs["blocks_per_rank"] = [count for count, _ in gathered]
    return result


def _dense_token_bif(
    obs: ObservableLosses,
    rows: np.ndarray,
    rows_1: np.ndarray,
    rows_2: np.ndarray,
    mean_chains: bool,
    covariance: bool,
    average: bool,
    blocks: tuple[int, int],
    mine: Iterable[tuple[int, int]],
    sink: Any,
    kept: list[tuple[int, int, np.ndarray]],
    device: torch.device,
) -> None:
    """Each of my blocks as one matmul of standardised rows; a whole row block of an in-memory result is
    written straight into its place (the result's own (n1, T, n2, T) buffer)."""
    z = torch.as_tensor(standardised_rows(obs, rows, mean_chains, covariance), device=device)
    pos_1, pos_2 = np.searchsorted(rows, rows_1), np.searchsorted(rows, rows_2)
    z1 = z if np.array_equal(pos_1, np.arange(len(rows))) else z[torch.as_tensor(pos_1, device=device)]
    z2 = z if np.array_equal(pos_2, np.arange(len(rows))) else z[torch.as_tensor(pos_2, device=device)]
    whole_rows = isinstance(sink, np.ndarray) and not average and blocks[1] == len(rows_2)
    buffer = sink.transpose(0, 2, 1, 3) if whole_rows else None  # C-contiguous (n1, T, n2, T)

    def self_pairs_exact(res: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """A series' correlation with itself is 1 exactly (not a float32 sum of squares), as devinterp's
        batch_corrcoef sets its diagonal."""
        ia, jb = np.nonzero(rows_1[i : i + res.shape[0], None] == rows_2[None, j : j + res.shape[1]])
        if covariance or not len(ia):
            return res
        t = torch.arange(res.shape[-1], device=res.device)
        idx = (
            torch.as_tensor(ia, device=res.device)[:, None],
            torch.as_tensor(jb, device=res.device)[:, None],
            t,
            t,
        )
        res[idx] = torch.where(torch.isfinite(res[idx]), 1.0, res[idx])
        return res

    for i, j in mine:
        a, b = z1[i : i + blocks[0]], z2[j : j + blocks[1]]
        if average:  # mean over (s, t) of a_s . b_t = (mean_s a_s) . (mean_t b_t), in float64
            out = (a.double().mean(dim=1) @ b.double().mean(dim=1).T).float()
        elif buffer is not None:
            part = buffer[i : i + len(a)]
            if device.type == "cpu":
                self_pairs_exact(cross_products(a, b, out=torch.from_numpy(part)), i, j)
            else:
                part[...] = self_pairs_exact(cross_products(a, b), i, j).permute(0, 2, 1, 3).cpu().numpy()
            continue
        else:
            out = self_pairs_exact(cross_products(a, b), i, j)
        if sink is None:
            kept.append((i, j, out.cpu().numpy()))
        else:
            sink[i : i + len(a), j : j + len(b)] = out.cpu().numpy()


def _streamed_token_bif(
    obs: ObservableLosses,
    rows: np.ndarray,
    rows_1: np.ndarray,
    rows_2: np.ndarray,
    mean_chains: bool,
    covariance: bool,
    average: bool,
    block: int,
    mine: Iterable[tuple[int, int]],
    sink: Any,
    kept: list[tuple[int, int, np.ndarray]],
    device: torch.device,
) -> None:
    """Each of my blocks from a scratch copy of the rows: sums of centred cross products over its chunks."""
    T = obs.context_length
    with tempfile.TemporaryDirectory(prefix="distinterp-bif-") as scratch:
        work = _Rows(obs, rows, mean_chains=mean_chains, block=block, scratch=Path(scratch) / "rows.zarr")
        pos_1, pos_2 = np.searchsorted(rows, rows_1), np.searchsorted(rows, rows_2)
        std = torch.as_tensor(work.std, dtype=torch.float32, device=device)
        for i, j in mine:
            p1, p2 = pos_1[i : i + block], pos_2[j : j + block]
            sums = torch.zeros((len(p1), len(p2), T, T), dtype=torch.float32, device=device)
            for a, b in zip(work.centred_chunks(p1, device), work.centred_chunks(p2, device)):
                sums += cross_products(a, b)
            stds = (None, None) if covariance else (std[p1], std[p2])
            out = normalise_block(sums, work.count, *stds)
            if average:
                out = out.mean(dim=(-1, -2))
            if sink is None:
                kept.append((i, j, out.cpu().numpy()))
            else:
                sink[i : i + block, j : j + block] = out.cpu().numpy()


def _token_result(
    sink: Any,
    obs: ObservableLosses,
    rows_1: np.ndarray,
    rows_2: np.ndarray,
    coords: dict[str, np.ndarray],
    average: bool,
) -> xr.Dataset:
    """The token-wise result as a Dataset: lazy over the zarr group, or the in-memory array."""
    if isinstance(sink, _ZarrResult):
        return sink.dataset()
    if average:
        return xr.Dataset(
            {"influences": (("batch_1", "batch_2"), sink), "input_ids": obs.input_ids()},
            coords={"batch_1": rows_1, "batch_2": rows_2},
        )
    return xr.Dataset(
        {
            "influences": (("batch_1", "batch_2", "target_position", "target_position_T"), sink),
            "input_ids": obs.input_ids(),
        },
        coords=coords,
    )


def result_bytes(n1: int, n2: int, context_length: int) -> int:
    """Size of a token-wise float32 BIF result (n1 x n2 x T x T)."""
    return int(math.prod((n1, n2, context_length, context_length)) * 4)


def __getattr__(name: str) -> Any:
    """bif(): moved to distinterp.api (sample, then compute: above this module); the old import works."""
    if name in ("bif",):
        from distinterp import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
