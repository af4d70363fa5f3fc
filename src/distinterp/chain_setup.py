"""What every engine and the chain loop share: the working model, its start state, data and settings of
this rank's chains. Below both the engine protocol and the chain loop, so neither imports the other back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distinterp.config import SamplerConfig
from distinterp.data import BatchFeed, ProbeRows
from distinterp.loss import LossFn
from distinterp.noise import DEFAULT_BLOCK, NoiseStream


@dataclass
class ChainSetup:
    """Everything this rank's chains share: the working model, its start state, data and settings."""

    model: torch.nn.Module  # the rank's working copy, on `device`
    start_state: dict[str, torch.Tensor]  # parameters and buffers at the checkpoint
    masks: dict[str, torch.Tensor | None]  # sampled parameters, in noise-draw order
    config: SamplerConfig
    sampling_ids: torch.Tensor  # (rows, seq) int64 on CPU
    observables: list[ProbeRows]
    loss_fn: LossFn
    device: torch.device
    noise: NoiseStream = "devinterp"  # noise.py: devinterp's global stream, or the layout-invariant one
    noise_block: int = DEFAULT_BLOCK
    compile: bool | str = False  # torch.compile the step's forward (a str names the backend)

    def __post_init__(self) -> None:
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in self.masks)

    def restore(self) -> None:
        """Put the working model back at the checkpoint (bitwise), instead of deep-copying it per chain."""
        with torch.no_grad():
            for name, t in _state_tensors(self.model).items():
                t.copy_(self.start_state[name])
            for p in self.model.parameters():
                p.grad = None

    def feed(self, chain: int) -> BatchFeed:
        c = self.config
        seed = c.init_seed if c.match_sampling_input_ids_across_chains else c.init_seed + chain
        return BatchFeed.build(
            self.sampling_ids, c.batch_size, shuffle=c.shuffle, seed=seed, epoch_mode=c.epoch_mode
        )


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        **{f"p:{n}": p.data for n, p in model.named_parameters()},
        **{f"b:{n}": b for n, b in model.named_buffers()},
    }


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every parameter and buffer, to restore before each chain."""
    return {k: v.detach().clone() for k, v in _state_tensors(model).items()}
