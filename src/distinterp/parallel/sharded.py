"""One chain sharded over its group's fsdp_size ranks with FSDP2 (`fully_shard` on the plan's
("chain", "fsdp") mesh): parameters, gradients, masks, the localization centre and RMSprop state are
each rank's dim-0 shard; every batch is split over the ranks and its gradient is the exact mean.

What differs from the serial engine is only how a loss and a gradient are computed and what a slot
holds (SerialEngine's hooks). The noise is noise.BlockedNoise, so each shard adds its slice of the noise
the unsharded chain adds. Dropout comes from each rank's global RNG seeded by (init_seed, chain, shard):
reproducible for a given fsdp_size (and any number of chain groups), but its masks depend on how a batch
is split, so only a model without dropout samples the same chain at every fsdp_size.
"""

from __future__ import annotations

import contextlib
import copy
import random
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard

from distinterp.loss import NonFiniteLogitsError
from distinterp.noise import Piece, stream_seed
from distinterp.parallel.plan import PlanError
from distinterp.parallel.serial import SerialEngine

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from distinterp.chain import ChainSetup
    from distinterp.config import SamplerConfig
    from distinterp.parallel.plan import Plan

_DROPOUT = 2  # stream_seed key part: a shard's dropout stream


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor parameter or gradient (every one of a sharded working model is one)."""
    return cast(DTensor, t).to_local()


class ShardedEngine(SerialEngine):
    """A chain whose model is FSDP2-sharded over this rank's group; every rank of the group runs it."""

    def __init__(self, setup: ChainSetup, chains: tuple[int, ...]):
        if setup.noise != "blocked":
            raise ValueError("a sharded chain needs noise='blocked' (the layout-invariant stream)")
        first = next(iter(setup.model.parameters()))
        if not isinstance(first, DTensor):
            raise TypeError(
                f"ShardedEngine needs the model ShardedEngine.working_model built, got {type(first)}"
            )
        self.mesh: DeviceMesh = first.device_mesh
        self.group = self.mesh.get_group()
        self.rank = self.mesh.get_local_rank()
        self.size = self.mesh.size()
        super().__init__(setup, chains)

    @classmethod
    def working_model(
        cls,
        model: torch.nn.Module,
        masks: dict[str, torch.Tensor | None],
        config: SamplerConfig,
        device: torch.device,
        plan: Plan,
    ) -> torch.nn.Module:
        """The model FSDP2-sharded over this rank's group: built on the meta device, then only this rank's
        shard of each parameter is allocated on `device` and copied from the user's model (never the whole)."""
        if config.batch_size < plan.fsdp_size:
            raise PlanError(
                f"batch_size={config.batch_size} < fsdp_size={plan.fsdp_size}: every rank of a chain's group "
                f"takes a share of each batch; use batch_size >= {plan.fsdp_size} or a smaller fsdp_size"
            )
        scalars = [n for n, p in model.named_parameters() if p.dim() == 0]
        if scalars:
            raise PlanError(
                f"fsdp_size={plan.fsdp_size}: 0-dim parameters {scalars} cannot be sharded; use 1"
            )
        mesh = plan.device_mesh(device.type)["fsdp"]
        working = _meta_copy(model)
        for name, p in working.named_parameters():
            p.requires_grad_(name in masks)
        _shard(working, mesh)
        working.to_empty(device=device)
        source = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, p in working.named_parameters():
                lo, hi = shard_rows(p)
                _local(p).copy_(source[name].detach()[lo:hi])
            for name, b in working.named_buffers():
                b.copy_(buffers[name])
        return working

    # ── SerialEngine's hooks, sharded ──
    def _views(self) -> dict[str, tuple[torch.Tensor, Piece]]:
        out = {}
        with torch.no_grad():
            for j, (name, p) in enumerate(self.named.items()):
                lo, _ = shard_rows(p)
                row = p.numel() // p.shape[0] if p.shape[0] else 0
                out[name] = (_local(p).detach(), Piece(j, p.numel(), lo * row))
        return out

    def _local_mask(self, name: str, mask: torch.Tensor) -> torch.Tensor:
        lo, hi = shard_rows(self.named[name])
        return mask[lo:hi]

    def _seed(self) -> None:
        seed = stream_seed(self.setup.config.init_seed, self.chain, _DROPOUT, self.rank)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        torch.manual_seed(seed)
        if self.setup.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _loss(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the batch (an uneven split: the first ranks take one more), their per-token
        loss, and the whole batch's, gathered; a non-finite forward on any rank raises on all of them."""
        parts = torch.tensor_split(input_ids, self.size)
        mine: torch.Tensor | None = None
        with contextlib.suppress(NonFiniteLogitsError):  # raised below on every rank, not just this one
            mine = self.loss_fn(self.setup.model, parts[self.rank].to(self.setup.device))
        self._agree(mine is not None)
        assert mine is not None
        return mine, self._gather(mine.detach(), [len(p) for p in parts])

    def _objective(self, mine: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """sum over my rows / all tokens of the batch: the group's summed gradients are the batch mean's."""
        return mine.float().sum() / whole.numel()

    def _reduce(self) -> Any:
        def reduce(partials: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(partials, op=dist.ReduceOp.SUM, group=self.group)
            return partials

        return reduce

    def _sync_grads(self) -> None:
        for slot in self.slots:
            grad = self.named[slot.name].grad
            slot.param.grad = _local(grad) if grad is not None else None

    # ── collectives over the group ──
    def _agree(self, ok: bool) -> None:
        """Raise NonFiniteLogitsError on every rank of the group when any rank's forward raised it."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.setup.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        if not int(flag.item()):
            raise NonFiniteLogitsError(
                "Non-finite values detected in model logits (on a shard of the batch)."
            )

    def _gather(self, mine: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every rank's rows, in rank order (padded to the largest share for all_gather, then trimmed)."""
        padded = mine.new_zeros((max(counts), *mine.shape[1:]))
        padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[:n] for part, n in zip(parts, counts)])


def shard_rows(p: torch.Tensor) -> tuple[int, int]:
    """The rows [lo, hi) of dim 0 that this rank's shard of an FSDP2 parameter holds (torch.chunk's split,
    which FSDP2 uses), checked against the local shard's shape."""
    assert isinstance(p, DTensor) and tuple(p.placements) == (Shard(0),), (
        f"not an FSDP2 Shard(0) parameter: {p}"
    )
    n, k, r = p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank()
    chunk = -(-n // k)
    lo, hi = min(r * chunk, n), min((r + 1) * chunk, n)
    if p.to_local().shape[0] != hi - lo:
        raise RuntimeError(f"FSDP2 shard of {tuple(p.shape)} on rank {r} of {k} is not rows [{lo}, {hi})")
    return lo, hi


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model whose parameters are on the meta device (buffers copied): tied parameters stay
    tied, since deepcopy maps each parameter object to one meta parameter."""
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def _shard(model: torch.nn.Module, mesh: DeviceMesh) -> None:
    """fully_shard each block of every ModuleList (so a forward gathers one block at a time), then the rest;
    gradients are reduced as sums (the engine divides by the batch's token count itself)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for m in list(model.modules()):
        if isinstance(m, torch.nn.ModuleList):
            for block in m:
                params = list(block.parameters())
                shared = any(owners[id(p)] > 1 for p in params)  # tied elsewhere: leave it to the root unit
                if params and not shared and not isinstance(block, FSDPModule):
                    fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # the root too: a forward with no backward after it (init loss, observables) must leave it sharded
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
