"""The zarr store: schema, create-or-validate, per-chain buffered writes, progress, and open.

Layout (devinterp 2.x's, so stores interoperate): one flat root group, no coordinates, float fill NaN,
per-chain arrays chunked one chain per chunk, so each chunk has exactly one writer (the rank running
that chain). Metadata is written once, by one process; progress lives in `chain_steps_done` and
`chain_diverged_step`, one chunk per chain, written only by that chain's writer after its data.

A package: location (local/remote, credentials redacted), schema, open (create, validate, open,
progress), writer (the background region writes), recorder (a chain's rows and its divergence rule),
handle (SampleStore: address and schema, what sample()'s chain loop, progress, checkpoints and analyses
receive), source (store_of / samples_of: a path, URL, Location, handle or opened samples, as one thing).
Every name is importable from `distinterp.store` as before the split.
"""

from distinterp.errors import IncompleteStoreError, StoreConfigMismatch, StoreError
from distinterp.store.handle import SampleStore
from distinterp.store.location import Location, redact
from distinterp.store.open import (
    StoreState,
    check_existing,
    check_reachable,
    ensure,
    mark_completed,
    mismatch_message,
    open_tree,
    read_progress,
    read_root_attrs,
    require_reachable,
    require_store,
    write_once,
)
from distinterp.store.recorder import ChainRecorder
from distinterp.store.schema import (
    DIVERGED_STEP,
    LOSS_DTYPE,
    SCHEMA_VERSION,
    STEPS_DONE,
    ArraySpec,
    Schema,
    build_schema,
    identity_hash,
)
from distinterp.store.source import Samples, StoreSource, handles_of, samples_of, store_of
from distinterp.store.writer import WRITE_RETRY_S, StoreWriter

__all__ = [
    "DIVERGED_STEP",
    "LOSS_DTYPE",
    "SCHEMA_VERSION",
    "STEPS_DONE",
    "WRITE_RETRY_S",
    "ArraySpec",
    "ChainRecorder",
    "IncompleteStoreError",
    "Location",
    "SampleStore",
    "Samples",
    "Schema",
    "StoreConfigMismatch",
    "StoreError",
    "StoreSource",
    "StoreState",
    "StoreWriter",
    "build_schema",
    "check_existing",
    "check_reachable",
    "ensure",
    "handles_of",
    "identity_hash",
    "mark_completed",
    "mismatch_message",
    "open_tree",
    "read_progress",
    "read_root_attrs",
    "redact",
    "require_reachable",
    "require_store",
    "samples_of",
    "store_of",
    "write_once",
]
