"""The zarr store: schema, create-or-validate, per-chain buffered writes, progress, and open.

Layout (devinterp 2.x's, so stores interoperate): one flat root group, no coordinates, float fill NaN,
per-chain arrays chunked one chain per chunk, so each chunk has exactly one writer (the rank running
that chain). Metadata is written once, by one process; progress lives in `chain_steps_done` and
`chain_diverged_step`, one chunk per chain, written only by that chain's writer after its data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.dtype import get_data_type_from_native_dtype
from zarr.core.metadata import ArrayV3Metadata

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOSS_DTYPE = "float32"
_NAN_FILL_B64 = "AAAAAAAA+H8="  # xarray's _FillValue encoding of NaN
STEPS_DONE = "chain_steps_done"
DIVERGED_STEP = "chain_diverged_step"
WRITE_RETRY_S: tuple[float, ...] = (1, 2, 4, 8, 16)
"""Seconds to wait before each retry of a failed region write (on top of botocore's own retries)."""


class StoreError(RuntimeError):
    """A store cannot be used as asked; the message names the store and what to do."""


class StoreConfigMismatch(StoreError):
    """The store holds a run with a different configuration; nothing was written to it."""


class IncompleteStoreError(StoreError):
    """An analysis was asked of a store whose chains are not all complete."""


# ─── Locations ───────────────────────────────────────────────────────────────

# storage_options keys whose values are secrets (s3fs, gcsfs, adlfs, botocore client_kwargs, http auth).
_SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "client_secret",
        "connection_string",
    }
)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def _find_secrets(options: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(options, dict):
        for k, v in options.items():
            if isinstance(v, str) and str(k).lower() in _SECRET_KEYS and len(v) >= 8:
                found.add(v)
            else:
                found |= _find_secrets(v)
    elif isinstance(options, (list, tuple)):
        for v in options:
            found |= _find_secrets(v)
    return found


def redact(text: str) -> str:
    """text with every credential seen in a Location's storage_options replaced by '***'."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _register_secrets(options: dict[str, Any]) -> None:
    """Remember storage_options' credentials, and redact them from every log record from now on.

    botocore logs signed requests (access key, session token) at DEBUG; a record factory is the one
    hook that sees the records of every logger, so those lines never carry the credentials we were given.
    """
    new = _find_secrets(options) - _secrets
    if not new:
        return
    with _secrets_lock:
        if not _secrets:
            make_record = logging.getLogRecordFactory()

            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = make_record(*args, **kwargs)
                try:
                    message = record.getMessage()
                except (TypeError, ValueError):  # a malformed record: leave it to logging's own error path
                    return record
                if any(secret in message for secret in _secrets):
                    record.msg, record.args = redact(message), None
                return record

            logging.setLogRecordFactory(redacting_factory)
        _secrets.update(new)


@dataclass(frozen=True)
class Location:
    """Where a store lives: a local path or any fsspec URL, with its storage_options (never persisted)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _register_secrets(self.storage_options)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> Path:
        return Path(self.url.removeprefix("file://"))

    def zarr_store(self, read_only: bool = False) -> zarr.abc.store.Store:
        if self.is_local:
            return zarr.storage.LocalStore(self.local_path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.fsspec_options(), read_only=read_only
        )

    def fsspec_options(self) -> dict[str, Any]:
        """storage_options, with botocore's standard retries on S3 unless the user chose their own."""
        options = dict(self.storage_options)
        if self.url.startswith(("s3://", "s3a://")):
            config = dict(options.get("config_kwargs", {}))
            config.setdefault("retries", {"max_attempts": 10, "mode": "standard"})
            options["config_kwargs"] = config
        return options

    def __str__(self) -> str:
        """The URL for messages: a password in it (scheme://user:password@host) is masked."""
        return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", self.url)


# ─── Schema ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: shape, named dims, dtype and chunks."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str
    chunks: tuple[int, ...]
    fill: float | int | None = None  # None: NaN for floats (and complex), 0 for ints
    attrs: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> ArrayV3Metadata:
        np_dtype = np.dtype(self.dtype)
        if self.fill is not None:
            fill = np_dtype.type(self.fill)
        elif np_dtype.kind in "fc":
            fill = np_dtype.type(complex(np.nan, np.nan) if np_dtype.kind == "c" else np.nan)
        else:
            fill = np_dtype.type(0)
        attrs = ({"_FillValue": _NAN_FILL_B64} if np_dtype.kind in "fc" else {}) | self.attrs
        return ArrayV3Metadata(
            shape=self.shape,
            data_type=get_data_type_from_native_dtype(np_dtype),
            chunk_grid=RegularChunkGrid(chunk_shape=self.chunks),
            chunk_key_encoding=DefaultChunkKeyEncoding(separator="/"),
            codecs=[BytesCodec(), ZstdCodec(level=0, checksum=True)],  # zstd's frame checksum: verified on read
            fill_value=fill,
            attributes=attrs or None,
            dimension_names=self.dims,
        )


@dataclass(frozen=True)
class Schema:
    """Every array of a sampling store, declared up front, plus the root attributes."""

    arrays: dict[str, ArraySpec]
    attrs: dict[str, Any]
    num_chains: int
    num_steps: int
    step_chunk: int  # steps per chunk along `step` (= draws per chunk along `draw`)

    @property
    def config_hash(self) -> str:
        return str(self.attrs["distinterp"]["config_hash"])

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.attrs["distinterp"]["identity"])


def identity_hash(identity: dict[str, Any]) -> str:
    """Stable hash of a run's identity (everything that changes what a chain writes)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def build_schema(
    *,
    sampler: dict[str, Any],
    num_chains: int,
    num_draws: int,
    num_steps: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    context_length: int,
    observables: Iterable[tuple[str, int, int]],  # (obs_id, n_samples, batches_per_draw)
    metric_fields: Iterable[str] = (),
    metrics_numel: int | None = None,
    identity: dict[str, Any],
) -> Schema:
    """The reference schema (devinterp 2.x) plus the per-chain progress arrays."""
    chunk = min(50, num_draws)
    micro = gradient_accumulation_steps * batch_size
    T = context_length
    arrays: dict[str, ArraySpec] = {
        "init_loss": ArraySpec((num_chains, T), ("chain", "token_pos"), LOSS_DTYPE, (1, T)),
        "sampling_loss": ArraySpec(
            (num_chains, num_draws, batch_size, T),
            ("chain", "draw", "batch", "token_pos"),
            LOSS_DTYPE,
            (1, chunk, batch_size, T),
        ),
        "sampling_loss_micro": ArraySpec(
            (num_chains, num_steps, micro, T),
            ("chain", "step", "batch_sampling", "token_pos"),
            LOSS_DTYPE,
            (1, chunk, micro, T),
        ),
        "sampling_input_ids_micro": ArraySpec(
            (num_chains, num_steps, micro, T + 1),
            ("chain", "step", "batch_sampling", "token"),
            "int64",
            (1, chunk, micro, T + 1),
        ),
    }
    obs_meta = []
    for obs_id, n_samples, bpd in observables:
        dim = f"batch_{obs_id}"
        arrays[f"loss_{obs_id}"] = ArraySpec(
            (num_chains, num_draws, n_samples, T),
            ("chain", "draw", dim, "token_pos"),
            LOSS_DTYPE,
            (1, chunk, n_samples, T),
        )
        arrays[f"input_ids_{obs_id}"] = ArraySpec(
            (n_samples, T + 1), (dim, "token"), "int64", (n_samples, T + 1)
        )
        obs_meta.append({"type": "ObserveDifferentDataset", "obs_id": obs_id, "batches_per_draw": bpd})
    for name in metric_fields:
        arrays[f"metrics_{name}"] = ArraySpec(
            (num_chains, num_steps), ("chain", "step"), "float32", (1, chunk)
        )
    arrays["n_beta"] = ArraySpec((), (), "float64", ())
    arrays[STEPS_DONE] = ArraySpec((num_chains,), ("chain",), "int64", (1,), fill=0)
    arrays[DIVERGED_STEP] = ArraySpec((num_chains,), ("chain",), "int64", (1,), fill=-1)

    attrs: dict[str, Any] = {
        "metadata": {
            "config": {
                "sampler": sampler,
                "observables": obs_meta,
                "chain_buffer_size": chunk,
                "shared_observable_dims": ["token", "token_pos"],
                "tokenizer_context_length": T + 1,
            }
        },
        "distinterp": {
            "schema_version": SCHEMA_VERSION,
            "config_hash": identity_hash(identity),
            "identity": identity,
            "num_steps": num_steps,
        },
    }
    if metrics_numel is not None:
        attrs["metrics_numel"] = metrics_numel
    return Schema(arrays=arrays, attrs=attrs, num_chains=num_chains, num_steps=num_steps, step_chunk=chunk)


# ─── Create, validate, open ──────────────────────────────────────────────────


def _diff(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        s, c = stored.get(key), current.get(key)
        if isinstance(s, dict) and isinstance(c, dict):
            out += _diff(s, c, f"{prefix}{key}.")
        elif s != c:
            out.append(f"  {prefix}{key}: stored={s!r}, current={c!r}")
    return out


def mismatch_message(location: Location, diffs: list[str]) -> str:
    """devinterp's wording ("Output path '...' has a different sampler config:", which code matches on),
    then every field that differs (sampler settings, data, model, masks, loss_fn) and what to do."""
    delete = f" or delete it (rm -rf '{location}')" if location.is_local else " or delete it"
    return (
        f"Output path '{location}' has a different sampler config:\n"
        + "\n".join(diffs)
        + f"\nIt was left untouched. Rerun with the stored settings to continue it, choose another output_path{delete}."
    )


def check_reachable(location: Location) -> bool:
    """Fail fast, in one line, when a remote store's endpoint does not answer (a wrong endpoint_url, a server
    that is down): one quick request, where botocore's standard retries would take a minute in silence.
    Returns whether a store (its zarr.json) is there."""
    if location.is_local:
        return (location.local_path / "zarr.json").is_file()
    import fsspec

    protocol, _, path = location.url.partition("://")
    options = location.fsspec_options()
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs", {}))
        config.update(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20)
        options["config_kwargs"] = config
    try:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        fs.info(f"{path.rstrip('/')}/zarr.json")
    except FileNotFoundError:  # reachable; no store there yet (but on S3 the bucket must exist)
        from distinterp.remote import check_bucket

        check_bucket(fs, location, path)
        return False
    except Exception as e:  # botocore, aiohttp and OSError types: the endpoint, credentials or bucket
        endpoint = options.get("client_kwargs", {}).get("endpoint_url", "the default endpoint")
        raise StoreError(
            f"{location}: cannot reach it at {endpoint} ({type(e).__name__}: {redact(str(e))}); check "
            "output_path and storage_options (client_kwargs.endpoint_url, bucket; credentials: prefer AWS_* "
            "variables) and that the server is up"
        ) from e
    return True


def read_root_attrs(location: Location) -> dict[str, Any] | None:
    """The root group's attributes, or None when no store exists there yet."""
    check_reachable(location)
    try:
        group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except Exception as e:  # wrong endpoint/credentials, no bucket, outage: botocore, aiohttp, OSError
        raise StoreError(
            f"{location}: cannot be read ({type(e).__name__}: {redact(str(e))}); check output_path and "
            "storage_options (endpoint_url, credentials: prefer AWS_* variables)"
        ) from e
    return dict(group.attrs)


@dataclass(frozen=True)
class StoreState:
    """What an existing store says about itself when compared with the current run."""

    exists: bool
    completed: bool
    foreign: bool = False  # written by devinterp 2.x (no distinterp attributes)


def check_existing(location: Location, schema: Schema) -> StoreState:
    """Refuse a store written with another configuration; report whether it exists and is complete."""
    attrs = read_root_attrs(location)
    if attrs is None:
        return StoreState(exists=False, completed=False)
    ours = attrs.get("distinterp")
    completed = attrs.get("completed") == 1
    if ours is None:
        stored_sampler = attrs.get("metadata", {}).get("config", {}).get("sampler")
        current = schema.attrs["metadata"]["config"]["sampler"]
        if stored_sampler is None:
            raise StoreError(f"{location}: exists but is not a sampling store; choose another output_path")
        diffs = _diff(stored_sampler, current)
        if diffs:
            raise StoreConfigMismatch(mismatch_message(location, diffs))
        if not completed:
            raise StoreConfigMismatch(
                f"Output path '{location}' holds an incomplete devinterp run\nIt was left untouched; choose "
                "another output_path or delete it."
            )
        return StoreState(exists=True, completed=True, foreign=True)
    if ours.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{location}: has distinterp schema version {ours.get('schema_version')}, this version writes "
            f"{SCHEMA_VERSION}; use a new output_path"
        )
    if ours.get("config_hash") != schema.config_hash:
        diffs = _diff(ours.get("identity", {}), schema.identity)
        raise StoreConfigMismatch(mismatch_message(location, diffs or ["  (identity hash differs)"]))
    return StoreState(exists=True, completed=completed)


def ensure(location: Location, schema: Schema) -> None:
    """Create the root group and any declared array that is missing; idempotent, and safe against a
    concurrent creator of the same run or a creator killed half-way (each metadata write is atomic)."""
    store = location.zarr_store()
    try:
        root = zarr.open_group(store, mode="w-", zarr_format=3, attributes=schema.attrs)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        check_existing(location, schema)  # raced with another creator, or resuming: same config or refuse
        root = zarr.open_group(store, mode="r+")
    existing = set(root.array_keys())
    missing = {name: spec.metadata() for name, spec in schema.arrays.items() if name not in existing}
    if missing:
        with contextlib.suppress(
            zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError, FileExistsError
        ):
            dict(root.create_hierarchy(missing, overwrite=False))
    attrs = read_root_attrs(location)
    if attrs is None or attrs.get("distinterp", {}).get("config_hash") != schema.config_hash:
        raise StoreConfigMismatch(
            mismatch_message(
                location, ["  another run with a different configuration created it concurrently"]
            )
        )


def write_once(location: Location, name: str, value: np.ndarray) -> None:
    """Write a whole small array (observable input ids, n_beta): by the coordinator only."""
    arr = zarr.open_array(location.zarr_store(), path=name, mode="r+", config={"write_empty_chunks": True})
    arr[...] = value


def open_tree(location: Location) -> xr.DataTree:
    """The store as a lazily loaded DataTree (as devinterp's sample() returns)."""
    if location.is_local:
        return xr.open_datatree(str(location.local_path), engine="zarr", consolidated=False)
    return xr.open_datatree(
        location.url, engine="zarr", consolidated=False, storage_options=location.fsspec_options()
    )


def read_progress(location: Location) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain (steps durably written, step at which the chain diverged or -1)."""
    store = location.zarr_store(read_only=True)
    steps = zarr.open_array(store, path=STEPS_DONE, mode="r")[...]
    diverged = zarr.open_array(store, path=DIVERGED_STEP, mode="r")[...]
    return np.asarray(steps), np.asarray(diverged)


def mark_completed(location: Location) -> None:
    """Set the reference's `completed: 1` flag once every chain is done."""
    group = zarr.open_group(location.zarr_store(), mode="r+")
    group.attrs["completed"] = 1


# ─── Writing ─────────────────────────────────────────────────────────────────


class StoreWriter:
    """Background writer shared by this rank's chains: writes run in order on one thread, bounded queue.

    A failed region write is retried with exponential backoff (writes are idempotent: the same bytes);
    after the last attempt the error names the store and what is durably complete, and every later write
    is refused, so progress never advances past a chunk that was not written.
    """

    def __init__(
        self,
        location: Location,
        schema: Schema,
        max_pending: int = 4,
        retry_s: tuple[float, ...] | None = None,
    ):
        store = location.zarr_store()
        self.location = location
        self.schema = schema
        self.arrays = {  # every chunk stored, even one equal to the fill value: a missing chunk is then a loss
            name: zarr.open_array(store, path=name, mode="r+", config={"write_empty_chunks": True})
            for name in schema.arrays
        }
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distinterp-writer")
        self._pending: list[Future[None]] = []
        self._sem = threading.BoundedSemaphore(max_pending)
        self.retry_s = WRITE_RETRY_S if retry_s is None else retry_s
        self._failed: StoreError | None = None
        self.steps_written: dict[int, int] = {}  # chain -> steps durably recorded by this writer

    def submit(self, writes: list[Any]) -> None:
        """Queue region writes; they land in submission order. Raises an earlier write's error."""
        self._raise_failed()
        self._sem.acquire()
        fut = self._pool.submit(self._write, writes)
        fut.add_done_callback(lambda _: self._sem.release())
        self._pending.append(fut)

    def _write(self, writes: list[Any]) -> None:
        """Each entry is (array name, region, value) or a callable (a checkpoint save), run in order."""
        if self._failed is not None:
            raise self._failed
        for op in writes:
            name, region, value = op if isinstance(op, tuple) else (getattr(op, "__name__", "op"), (), None)
            for attempt in range(len(self.retry_s) + 1):
                try:
                    if isinstance(op, tuple):
                        self.arrays[name][region] = value
                        if name == STEPS_DONE:
                            self.steps_written[int(region[0].start)] = int(value[0])
                    else:
                        op()
                    break
                except Exception as e:  # storage back ends raise many types (botocore, aiohttp, OSError)
                    if attempt == len(self.retry_s):
                        self._failed = StoreError(self._failure(name, region, e))
                        raise self._failed from e
                    logger.warning(
                        "write of %s to %s failed (%s: %s); retry %d of %d in %.1f s",
                        name,
                        self.location,
                        type(e).__name__,
                        e,
                        attempt + 1,
                        len(self.retry_s),
                        self.retry_s[attempt],
                    )
                    time.sleep(self.retry_s[attempt])

    def _failure(self, name: str, region: tuple[Any, ...], error: BaseException) -> str:
        try:
            steps, _ = read_progress(self.location)
            done = [int(c) for c in np.flatnonzero(steps >= self.schema.num_steps)]
            state = f"complete chains: {done}; steps done per chain: {steps.tolist()}"
        except Exception:  # noqa: BLE001 - the store may be unreachable
            mine = ", ".join(
                f"chain {c}: {s}/{self.schema.num_steps} steps" for c, s in sorted(self.steps_written.items())
            )
            state = (
                "the store's progress could not be read (unreachable); complete chains and steps durably "
                f"written by this process: {mine or 'none'}"
            )
        return (
            f"writing {name}{list(region)!s} to {self.location} failed after {len(self.retry_s) + 1} attempts: "
            f"{type(error).__name__}: {redact(str(error))}. {state}. Nothing durable was lost: rerun the same command once the "
            "store is reachable and it continues."
        )

    def _raise_failed(self) -> None:
        still = []
        for fut in self._pending:
            if fut.done():
                fut.result()  # re-raises a write error here, in the sampling thread
            else:
                still.append(fut)
        self._pending = still

    def close(self) -> None:
        """Wait for every queued write; raise the first error."""
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)


class ChainRecorder:
    """Buffers one chain's rows on the device and hands whole chunks to the writer, then its progress.

    Rows stay device tensors until a flush (every `step_chunk` steps), so a step never waits for the host.
    A flush copies the chunk once and finds the first non-finite loss there: the chain diverged at that
    step; rows after it are dropped (they stay NaN in the store) and the chain counts as finished.
    `writer=None` records nothing (an FSDP rank that is not its group's writer) but still finds divergence.
    """

    def __init__(
        self,
        schema: Schema,
        writer: StoreWriter | None,
        chain: int,
        *,
        num_burnin_steps: int,
        num_steps_bw_draws: int,
    ):
        self.schema = schema
        self.writer = writer
        self.chain = chain
        self.burnin = num_burnin_steps
        self.every = num_steps_bw_draws
        self.chunk = schema.step_chunk
        # name -> [(step, row)], in step order; "before" rows are the step's loss and inputs, "after" rows
        # come from the update (metrics) and the draw, which a step whose loss is non-finite never reaches.
        self._rows: dict[str, list[tuple[int, torch.Tensor | np.ndarray]]] = {}
        self._after: set[str] = set()
        self._checks: list[tuple[int, bool, torch.Tensor]] = []  # (step, is_loss_check, all-finite flag)
        self._first_step = 0
        self._first_draw = 0
        self.diverged_at: int | None = None
        self.on_flush: Any = None  # steps_done -> op to run after the data, before progress (a checkpoint)

    def resume_at(self, step: int) -> None:
        """Continue a chain whose rows before `step` are durable in the store."""
        self._first_step = step
        self._first_draw = max(0, -(-(step - self.burnin) // self.every))

    def init_loss(self, value: torch.Tensor) -> None:
        self._submit([("init_loss", (self.chain, slice(None)), _np(value, np.float32))])

    def step(self, step: int, values: dict[str, torch.Tensor], *, loss: torch.Tensor | None = None) -> None:
        """Rows of `step` along the step dim; `loss` (the step's sampling loss) is checked at the flush."""
        self._add(step, values, after=False)
        if loss is not None:
            self._checks.append((step, True, torch.isfinite(loss).all()))

    def metrics(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Rows of `step` from its update (metrics_*), dropped when the step's loss was non-finite."""
        self._add(step, values, after=True)

    def draw(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Rows of the draw taken at `step`; a non-finite observable loss ends the chain there."""
        self._add(step, values, after=True)
        obs = [v for k, v in values.items() if k != "sampling_loss"]
        if obs:
            self._checks.append((step, False, torch.stack([torch.isfinite(v).all() for v in obs]).all()))

    def _add(self, step: int, values: dict[str, torch.Tensor], *, after: bool) -> None:
        for name, v in values.items():
            self._rows.setdefault(name, []).append((step, v.detach() if isinstance(v, torch.Tensor) else v))
            if after:
                self._after.add(name)

    def end_step(self, step: int) -> None:
        """Flush at every chunk boundary and at the last step."""
        done = step + 1
        if done % self.chunk == 0 or done == self.schema.num_steps:
            self.flush(done)

    def stop(self, step: int) -> None:
        """The chain stopped at `step` (its loss function raised on non-finite logits): flush what it has."""
        self.flush(step + 1, stopped_at=step)

    def flush(self, steps_done: int, stopped_at: int | None = None) -> None:
        loss_bad, draw_bad = self._first_non_finite()
        ends = [s for s in (loss_bad, draw_bad, stopped_at) if s is not None]
        if ends:
            self.diverged_at = min(ends)
            steps_done = self.diverged_at + 1

        def kept(name: str, step: int) -> bool:
            if step >= steps_done:
                return False
            return not (step == loss_bad and name in self._after)

        writes: list[Any] = []
        n_draws = 0
        for name, rows in self._rows.items():
            values = [v for s, v in rows if kept(name, s)]
            if not values:
                continue
            is_draw = self.schema.arrays[name].dims[1] == "draw"
            start = self._first_draw if is_draw else self._first_step
            if is_draw:
                n_draws = max(n_draws, len(values))
            stacked = torch.stack(values) if isinstance(values[0], torch.Tensor) else np.stack(values)
            block = _np(stacked, self.schema.arrays[name].dtype)
            writes.append((name, (self.chain, slice(start, start + len(values))), block))
        if self.diverged_at is not None:
            writes.append(
                (DIVERGED_STEP, (slice(self.chain, self.chain + 1),), np.array([self.diverged_at], np.int64))
            )
            steps_done = self.schema.num_steps  # a diverged chain is finished; its later rows stay NaN
        elif self.on_flush is not None and steps_done < self.schema.num_steps:
            op = self.on_flush(steps_done)
            if op is not None:
                writes.append(op)
        writes.append((STEPS_DONE, (slice(self.chain, self.chain + 1),), np.array([steps_done], np.int64)))
        self._submit(writes)
        self._first_step = steps_done
        self._first_draw += n_draws
        self._rows = {}
        self._checks = []

    def _first_non_finite(self) -> tuple[int | None, int | None]:
        """First step of this chunk with a non-finite sampling loss, and first draw with a non-finite
        observable: one host copy for the whole chunk."""
        if not self._checks:
            return None, None
        flags = torch.stack([f for _, _, f in self._checks]).cpu().tolist()
        loss_bad = next((s for (s, is_loss, _), ok in zip(self._checks, flags) if is_loss and not ok), None)
        draw_bad = next(
            (s for (s, is_loss, _), ok in zip(self._checks, flags) if not is_loss and not ok), None
        )
        return loss_bad, draw_bad

    def _submit(self, writes: list[Any]) -> None:
        if self.writer is not None:
            self.writer.submit(writes)
            return
        for op in writes:  # a non-writer rank records nothing but saves its own checkpoint shard
            if callable(op):
                op()


def _np(value: torch.Tensor | np.ndarray, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu").numpy()
    return np.asarray(value, dtype=dtype)
