"""The seam between the chain loop and the ways of executing it.

A `ChainEngine` advances a group of this rank's chains in lockstep: one chain at a time (serial, the
reference), K chains batched on one device, or one chain sharded over an FSDP group. The loop in
`chain.run_chains` owns what a chain means (steps, draws, recording, divergence, checkpoints); an engine
only computes. The Plan picks the engine (`engine_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from distinterp.chain_setup import ChainSetup
    from distinterp.checkpoint import ChainCheckpoint
    from distinterp.config import SamplerConfig
    from distinterp.loss import LossFn
    from distinterp.parallel.plan import Plan


@dataclass(frozen=True)
class StepOutput:
    """One gradient step of the group, one entry per chain (device tensors, never copied to the host)."""

    loss: Sequence[torch.Tensor]  # (batch, token_pos): micro-batch mean, the draw's sampling_loss
    micro: Sequence[torch.Tensor]  # (gas * batch, token_pos) float32: sampling_loss_micro
    input_ids: Sequence[torch.Tensor]  # (gas * batch, seq) int64: sampling_input_ids_micro


class ChainEngine(Protocol):
    """Computes a group of chains' init loss, steps, updates and observables; index i is chains[i]."""

    chains: tuple[int, ...]

    def init_loss(self) -> list[torch.Tensor]:
        """Each chain's init loss (token_pos,) at its start point (with init_noise when set)."""
        ...

    def begin(self, resume: Sequence[ChainCheckpoint | None]) -> None:
        """Put every chain at its start: the checkpoint when given, else the model (+ init_noise)."""
        ...

    def gradient_step(self, step: int) -> StepOutput:
        """Forward and backward on each chain's batches of `step`, at the current parameters."""
        ...

    def update(self) -> list[dict[str, torch.Tensor]] | None:
        """The SGLD update from the last gradients; per-chain metrics_* scalars when save_metrics."""
        ...

    def observe(self) -> list[dict[str, torch.Tensor]]:
        """Each chain's loss_<obs_id> (n_samples, token_pos) on every observable's fixed rows."""
        ...

    def capture(self, i: int, step: int) -> ChainCheckpoint:
        """Chain i's state after `step` steps, to continue it bitwise later."""
        ...

    def drop(self, i: int) -> None:
        """Chain i has diverged: the engine may stop computing it."""
        ...


class EngineFactory(Protocol):
    """An engine class: builds this rank's working model once, then one engine per group of chains."""

    def __call__(self, setup: ChainSetup, chains: tuple[int, ...]) -> ChainEngine: ...

    def working_model(
        self,
        model: torch.nn.Module,
        masks: dict[str, torch.Tensor | None],
        config: SamplerConfig,
        device: torch.device,
        plan: Plan,
    ) -> torch.nn.Module:
        """This rank's working copy of the user's model on `device` (whole, or its shard); bad layouts for
        this engine fail here, before any work."""
        ...

    def preflight(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        masks: dict[str, torch.Tensor | None],
        input_ids: torch.Tensor,
    ) -> None:
        """Refuse, before anything is written, a model this engine would compute wrongly (one forward and
        backward on `input_ids` at most)."""
        ...
