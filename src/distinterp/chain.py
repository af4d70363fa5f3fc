"""One SGLD chain: restore the start point, init loss, burn-in, steps and draws, rows to the recorder.

Seeding follows devinterp 2.x: chain c seeds python, numpy and torch with init_seed + c; its noise, init
noise and dropout then come from that stream, so a chain depends only on (init_seed, c), never on rank.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distinterp.checkpoint import ChainCheckpoint, CheckpointStore
from distinterp.config import SamplerConfig
from distinterp.data import BatchFeed, Observable
from distinterp.loss import LossFn, NonFiniteLogitsError
from distinterp.sgld import METRIC_FIELDS, SGLDHyper, make_slots, sgld_step
from distinterp.store import ChainRecorder

logger = logging.getLogger(__name__)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch (and CUDA) as devinterp does before each chain."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


@dataclass
class ChainSetup:
    """Everything this rank's chains share: the working model, its start state, data and settings."""

    model: torch.nn.Module  # the rank's working copy, on `device`
    start_state: dict[str, torch.Tensor]  # parameters and buffers at the checkpoint
    masks: dict[str, torch.Tensor | None]  # sampled parameters, in noise-draw order
    config: SamplerConfig
    sampling_ids: torch.Tensor  # (rows, seq) int64 on CPU
    observables: list[Observable]
    loss_fn: LossFn
    device: torch.device

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


def init_loss(setup: ChainSetup, chain: int) -> torch.Tensor:
    """Mean per-token loss (token_pos,) over the first num_init_loss_batches * gas batches of the chain's order.

    With init_noise, noise is added to every parameter (ignoring masks) for this estimate, as devinterp.
    """
    c = setup.config
    model = setup.model
    setup.restore()
    model.train()
    seed_everything(c.init_seed + chain, setup.device)
    if c.init_noise:
        with torch.no_grad():
            for p in model.parameters():
                p.data.add_(torch.randn_like(p.data) * c.init_noise)
    num_batches = c.gradient_accumulation_steps * c.num_init_loss_batches
    feed = setup.feed(chain)
    feed.check_length(num_batches)
    total: torch.Tensor | float = 0.0
    with torch.no_grad():
        for k in range(num_batches):
            loss = setup.loss_fn(model, feed.batch(k).to(setup.device))
            total = total + loss.detach().float() / num_batches
    assert isinstance(total, torch.Tensor)
    setup.restore()
    return total.mean(dim=0)


def run_chain(
    setup: ChainSetup,
    chain: int,
    recorder: ChainRecorder,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
    durable_steps: int = 0,
) -> int | None:
    """Sample one chain, streaming rows to `recorder`. Returns the step it diverged at, or None.

    With `checkpoints`, the chain continues from its last checkpoint at or before `durable_steps` (the
    steps the store already holds) and saves one every `checkpoint_every` steps (at chunk boundaries).
    """
    c = setup.config
    model = setup.model
    resume = checkpoints.load(chain) if checkpoints is not None else None
    if resume is not None and not 0 < resume.step <= durable_steps:
        resume = None  # newer than the durable data, or from a deleted store: not usable
    if resume is None:
        recorder.init_loss(init_loss(setup, chain))

    setup.restore()
    seed_everything(c.init_seed + chain, setup.device)
    hyper = SGLDHyper.from_config(c)
    named = dict(model.named_parameters())
    slots = make_slots(
        named, setup.masks, hyper, keep_center=c.bounding_box_size is not None or c.save_metrics
    )
    if resume is not None:
        resume.restore(slots, setup.device)
        recorder.resume_at(resume.step)
        logger.warning("chain %d continues from its checkpoint at step %d", chain, resume.step)
    elif c.init_noise:
        with torch.no_grad():
            for name, mask in setup.masks.items():
                p = named[name]
                m = mask.to(p.device) if mask is not None else 1.0
                p.data.add_(torch.randn_like(p.data) * c.init_noise * m)

    num_steps = c.num_sgld_steps
    gas = c.gradient_accumulation_steps
    feed = setup.feed(chain)
    feed.check_length(num_steps * gas)
    if checkpoints is not None and checkpoint_every:
        store = checkpoints

        def on_flush(steps_done: int) -> Any:
            if steps_done % checkpoint_every:
                return None
            ckpt = ChainCheckpoint.capture(steps_done, slots, setup.device)
            return lambda: store.save(chain, ckpt)

        recorder.on_flush = on_flush
    model.train()
    for step in range(resume.step if resume is not None else 0, num_steps):
        try:
            loss = _gradient_step(setup, feed, step, recorder)
        except NonFiniteLogitsError:
            loss = None
        if loss is None or not torch.isfinite(loss).all():
            logger.warning(
                "chain %d diverged at step %d (non-finite loss); its later rows stay NaN", chain, step
            )
            recorder.end_step(step, diverged=True)
            return step
        metrics = sgld_step(slots, hyper, with_metrics=c.save_metrics)
        if metrics is not None:
            recorder.step(
                {f"metrics_{k}": v.squeeze() for k, v in metrics.values.items() if k in METRIC_FIELDS}
            )
        for p in named.values():
            p.grad = None
        draw, since = divmod(step - c.num_burnin_steps, c.num_steps_bw_draws)
        if draw >= 0 and since == 0:
            try:
                with torch.no_grad():
                    rows = {"sampling_loss": loss}
                    for obs in setup.observables:
                        rows[f"loss_{obs.obs_id}"] = observable_loss(setup, obs)
            except NonFiniteLogitsError:
                recorder.draw(rows)
                logger.warning("chain %d diverged at step %d (non-finite observable logits)", chain, step)
                recorder.end_step(step, diverged=True)
                return step
            recorder.draw(rows)
        recorder.end_step(step)
    return None


def _gradient_step(setup: ChainSetup, feed: BatchFeed, step: int, recorder: ChainRecorder) -> torch.Tensor:
    """Forward/backward over the step's micro-batches; records them; returns the mean loss (batch, token_pos)."""
    c = setup.config
    gas = c.gradient_accumulation_steps
    loss = torch.zeros((), device=setup.device, dtype=torch.float32)
    micro_losses, micro_ids = [], []
    for j in range(gas):
        input_ids = feed.batch(step * gas + j)
        per_token = setup.loss_fn(setup.model, input_ids.to(setup.device))
        micro_losses.append(per_token.detach())
        micro_ids.append(input_ids)
        per_token = per_token.float()
        (per_token.mean() / gas).backward()
        loss = loss + per_token.detach() / gas
    recorder.step(
        {
            "sampling_loss_micro": torch.cat(micro_losses).float(),
            "sampling_input_ids_micro": torch.cat(micro_ids),
        }
    )
    return loss


def observable_loss(setup: ChainSetup, obs: Observable) -> torch.Tensor:
    """Per-token loss (n_samples, token_pos) on the observable's fixed rows, batch by batch."""
    B = setup.config.batch_size
    out = torch.zeros(obs.n_samples, obs.input_ids.shape[1] - 1, dtype=torch.float32, device=setup.device)
    for i in range(obs.batches_per_draw):
        s, e = i * B, (i + 1) * B
        out[s:e] = setup.loss_fn(setup.model, obs.input_ids[s:e].to(setup.device))
    return out
