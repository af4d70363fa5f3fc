"""K chains at once on one device: stacked parameters, one vmapped forward/backward, one stacked update.

Each sampled parameter is held as one (K, *shape) leaf; `torch.func.functional_call` + `vmap` run the
model once for all K chains (K x the work per kernel, which is what fills a GPU), and autograd gives
every chain its own gradient in the leaf's `.grad`. The SGLD update is `sgld_step` on the stacked
leaves: the same elementwise operations as the serial engine, with each chain's noise drawn from its
own `torch.Generator` seeded init_seed + c on the device. For models without dropout that is the very
stream the serial engine draws from the seeded global RNG, so chain c equals its serial run up to float
rounding (batched kernels sum in another order). Chain c keeps its own data order, init noise, RMSprop
state and checkpoint; a diverged chain is still computed (masked off by the loop) so the other chains'
kernels, and so their bits, do not change when it stops.

Dropout: vmap draws each chain's dropout masks independently from the global RNG (seeded init_seed +
chains[0] at the group's start), so chains are independent and reproducible for the same grouping
(K and world size), but they do not equal their serial runs.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch.func import functional_call, vmap

from distinterp.chain import ChainSetup, compiled, seed_everything
from distinterp.checkpoint import ChainCheckpoint
from distinterp.data import BatchFeed, ProbeRows
from distinterp.loss import LossFn, deferred_finite_check
from distinterp.parallel.engine import StepOutput
from distinterp.parallel.serial import SerialEngine
from distinterp.update import DISTANCE_ONLY, STEP_FIELDS, ParamSlot, SGLDHyper, sgld_step


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Silence torch's note that an op (CPU sdpa) runs its batch rule as a loop: known, and measured."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return fn(*args, **kwargs)

    return wrapper


class _LossModule(torch.nn.Module):
    """The user's loss_fn(model, ids) as a module, so functional_call can swap the model's parameters."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, input_ids)


class BatchedEngine:
    """Advances K chains of this rank together as one batched computation on its device."""

    working_model = SerialEngine.working_model  # the whole model on this rank's device

    def __init__(self, setup: ChainSetup, chains: tuple[int, ...]):
        self.setup = setup
        self.chains = chains
        self.hyper = SGLDHyper.from_config(setup.config)
        self.module = _LossModule(setup.model, setup.loss_fn)
        self.generators = [torch.Generator(device=setup.device) for _ in chains]
        self.stacked: dict[str, torch.Tensor] = {}  # sampled name -> (K, *shape) leaf
        self.slots: list[ParamSlot] = []
        self.feeds: list[BatchFeed] = []
        self._loss = compiled(vmap(self._per_token, in_dims=(0, 0), randomness="different"), setup.compile)
        self._shared_loss = vmap(self._per_token, in_dims=(0, None), randomness="different")

    @classmethod
    @_quiet
    def preflight(
        cls,
        model: torch.nn.Module,
        loss_fn: LossFn,
        masks: dict[str, torch.Tensor | None],
        input_ids: torch.Tensor,
    ) -> None:
        """Refuse a model whose sampled parameters get a gradient when it runs as itself but none when
        `functional_call` swaps them in, as this engine does: code that rebuilds a parameter in forward
        (slicing an nn.ParameterList, `self.weights[1:]`, wraps each item in a new nn.Parameter; so does
        nn.Parameter(t) on a swapped tensor) cuts it from the graph, and it would get no gradient, only noise:
        a different posterior, silently. One forward and backward each way, with the RNG put back."""
        names = list(masks)
        params = dict(model.named_parameters())
        was_training = model.training
        state = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        model.train()
        try:
            own = torch.autograd.grad(
                loss_fn(model, input_ids).float().mean(), [params[n] for n in names], allow_unused=True
            )
            torch.set_rng_state(state)
            stacked = {n: params[n].detach().unsqueeze(0).clone().requires_grad_(True) for n in names}
            module = _LossModule(model, loss_fn)
            with deferred_finite_check():  # as in the chain loop: no data-dependent raise under vmap
                swapped = vmap(
                    lambda p, x: functional_call(module, {f"model.{n}": v for n, v in p.items()}, (x,)),
                    in_dims=(0, None),
                    randomness="different",
                )(stacked, input_ids)
            batched = torch.autograd.grad(swapped.float().mean(), list(stacked.values()), allow_unused=True)
        finally:
            torch.set_rng_state(state)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            model.train(was_training)
        lost = [n for n, a, b in zip(names, own, batched, strict=True) if a is not None and b is None]
        if lost:
            shown = ", ".join(repr(n) for n in lost[:6]) + (
                f" and {len(lost) - 6} more" if len(lost) > 6 else ""
            )
            raise ValueError(
                f"chains_per_batch: parameter(s) {shown} get a gradient when the model runs as itself but "
                "none when chains are batched (torch.func.functional_call swaps the parameters in, and code "
                "that rebuilds them in forward cuts them from the graph: slicing an nn.ParameterList, "
                "`self.weights[1:]`, or nn.Parameter(...) on a parameter). Batched, they would get noise and "
                "no gradient. Use chains_per_batch=1, or index the list (`self.weights[i]`, or iterate over "
                "it) instead of slicing it"
            )

    @property
    def k(self) -> int:
        return len(self.chains)

    def _per_token(self, params: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
        """One chain's per-token loss (batch, seq-1) with `params` in place of the model's own."""
        return cast(
            torch.Tensor,
            functional_call(self.module, {f"model.{n}": p for n, p in params.items()}, (input_ids,)),
        )

    def _seed(self) -> None:
        """Every chain's noise stream at its start; the global RNG (dropout only) from the first chain."""
        c = self.setup.config
        seed_everything(c.init_seed + self.chains[0], self.setup.device)
        for g, chain in zip(self.generators, self.chains):
            g.manual_seed(c.init_seed + chain)

    def _ids(self, feeds: Sequence[BatchFeed], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k of every chain, (K, batch, seq): on the host (to record) and on the device."""
        ids = torch.stack([f.batch(k) for f in feeds])
        return ids, ids.to(self.setup.device, non_blocking=True)

    def _start(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """(K, *shape) copies of the start values of `names`."""
        state = self.setup.start_state
        return {n: state[f"p:{n}"].unsqueeze(0).repeat(self.k, *([1] * state[f"p:{n}"].ndim)) for n in names}

    def _add_init_noise(self, params: dict[str, torch.Tensor], masks: dict[str, Any]) -> None:
        """Chain i's init noise from its own stream, parameter by parameter in `masks` order (as serial)."""
        scale = self.setup.config.init_noise
        if not scale:
            return
        with torch.no_grad():
            for i, g in enumerate(self.generators):
                for name, mask in masks.items():
                    p = params[name][i]
                    m = mask.to(p.device) if mask is not None else 1.0
                    p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * scale * m)

    @_quiet
    def init_loss(self) -> list[torch.Tensor]:
        """Mean per-token loss over each chain's first num_init_loss_batches * gas batches (init_noise on
        every parameter, ignoring masks, as devinterp)."""
        s, c = self.setup, self.setup.config
        s.restore()
        s.model.train()
        self._seed()
        names = [n for n, _ in s.model.named_parameters()] if c.init_noise else []
        params = self._start(names)
        if c.init_noise:
            self._add_init_noise(params, dict.fromkeys(names))
        num_batches = c.gradient_accumulation_steps * c.num_init_loss_batches
        feeds = [s.feed(ch) for ch in self.chains]
        for f in feeds:
            f.check_length(num_batches)
        total: torch.Tensor | float = 0.0
        with torch.no_grad():
            for k in range(num_batches):
                _, ids = self._ids(feeds, k)
                loss = self._loss(params, ids) if params else self._unbatched_params_loss(ids)
                total = total + loss.detach().float() / num_batches
        assert isinstance(total, torch.Tensor)
        return list(total.mean(dim=1))

    def _unbatched_params_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-chain losses at the shared start parameters (only the data differ)."""
        return cast(torch.Tensor, vmap(lambda x: self.module(x), randomness="different")(ids))

    def begin(self, resume: Sequence[ChainCheckpoint | None]) -> None:
        s, c = self.setup, self.setup.config
        s.restore()
        self._seed()
        names = list(s.masks)
        params = self._start(names)
        keep_center = c.bounding_box_size is not None or c.save_metrics or self.hyper.localization > 0
        if any(r is not None for r in resume):
            self._restore(params, resume)
        elif c.init_noise:
            self._add_init_noise(params, s.masks)
        self.stacked = {n: p.requires_grad_(True) for n, p in params.items()}
        self.slots = [
            ParamSlot(
                name=n,
                param=self.stacked[n],
                mask=None if m is None else m.to(s.device).float(),
                center=s.start_state[f"p:{n}"] if keep_center else None,
                square_avg=self._square_avg(resume, n),
                mala_prev=self._mala_prev(resume, n),
            )
            for n, m in s.masks.items()
        ]
        self.feeds = [s.feed(ch) for ch in self.chains]
        for f in self.feeds:
            f.check_length(c.num_sgld_steps * c.gradient_accumulation_steps)
        s.model.train()

    def _restore(self, params: dict[str, torch.Tensor], resume: Sequence[ChainCheckpoint | None]) -> None:
        """Each chain's parameters and noise stream from its checkpoint (a group resumes together)."""
        dev = self.setup.device
        with torch.no_grad():
            for i, ckpt in enumerate(resume):
                assert ckpt is not None, "a group's chains resume together"
                for n, p in params.items():
                    p[i].copy_(ckpt.params[n])
                self.generators[i].set_state(ckpt.rng["cuda" if dev.type == "cuda" else "torch"])
        first = resume[0]
        assert first is not None
        if "global_torch" in first.rng:
            torch.set_rng_state(first.rng["global_torch"])
            if dev.type == "cuda" and "global_cuda" in first.rng:
                torch.cuda.set_rng_state(first.rng["global_cuda"], dev)
        np.random.set_state(first.rng["numpy"])
        random.setstate(first.rng["python"])

    def _square_avg(self, resume: Sequence[ChainCheckpoint | None], name: str) -> torch.Tensor | None:
        if not self.hyper.rmsprop or any(r is None or name not in r.square_avg for r in resume):
            return None
        return torch.stack([r.square_avg[name] for r in resume if r is not None]).to(self.setup.device)

    def _mala_prev(
        self, resume: Sequence[ChainCheckpoint | None], name: str
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The chains' previous MALA point (theta, grad U), stacked from their checkpoints (save_metrics)."""
        if self.setup.config.save_metrics is not True or any(
            r is None or not r.mala or name not in r.mala for r in resume
        ):
            return None
        theta, drift = zip(*(r.mala[name] for r in resume if r is not None and r.mala))
        dev = self.setup.device
        return torch.stack(theta).to(dev), torch.stack(drift).to(dev)

    @_quiet
    def gradient_step(self, step: int) -> StepOutput:
        gas = self.setup.config.gradient_accumulation_steps
        loss = torch.zeros((), device=self.setup.device, dtype=torch.float32)
        micro_losses, micro_ids = [], []
        for j in range(gas):
            host_ids, ids = self._ids(self.feeds, step * gas + j)
            per_token = self._loss(self.stacked, ids)  # (K, batch, seq-1)
            micro_losses.append(per_token.detach())
            micro_ids.append(host_ids)
            per_token = per_token.float()
            (per_token.mean(dim=(1, 2)) / gas).sum().backward()
            loss = loss + per_token.detach() / gas
        micro = torch.cat(micro_losses, dim=1).float()
        input_ids = torch.cat(micro_ids, dim=1)
        return StepOutput(loss=list(loss), micro=list(micro), input_ids=list(input_ids))

    def _noise(self, slot: ParamSlot, size: torch.Size, std: float) -> torch.Tensor:
        """Chain i's draw for this parameter from chain i's own generator, written in place into row i."""
        out = torch.empty(size, device=slot.param.device)
        for row, g in zip(out, self.generators):
            torch.normal(mean=0.0, std=std, size=size[1:], generator=g, out=row)
        return out

    def update(self) -> list[dict[str, torch.Tensor]] | None:
        metrics = sgld_step(
            self.slots,
            self.hyper,
            noise=self._noise,
            with_metrics=self.setup.config.save_metrics is True,
            mala=True,
            stacked=True,
            distance_only=self.setup.config.save_metrics == DISTANCE_ONLY,
        )
        for p in self.stacked.values():
            p.grad = None
        if metrics is None:
            return None
        fields = {k: v for k, v in metrics.values.items() if k in STEP_FIELDS}
        return [{f"metrics_{k}": v[i] for k, v in fields.items()} for i in range(self.k)]

    @_quiet
    def observe(self) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            losses = {f"loss_{o.obs_id}": self._observable_loss(o) for o in self.setup.observables}
        return [{k: v[i] for k, v in losses.items()} for i in range(self.k)]

    def _observable_loss(self, obs: ProbeRows) -> torch.Tensor:
        """(K, n_samples, token_pos) on the observable's fixed rows, batch by batch as the serial engine."""
        B = self.setup.config.batch_size
        dev = self.setup.device
        out = torch.zeros(self.k, obs.n_samples, obs.input_ids.shape[1] - 1, dtype=torch.float32, device=dev)
        for i in range(obs.batches_per_draw):
            s, e = i * B, (i + 1) * B
            out[:, s:e] = self._shared_loss(self.stacked, obs.input_ids[s:e].to(dev, non_blocking=True))
        return out

    def capture(self, i: int, step: int) -> ChainCheckpoint:
        """Chain i's parameters, RMSprop state, noise stream and (save_metrics) previous MALA point, sliced
        from the stacked state; the same layout as a serial checkpoint ('torch' / 'cuda' hold the chain's
        stream), so either engine can continue the other's."""
        dev = self.setup.device
        rng: dict[str, Any] = {
            "torch": self.generators[i].get_state() if dev.type != "cuda" else torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "global_torch": torch.get_rng_state(),
        }
        if dev.type == "cuda":
            rng["cuda"] = self.generators[i].get_state()
            rng["global_cuda"] = torch.cuda.get_rng_state(dev)
        return ChainCheckpoint(
            step=step,
            params={n: p[i].detach().to("cpu", copy=True) for n, p in self.stacked.items()},
            square_avg={
                s.name: s.square_avg[i].detach().to("cpu", copy=True)
                for s in self.slots
                if s.square_avg is not None
            },
            rng=rng,
            mala={
                s.name: (s.mala_prev[0][i].to("cpu", copy=True), s.mala_prev[1][i].to("cpu", copy=True))
                for s in self.slots
                if s.mala_prev is not None
            }
            or None,
        )

    def drop(self, i: int) -> None:
        """Keep computing chain i (its rows are no longer recorded): removing it would change the batch
        shape of every kernel, and so the other chains' bits."""
