"""One chain at a time on this rank's device: devinterp 2.x's operations and RNG use, bit for bit.

Chain c seeds python, numpy and torch with init_seed + c; its init noise, SGLD noise and dropout all come
from that global stream, in devinterp's order, so the chain depends only on (init_seed, c). With
noise="blocked" the init and SGLD noise come from noise.BlockedNoise instead (dropout still from the
global stream), the stream a sharded chain reproduces on any number of shards.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from distinterp.chain import ChainSetup, compiled, observable_loss, seed_everything
from distinterp.checkpoint import ChainCheckpoint
from distinterp.data import BatchFeed
from distinterp.loss import LossFn, to_device
from distinterp.noise import BlockedNoise, Piece
from distinterp.parallel.engine import StepOutput
from distinterp.update import DISTANCE_ONLY, STEP_FIELDS, ParamSlot, SGLDHyper, make_slots, sgld_step

if TYPE_CHECKING:
    from distinterp.config import SamplerConfig
    from distinterp.parallel.plan import Plan


class SerialEngine:
    """The reference engine: one chain, the working model updated in place.

    The hooks `_views`, `_seed`, `_loss`, `_objective` and `_reduce` are where a sharded chain differs
    (parallel.sharded.ShardedEngine); everything else is shared.
    """

    def __init__(self, setup: ChainSetup, chains: tuple[int, ...]):
        if len(chains) != 1:
            raise ValueError(f"{type(self).__name__} runs one chain at a time, got {chains}")
        self.setup = setup
        self.chains: tuple[int, ...] = chains  # (len 1, checked above: not narrowed to tuple[int])
        self.chain = chains[0]
        self.hyper = SGLDHyper.from_config(setup.config)
        self.named = dict(setup.model.named_parameters())
        self.views = self._views()
        self.blocked = (
            BlockedNoise(setup.config.init_seed, self.chain, setup.noise_block)
            if setup.noise == "blocked"
            else None
        )
        self.slots: list[ParamSlot] = []
        self.feed: BatchFeed | None = None
        self.step = 0
        self.loss_fn = compiled(setup.loss_fn, setup.compile)

    @classmethod
    def working_model(
        cls,
        model: torch.nn.Module,
        masks: dict[str, torch.Tensor | None],
        config: SamplerConfig,
        device: torch.device,
        plan: Plan,
    ) -> torch.nn.Module:
        """This rank's working copy of the user's model, on `device` (the user's model is never touched)."""
        working = copy.deepcopy(model)
        return to_device(working, device)

    @classmethod
    def preflight(
        cls,
        model: torch.nn.Module,
        loss_fn: LossFn,
        masks: dict[str, torch.Tensor | None],
        input_ids: torch.Tensor,
    ) -> None:
        """Nothing to refuse: this engine runs the model as it is."""

    # ── hooks ──
    def _views(self) -> dict[str, tuple[torch.Tensor, Piece]]:
        """Each parameter's tensor this engine updates, and where it sits in the whole parameter."""
        return {n: (p, Piece(j, p.numel(), 0)) for j, (n, p) in enumerate(self.named.items())}

    def _seed(self) -> None:
        """Seed the chain's global RNG streams (dropout, and devinterp's noise)."""
        seed_everything(self.setup.config.init_seed + self.chain, self.setup.device)

    def _loss(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token loss this rank backpropagates, the batch's whole per-token loss)."""
        # non_blocking: a blocking host-to-device copy waits for every queued kernel (a sync per step)
        per_token = self.loss_fn(self.setup.model, input_ids.to(self.setup.device, non_blocking=True))
        return per_token, per_token

    def _objective(self, mine: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """This rank's share of the batch's mean per-token loss."""
        return mine.float().mean()

    def _reduce(self) -> object:
        """sgld_step's `reduce` for metrics over shards (None: the slots hold whole parameters)."""
        return None

    # ── the engine ──
    def _add_init_noise(self, names: Sequence[str], masked: bool, scale: float) -> None:
        """scale (init_noise) * N(0, 1) on each named parameter (times its mask when `masked`), in order."""
        with torch.no_grad():
            for name in names:
                t, piece = self.views[name]
                eps = torch.randn_like(t.data) if self.blocked is None else self.blocked.init(piece, t.data)
                mask = self.setup.masks.get(name) if masked else None
                m = self._local_mask(name, mask).to(t.device) if mask is not None else 1.0
                t.data.add_(eps * scale * m)

    def _local_mask(self, name: str, mask: torch.Tensor) -> torch.Tensor:
        """The part of a parameter's mask that this engine's tensor covers."""
        return mask

    def init_loss(self) -> list[torch.Tensor]:
        """Mean per-token loss over the first num_init_loss_batches * gas batches of the chain's order.

        With init_noise, noise is added to every parameter (ignoring masks) for this estimate, as devinterp.
        """
        s, c = self.setup, self.setup.config
        s.restore()
        s.model.train()
        self._seed()
        if c.init_noise:
            self._add_init_noise(list(self.named), masked=False, scale=c.init_noise)
        num_batches = c.gradient_accumulation_steps * c.num_init_loss_batches
        feed = s.feed(self.chain)
        feed.check_length(num_batches)
        total: torch.Tensor | float = 0.0
        with torch.no_grad():
            for k in range(num_batches):
                _, loss = self._loss(feed.batch(k))
                total = total + loss.detach().float() / num_batches
        assert isinstance(total, torch.Tensor)
        s.restore()
        return [total.mean(dim=0)]

    def begin(self, resume: Sequence[ChainCheckpoint | None]) -> None:
        s, c = self.setup, self.setup.config
        s.restore()
        self._seed()
        local = {n: self.views[n][0] for n in s.masks}
        masks = {n: self._local_mask(n, m) if m is not None else None for n, m in s.masks.items()}
        self.slots = make_slots(
            local, masks, self.hyper, keep_center=c.bounding_box_size is not None or bool(c.save_metrics)
        )
        if resume[0] is not None:
            resume[0].restore(self.slots, s.device)
        elif c.init_noise:
            self._add_init_noise(list(s.masks), masked=True, scale=c.init_noise)
        self.feed = s.feed(self.chain)
        self.feed.check_length(c.num_sgld_steps * c.gradient_accumulation_steps)
        s.model.train()

    def gradient_step(self, step: int) -> StepOutput:
        s = self.setup
        assert self.feed is not None
        self.step = step
        gas = s.config.gradient_accumulation_steps
        loss = torch.zeros((), device=s.device, dtype=torch.float32)
        micro_losses, micro_ids = [], []
        for j in range(gas):
            input_ids = self.feed.batch(step * gas + j)
            mine, per_token = self._loss(input_ids)
            micro_losses.append(per_token.detach())
            micro_ids.append(input_ids)
            (self._objective(mine, per_token) / gas).backward()  # type: ignore[no-untyped-call]
            loss = loss + per_token.detach().float() / gas
        return StepOutput(
            loss=[loss], micro=[torch.cat(micro_losses).float()], input_ids=[torch.cat(micro_ids)]
        )

    def _noise(self) -> object:
        """sgld_step's `noise` for this step: None (devinterp's global stream) or the blocked stream."""
        if self.blocked is None:
            return None
        blocked, step, views = self.blocked, self.step, self.views

        def draw(slot: ParamSlot, size: torch.Size, std: float) -> torch.Tensor:
            return blocked.step(step, views[slot.name][1], slot.param.data) * std

        return draw

    def _obs_loss_fn(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """observable_loss's loss_fn: the whole batch's per-token loss (`_loss`)."""
        return self._loss(input_ids)[1]

    def _sync_grads(self) -> None:
        """Make each slot's tensor carry the gradient the update reads (already so for whole parameters)."""

    def update(self) -> list[dict[str, torch.Tensor]] | None:
        self._sync_grads()
        metrics = sgld_step(
            self.slots,
            self.hyper,
            noise=self._noise(),  # type: ignore[arg-type]
            reduce=self._reduce(),  # type: ignore[arg-type]
            with_metrics=self.setup.config.save_metrics is True,
            mala=True,
            distance_only=self.setup.config.save_metrics == DISTANCE_ONLY,
        )
        for p in self.named.values():
            p.grad = None
        for slot in self.slots:
            slot.param.grad = None
        if metrics is None:
            return None
        return [{f"metrics_{k}": v.squeeze() for k, v in metrics.values.items() if k in STEP_FIELDS}]

    def observe(self) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            s = self.setup
            return [
                {
                    f"loss_{o.obs_id}": observable_loss(
                        s.model, self._obs_loss_fn, o, s.config.batch_size, s.device
                    )
                    for o in s.observables
                }
            ]

    def capture(self, i: int, step: int) -> ChainCheckpoint:
        return ChainCheckpoint.capture(step, self.slots, self.setup.device)

    def drop(self, i: int) -> None:
        """Nothing to free: the group ends with its one chain."""
