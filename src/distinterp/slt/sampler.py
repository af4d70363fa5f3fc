"""devinterp 2.x's `sample_single_chain`: one SGLD chain in a custom loop, with callbacks.

For users who bring their own evaluate callable, optimizer or callbacks. It runs in this process only
(no store, no ranks), with devinterp's protocol and order: data order (distinterp.data.epoch_order),
seeding (distinterp.chain.seed_everything) and the update (any torch optimizer; distinterp.optim's
step with distinterp.update.sgld_step) are the ones `sample()` uses, so a chain gives the same numbers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from distinterp.chain import seed_everything
from distinterp.config import EpochMode
from distinterp.data import DatasetError, epoch_order
from distinterp.errors import ChainHealthError as ChainHealthError  # its old home
from distinterp.loss import NonFiniteLogitsError, is_transformer_lens_model, to_device
from distinterp.masks import ParamMasks as ParamMasks  # one definition, in masks
from distinterp.optim import SGLD

__all__ = [
    "ChainHealthError",
    "MicroCallback",
    "ParamMasks",
    "StepCallback",
    "calculate_num_steps",
    "is_transformer_lens_model",
    "sample_single_chain",
    "set_seed",
]


class StepCallback(Protocol):
    """Called once per SGLD step, after optimizer.step() and before zero_grad()."""

    def __call__(self, chain: int, step: int, optimizer: torch.optim.Optimizer) -> None: ...


class MicroCallback(Protocol):
    """Called once per micro-batch (inside the gradient accumulation loop)."""

    def __call__(
        self, loss: torch.Tensor, input_ids: torch.Tensor, chain: int, step: int, micro_step: int
    ) -> None: ...


def calculate_num_steps(*, num_draws: int, num_steps_bw_draws: int, num_burnin_steps: int) -> int:
    """SGLD steps per chain: burn-in plus draws times steps between draws."""
    return num_draws * num_steps_bw_draws + num_burnin_steps


def set_seed(seed: int, device: str | None = None) -> None:
    """Seed python, numpy and torch (and CUDA when device is cuda)."""
    seed_everything(seed, torch.device(device or "cpu"))


def _batch_rows(order: torch.Tensor, num_batches: int, epoch_mode: EpochMode) -> Iterator[list[int]]:
    """Row indices of each batch: "cycle" replays the first epoch, "once" refuses an epoch that is too short."""
    if epoch_mode not in ("cycle", "once"):
        raise ValueError(f"epoch_mode: expected 'cycle' or 'once', got {epoch_mode!r}")
    if len(order) == 0:
        raise DatasetError(
            f"dataset: has fewer rows than batch_size={order.shape[1]}; lower batch_size or add rows"
        )
    if epoch_mode == "once" and len(order) < num_batches:
        raise DatasetError(
            f"Dataset too small: need {num_batches} batches, have {len(order)}. "
            "Use epoch_mode='cycle' or a larger dataset."
        )
    return (order[k % len(order)].tolist() for k in range(num_batches))


def sample_single_chain(
    ref_model: torch.nn.Module,
    dataset: torch.utils.data.Dataset[Any],
    evaluate: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]],
    param_masks: ParamMasks,
    num_draws: int = 100,
    num_burnin_steps: int = 0,
    num_steps_bw_draws: int = 1,
    gradient_accumulation_steps: int = 1,
    sampling_method: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] = SGLD,
    sampling_method_kwargs: dict[str, Any] | None = None,
    chain: int = 0,
    seed: int | None = None,
    dataloader_seed: int | None = None,
    device: str = "cpu",
    callbacks: list[Callable[..., Any]] | None = None,
    step_callback: StepCallback | None = None,
    micro_callback: MicroCallback | None = None,
    batch_size: int = 32,
    init_noise: float | None = None,
    shuffle: bool = True,
    epoch_mode: EpochMode = "cycle",
) -> None:
    """Sample one SGLD chain from a deep copy of `ref_model`, reporting through the callbacks.

    Per step: `evaluate(model, batch)` -> (per-token loss, extras) on each of the step's micro-batches
    (`micro_callback` sees each), backward of their mean, `optimizer.step()`, `step_callback`; at draw
    steps every `callbacks` entry gets loss=, draw=, chain=, model=, optimizer= under no_grad.
    A non-finite loss (or NonFiniteLogitsError) ends the chain with a warning, as devinterp.
    """
    num_steps = calculate_num_steps(
        num_draws=num_draws, num_steps_bw_draws=num_steps_bw_draws, num_burnin_steps=num_burnin_steps
    )
    gas = gradient_accumulation_steps
    order = epoch_order(len(dataset), batch_size, shuffle=shuffle, seed=dataloader_seed)  # type: ignore[arg-type]
    rows = _batch_rows(order, num_steps * gas, epoch_mode)
    # Its own generator: iterating a loader draws a base seed, which must not come from the global RNG.
    feed = iter(DataLoader(dataset, batch_sampler=rows, generator=torch.Generator()))
    model = copy.deepcopy(ref_model)
    model = to_device(model, device)
    if seed is not None:
        set_seed(seed, device=device)

    named = dict(model.named_parameters())
    for name, p in named.items():
        if name not in param_masks:
            p.requires_grad_(False)
    groups = [
        {"params": named[name], "mask": mask.to(device) if mask is not None else None}
        for name, mask in param_masks.items()
    ]
    optimizer = sampling_method(groups, **(sampling_method_kwargs or {}))
    if init_noise:
        for name, mask in param_masks.items():
            p = named[name]
            m = mask.to(p.device) if mask is not None else 1.0
            p.data.add_(torch.randn_like(p.data) * init_noise * m)

    model.train()
    try:
        for i in range(num_steps):
            loss = torch.zeros((), device=device, dtype=torch.float32)
            for j in range(gas):
                data = next(feed)
                input_ids = data["input_ids"]
                data["input_ids"] = input_ids.to(device)
                micro_loss, _ = evaluate(model, data)
                if micro_callback is not None:
                    micro_callback(
                        loss=micro_loss.detach(), input_ids=input_ids, chain=chain, step=i, micro_step=j
                    )
                micro_loss = micro_loss.float()
                (micro_loss.mean() / gas).backward()  # type: ignore[no-untyped-call]
                loss = loss + micro_loss.detach() / gas
            if not torch.isfinite(loss).all():
                raise ChainHealthError(f"Chain {chain} failed: Loss is NaN or Inf")
            optimizer.step()
            if step_callback is not None:
                step_callback(chain, i, optimizer)
            optimizer.zero_grad(set_to_none=True)
            draw, since_draw = divmod(i - num_burnin_steps, num_steps_bw_draws)
            if draw >= 0 and since_draw == 0 and callbacks:
                with torch.no_grad():
                    for callback in callbacks:
                        callback(loss=loss.detach(), draw=draw, chain=chain, model=model, optimizer=optimizer)
    except (ChainHealthError, NonFiniteLogitsError) as e:
        warnings.warn(f"Chain failed: {e}", stacklevel=2)
    del model, optimizer
