"""One chain at a time on this rank's device: devinterp 2.x's operations and RNG use, bit for bit.

Chain c seeds python, numpy and torch with init_seed + c; its init noise, SGLD noise and dropout all come
from that global stream, in devinterp's order, so the chain depends only on (init_seed, c).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distinterp.chain import ChainSetup, observable_loss, seed_everything
from distinterp.checkpoint import ChainCheckpoint
from distinterp.data import BatchFeed
from distinterp.parallel.engine import StepOutput
from distinterp.sgld import METRIC_FIELDS, ParamSlot, SGLDHyper, make_slots, sgld_step


class SerialEngine:
    """The reference engine: one chain, the working model updated in place."""

    def __init__(self, setup: ChainSetup, chains: tuple[int, ...]):
        if len(chains) != 1:
            raise ValueError(f"SerialEngine runs one chain at a time, got {chains}")
        self.setup = setup
        self.chains = chains
        self.chain = chains[0]
        self.hyper = SGLDHyper.from_config(setup.config)
        self.named = dict(setup.model.named_parameters())
        self.slots: list[ParamSlot] = []
        self.feed: BatchFeed | None = None

    def init_loss(self) -> list[torch.Tensor]:
        """Mean per-token loss over the first num_init_loss_batches * gas batches of the chain's order.

        With init_noise, noise is added to every parameter (ignoring masks) for this estimate, as devinterp.
        """
        s, c = self.setup, self.setup.config
        s.restore()
        s.model.train()
        seed_everything(c.init_seed + self.chain, s.device)
        if c.init_noise:
            with torch.no_grad():
                for p in s.model.parameters():
                    p.data.add_(torch.randn_like(p.data) * c.init_noise)
        num_batches = c.gradient_accumulation_steps * c.num_init_loss_batches
        feed = s.feed(self.chain)
        feed.check_length(num_batches)
        total: torch.Tensor | float = 0.0
        with torch.no_grad():
            for k in range(num_batches):
                loss = s.loss_fn(s.model, feed.batch(k).to(s.device))
                total = total + loss.detach().float() / num_batches
        assert isinstance(total, torch.Tensor)
        s.restore()
        return [total.mean(dim=0)]

    def begin(self, resume: Sequence[ChainCheckpoint | None]) -> None:
        s, c = self.setup, self.setup.config
        s.restore()
        seed_everything(c.init_seed + self.chain, s.device)
        self.slots = make_slots(
            self.named, s.masks, self.hyper, keep_center=c.bounding_box_size is not None or c.save_metrics
        )
        if resume[0] is not None:
            resume[0].restore(self.slots, s.device)
        elif c.init_noise:
            with torch.no_grad():
                for name, mask in s.masks.items():
                    p = self.named[name]
                    m = mask.to(p.device) if mask is not None else 1.0
                    p.data.add_(torch.randn_like(p.data) * c.init_noise * m)
        self.feed = s.feed(self.chain)
        self.feed.check_length(c.num_sgld_steps * c.gradient_accumulation_steps)
        s.model.train()

    def gradient_step(self, step: int) -> StepOutput:
        s = self.setup
        assert self.feed is not None
        gas = s.config.gradient_accumulation_steps
        loss = torch.zeros((), device=s.device, dtype=torch.float32)
        micro_losses, micro_ids = [], []
        for j in range(gas):
            input_ids = self.feed.batch(step * gas + j)
            per_token = s.loss_fn(s.model, input_ids.to(s.device))
            micro_losses.append(per_token.detach())
            micro_ids.append(input_ids)
            per_token = per_token.float()
            (per_token.mean() / gas).backward()
            loss = loss + per_token.detach() / gas
        return StepOutput(
            loss=[loss], micro=[torch.cat(micro_losses).float()], input_ids=[torch.cat(micro_ids)]
        )

    def update(self) -> list[dict[str, torch.Tensor]] | None:
        metrics = sgld_step(self.slots, self.hyper, with_metrics=self.setup.config.save_metrics)
        for p in self.named.values():
            p.grad = None
        if metrics is None:
            return None
        return [{f"metrics_{k}": v.squeeze() for k, v in metrics.values.items() if k in METRIC_FIELDS}]

    def observe(self) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            s = self.setup
            return [
                {
                    f"loss_{o.obs_id}": observable_loss(s.model, s.loss_fn, o, s.config.batch_size, s.device)
                    for o in s.observables
                }
            ]

    def capture(self, i: int, step: int) -> ChainCheckpoint:
        return ChainCheckpoint.capture(step, self.slots, self.setup.device)

    def drop(self, i: int) -> None:
        """Nothing to free: the group ends with its one chain."""
