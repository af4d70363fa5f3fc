"""Per-chain checkpoints, so a preempted chain continues mid-way and still writes the same bytes.

A checkpoint holds what the next step depends on: the sampled parameters, RMSprop state, the RNG
states (torch CPU/CUDA, numpy, python) and, with save_metrics, the previous point of the MALA acceptance. The data order is a function of the step index, so it needs
nothing. Checkpoints live beside the store (`<store>.checkpoints/chain_<c>.pt`, and the one before it as
`chain_<c>.prev.pt`), one writer each, written atomically after the data they cover, and are deleted when
the store completes.
"""

from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from distinterp.integrity import seal, unseal
from distinterp.paths import sibling
from distinterp.store import Location, SampleStore
from distinterp.update import ParamSlot


@dataclass(frozen=True)
class ChainCheckpoint:
    """The state of one chain after `step` SGLD steps."""

    step: int
    params: dict[str, torch.Tensor]
    square_avg: dict[str, torch.Tensor]
    rng: dict[str, Any]
    mala: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = (
        None  # save_metrics: (theta, grad U) at `step`
    )
    mala_loss: torch.Tensor | None = None  # save_metrics: the loss part's previous minibatch loss

    @classmethod
    def capture(cls, step: int, slots: list[ParamSlot], device: torch.device) -> ChainCheckpoint:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        return cls(
            step=step,
            params={s.name: s.param.detach().to("cpu", copy=True) for s in slots},
            square_avg={
                s.name: s.square_avg.detach().to("cpu", copy=True) for s in slots if s.square_avg is not None
            },
            rng=rng,
            mala={
                s.name: (s.mala_prev[0].to("cpu", copy=True), s.mala_prev[1].to("cpu", copy=True))
                for s in slots
                if s.mala_prev is not None
            }
            or None,
        )

    def restore(self, slots: list[ParamSlot], device: torch.device) -> None:
        """Put parameters, RMSprop state and RNG streams back exactly as they were at `step`."""
        with torch.no_grad():
            for s in slots:
                s.param.copy_(self.params[s.name])
                if s.name in self.square_avg:
                    s.square_avg = self.square_avg[s.name].to(s.param.device)
                if self.mala and s.name in self.mala:
                    s.mala_prev = tuple(t.to(s.param.device) for t in self.mala[s.name])  # type: ignore[assignment]
        torch.set_rng_state(self.rng["torch"])
        np.random.set_state(self.rng["numpy"])
        random.setstate(self.rng["python"])
        if "cuda" in self.rng and device.type == "cuda":
            torch.cuda.set_rng_state(self.rng["cuda"], device)


class CheckpointStore:
    """Reads and writes the chain checkpoints that belong to one store.

    With `shard=(r, k)` (a chain sharded over k ranks) each rank saves only its shard, as
    `chain_<c>/step_<s>.shard_<r>_of_<k>.pt`; a step counts once all k shards of it exist. A rank deletes
    its own shards older than the two newest steps that count, so a complete step that the store's
    progress covers always remains (the newest may be saved just before the progress that covers it).
    """

    def __init__(self, store: SampleStore | Location, shard: tuple[int, int] | None = None):
        location = store.location if isinstance(store, SampleStore) else store
        self.url = sibling(location.url, "checkpoints")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **location.fsspec_options())
        self.shard = shard

    def _path(self, chain: int) -> str:
        return f"{self.root}/chain_{chain}.pt"

    def _prev_path(self, chain: int) -> str:
        return f"{self.root}/chain_{chain}.prev.pt"

    def _shard_path(self, chain: int, step: int, rank: int) -> str:
        assert self.shard is not None
        return f"{self.root}/chain_{chain}/step_{step:09d}.shard_{rank}_of_{self.shard[1]}.pt"

    def save(self, chain: int, ckpt: ChainCheckpoint) -> None:
        buf = io.BytesIO()
        torch.save(ckpt.__dict__, buf)
        data = seal(buf.getvalue())  # its digest in front: a damaged copy is skipped, never loaded
        if self.shard is None:
            # the newest checkpoint may be saved just before the progress that covers it, and a kill in
            # between must not cost the chain its start: the previous one stays until the next save
            if self.fs.exists(self._path(chain)):
                self.fs.mv(self._path(chain), self._prev_path(chain))
            self._write(self._path(chain), data)
            return
        rank = self.shard[0]
        self._write(self._shard_path(chain, ckpt.step, rank), data)
        keep = self._complete_steps(chain)[-2:]
        for step in self._shard_steps(chain).get(rank, []):
            if len(keep) == 2 and step < keep[0]:
                self.fs.rm(self._shard_path(chain, step, rank))

    def _write(self, path: str, data: bytes) -> None:
        """Atomic: a reader sees the old checkpoint or the new one (Location.write_atomic locally; one PUT,
        atomic on object stores, through this store's file system otherwise)."""
        if isinstance(self.fs, LocalFileSystem):
            Location(path).write_atomic(data)
        else:
            self.fs.pipe_file(path, data)

    def _shard_steps(self, chain: int) -> dict[int, list[int]]:
        """{shard rank: steps it has saved} for this layout's shards of `chain`."""
        assert self.shard is not None
        try:
            names = [n.rsplit("/", 1)[-1] for n in self.fs.ls(f"{self.root}/chain_{chain}", detail=False)]
        except FileNotFoundError:
            return {}
        out: dict[int, list[int]] = {}
        suffix = f"_of_{self.shard[1]}.pt"
        for name in names:
            if name.startswith("step_") and name.endswith(suffix):
                step, rank = name[len("step_") : -len(suffix)].split(".shard_")
                out.setdefault(int(rank), []).append(int(step))
        return out

    def _complete_steps(self, chain: int) -> list[int]:
        """Steps of `chain` for which every shard is durable, ascending."""
        assert self.shard is not None
        per_rank = self._shard_steps(chain)
        sets = [set(per_rank.get(r, [])) for r in range(self.shard[1])]
        return sorted(set.intersection(*sets)) if sets else []

    def load(self, chain: int, at_most: int | None = None) -> ChainCheckpoint | None:
        """The chain's newest intact checkpoint at or before `at_most` (the steps the store holds), or None;
        sharded: this rank's shard of the newest such step whose every shard is intact. A damaged checkpoint
        is skipped with a warning: the previous good one is used, or the chain starts from its beginning."""
        if self.shard is None:
            for path in (self._path(chain), self._prev_path(chain)):
                ckpt = self._read(path, chain)
                if ckpt is not None and (at_most is None or ckpt.step <= at_most):
                    return ckpt
            return None
        complete = [s for s in self._complete_steps(chain) if at_most is None or s <= at_most]
        for step in reversed(complete):  # every rank of the chain checks every shard: all pick one step
            shards = [self._read(self._shard_path(chain, step, r), chain) for r in range(self.shard[1])]
            if all(s is not None for s in shards):
                return shards[self.shard[0]]
        return None

    def _read(self, path: str, chain: int) -> ChainCheckpoint | None:
        """The checkpoint at path; None when absent or damaged (warned)."""
        try:
            with self.fs.open(path, "rb") as f:
                payload = unseal(f.read())
            state = torch.load(io.BytesIO(payload), weights_only=False)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a digest mismatch, or bytes torch cannot unpickle
            warnings.warn(
                f"checkpoint {path} of chain {chain} is damaged ({type(e).__name__}: {e}); skipped: the "
                "chain continues from an earlier good checkpoint or from its start",
                stacklevel=3,
            )
            return None
        return ChainCheckpoint(**state)

    def clear(self) -> None:
        """Remove every checkpoint (once the store is complete)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
