"""Every error and warning class distinterp raises, in one module below all others (each is re-exported from
the module it used to live in, so `from distinterp.store import StoreError` keeps working). Bad input is a
ValueError subclass whose message names the setting and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


class DatasetError(ValueError):
    """A dataset or observable given to sample() cannot be used; the message says which and why."""


class NonFiniteLogitsError(ValueError):
    """Raised when a model's logits contain NaN or Inf."""


class WeightRestrictionError(ValueError):
    """A restriction that cannot be resolved on this model; the message lists what is valid."""


class PlanError(ValueError):
    """The requested chains or parallel layout do not fit the job."""


class StoreError(RuntimeError):
    """A store cannot be used as asked; the message names the store and what to do."""


class StoreConfigMismatch(StoreError):
    """The store holds a run with a different configuration; nothing was written to it."""


@dataclass(frozen=True)
class ChunkProblem:
    """One damaged or missing chunk: where it is and what it covers."""

    array: str
    chunk: tuple[int, ...]
    kind: Literal["damaged", "missing"]
    covers: str  # "chain 3, draws 50-99"
    chain: int | None
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return (
            f"{self.kind} {self.array} chunk {'/'.join(map(str, self.chunk)) or 'c'}: {self.covers}{detail}"
        )


class DamagedStoreError(StoreError):
    """Chunks of a store fail their checksum (or are missing); the message names the store, each chunk's
    array, chain and draws, and the rerun that repairs them (`problems` lists them)."""

    def __init__(self, message: str, problems: Sequence[ChunkProblem]):
        super().__init__(message)
        self.problems = list(problems)


class DamagedCheckpoint(ValueError):
    """A checkpoint whose bytes do not match the digest it was saved with (or that cannot be unpickled)."""


class ChainHealthError(Exception):
    """A chain's loss became NaN or Inf (devinterp's sample_single_chain); the chain stops with a warning."""


class IncompleteStoreError(StoreError):
    """An analysis was asked of a store whose chains are not all complete."""


class AnalysisInputError(ValueError):
    """Arguments or a store an analysis cannot use; raised before anything is sampled or written."""


class SourceError(ValueError):
    """A model, tokenizer or dataset named in the settings cannot be loaded; says which setting and what to do."""


class JobError(ValueError):
    """A job cannot run as its settings say; the message names the setting and the fix."""


class RouteError(ValueError):
    """A setting the job cannot honour; the message names it and the fix."""


class SweepError(RuntimeError):
    """A store of a sweep failed on another rank: every rank stops, naming the rank, the store and why."""


class NumericEnvironmentWarning(UserWarning):
    """A store is being continued under another numeric environment than the one it was created in."""


class UnhealthyRunWarning(UserWarning):
    """An analysis ran on a store whose diagnosis is not healthy; the message lists the problems."""
