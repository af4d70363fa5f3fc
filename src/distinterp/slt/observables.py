"""devinterp.slt.observables: probe datasets evaluated at every draw on fixed rows (distinterp.data)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from distinterp.chain import observable_loss
from distinterp.data import build_observables, observable_rows, to_obs_id
from distinterp.loss import LossFn, compute_per_token_loss, resolve_loss_fn

__all__ = ["DeterministicShuffledSampler", "Observable", "compute_per_token_loss", "to_obs_id"]


class DeterministicShuffledSampler(Sampler[int]):
    """A fixed shuffled subset of `num_samples` indices, deterministic from seed (the observables' rows)."""

    def __init__(self, data_source: Any, num_samples: int, seed: int = 42):
        self.data_source = data_source
        self.num_samples = num_samples
        self.indices = observable_rows(len(data_source), num_samples, seed, "DeterministicShuffledSampler")

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


class Observable:
    """A probe dataset: fixed input_ids (n_samples, context_length + 1), and its per-token loss at a draw.

    Attributes as devinterp's: obs_id, input_ids, n_samples, context_length, batch_size, batches_per_draw.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        task_name: str,
        batches_per_draw: int,
        batch_size: int,
        context_length: int,
        device: torch.device,
        seed: int = 1337,
        loss_fn: LossFn | None = None,
    ):
        (obs,) = build_observables(
            {task_name: (dataset, batches_per_draw)},
            batch_size=batch_size,
            default_batches_per_draw=batches_per_draw,
            obs_seed=seed,
            seq_len=context_length + 1,
            vocab_size=None,
        )
        self._obs = obs
        self.obs_id = obs.obs_id
        self.batch_size = batch_size
        self.batches_per_draw = batches_per_draw
        self.n_samples = obs.n_samples
        self.context_length = context_length
        self.device = torch.device(device)
        self.loss_fn = resolve_loss_fn(loss_fn)
        self.input_ids = obs.input_ids.to(self.device)

    def compute_loss(self, model: torch.nn.Module) -> torch.Tensor:
        """Per-token loss (n_samples, context_length) of `model` on the fixed rows; call under no_grad."""
        if torch.is_grad_enabled():
            raise RuntimeError("Observable.compute_loss: call it under torch.no_grad()")
        return observable_loss(model, self.loss_fn, self._obs, self.batch_size, self.device)
