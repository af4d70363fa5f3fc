"""The chain loop's meaning, shared by every engine: steps, draws, rows to the recorder, divergence,
checkpoints. How a step is computed (one chain, K batched, one sharded) is the engine's business.

A chain depends only on (init_seed, chain index), never on the rank or group that runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from distinterp.chain_setup import ChainSetup as ChainSetup  # re-exported: its old home
from distinterp.chain_setup import snapshot as snapshot
from distinterp.checkpoint import ChainCheckpoint, CheckpointStore
from distinterp.config import SamplerConfig
from distinterp.data import ProbeRows
from distinterp.loss import LossFn, NonFiniteLogitsError, deferred_finite_check
from distinterp.parallel.engine import ChainEngine
from distinterp.store import ChainRecorder
from distinterp.update import MALA_GEOMETRIC, mala_acceptance

logger = logging.getLogger(__name__)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch (and CUDA) as devinterp does before each chain."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def compiled(fn: Any, setting: bool | str) -> Any:
    """`fn` through torch.compile when asked (True: the default inductor backend; a str: that backend).

    Numerics: inductor fuses and reorders float ops, so losses match the eager step to float rounding
    (~1e-6 relative in float32), not bitwise; noise, data order and seeds are untouched."""
    if not setting:
        return fn
    return torch.compile(fn, backend="inductor" if setting is True else setting, dynamic=False)


def is_draw(config: SamplerConfig, step: int) -> bool:
    """Draws are the steps i >= burn-in with (i - burn-in) % num_steps_bw_draws == 0."""
    draw, since = divmod(step - config.num_burnin_steps, config.num_steps_bw_draws)
    return draw >= 0 and since == 0


def resume_points(
    checkpoints: CheckpointStore | None, chains: Sequence[int], durable_steps: Mapping[int, int]
) -> dict[int, ChainCheckpoint | None]:
    """Each chain's usable checkpoint: at or before the steps its store rows already hold (else None)."""
    out: dict[int, ChainCheckpoint | None] = {}
    for chain in chains:
        ckpt = checkpoints.load(chain, at_most=durable_steps[chain]) if checkpoints is not None else None
        out[chain] = ckpt if ckpt is not None and 0 < ckpt.step <= durable_steps[chain] else None
    return out


@deferred_finite_check()  # non-finite logits poison the loss (found at the flush) instead of syncing per step
def run_chains(
    engine: ChainEngine,
    config: SamplerConfig,
    recorders: Sequence[ChainRecorder],
    resume: Sequence[ChainCheckpoint | None],
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
) -> dict[int, int]:
    """Advance a group of chains together, streaming rows to their recorders; {chain: diverged step}.

    The group starts at the step its checkpoints hold (all equal; 0 without), saves a checkpoint every
    `checkpoint_every` steps at chunk flushes, and loses a chain when its recorder finds it diverged.
    """
    starts = {r.step if r is not None else 0 for r in resume}
    if len(starts) != 1:
        raise ValueError(f"chains {engine.chains} of one group start at different steps {sorted(starts)}")
    start = starts.pop()
    if start == 0:
        for rec, loss in zip(recorders, engine.init_loss()):
            rec.init_loss(loss)
    engine.begin(resume)
    mala = MalaRecorder(config.n_beta, len(recorders))
    for i, r in enumerate(resume):
        mala.loss[i] = None if r is None else r.mala_loss
    for i, rec in enumerate(recorders):
        if start:
            rec.resume_at(start)
            logger.warning("chain %d continues from its checkpoint at step %d", engine.chains[i], start)
        if checkpoints is not None and checkpoint_every:
            rec.on_flush = _saver(engine, i, checkpoints, checkpoint_every, mala)
    live = list(range(len(recorders)))
    for step in range(start, config.num_sgld_steps):
        try:
            out = engine.gradient_step(step)
        except NonFiniteLogitsError:
            for i in live:
                recorders[i].stop(step)
            break
        for i in live:
            micro = {"sampling_loss_micro": out.micro[i], "sampling_input_ids_micro": out.input_ids[i]}
            recorders[i].step(step, micro, loss=out.loss[i])
        metrics = engine.update()
        if metrics is not None:
            for i in live:
                recorders[i].metrics(step, mala.record(i, metrics[i], out.micro[i]))
        if is_draw(config, step):
            try:
                observed = engine.observe()
            except NonFiniteLogitsError:
                for i in live:
                    recorders[i].draw(step, {"sampling_loss": out.loss[i]})
                    recorders[i].stop(step)
                break
            for i in live:
                recorders[i].draw(step, {"sampling_loss": out.loss[i], **observed[i]})
        for i in live:
            recorders[i].end_step(step)
        for i in [i for i in live if recorders[i].diverged_at is not None]:
            logger.warning(
                "chain %d diverged at step %d (non-finite loss); its later rows stay NaN",
                engine.chains[i],
                recorders[i].diverged_at,
            )
            engine.drop(i)
            live.remove(i)
        if not live:
            break
    return {
        engine.chains[i]: rec.diverged_at for i, rec in enumerate(recorders) if rec.diverged_at is not None
    }


class MalaRecorder:
    """Completes each chain's MALA acceptance (update.mala_acceptance) with the loss part: n_beta times the
    previous step's minibatch loss minus this one's. NaN at a chain's first step only: every engine's
    checkpoint carries the previous point (and _saver its loss) over a resume."""

    def __init__(self, n_beta: float, chains: int):
        self.n_beta = n_beta
        self.loss: list[torch.Tensor | None] = [None] * chains

    def record(
        self, i: int, metrics: dict[str, torch.Tensor], micro: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if f"metrics_{MALA_GEOMETRIC}" not in metrics:  # save_metrics="distance": no acceptance
            return metrics
        geometric = metrics.pop(f"metrics_{MALA_GEOMETRIC}")
        loss, prev = micro.double().mean(), self.loss[i]
        prev = prev.to(loss.device) if prev is not None else None  # from a checkpoint: on the CPU
        self.loss[i] = loss
        nan = torch.full_like(geometric, float("nan"), dtype=torch.float32)
        metrics["metrics_mala_acceptance"] = (
            nan if prev is None else mala_acceptance(geometric, self.n_beta, prev, loss)
        )
        return metrics


def _saver(engine: ChainEngine, i: int, checkpoints: CheckpointStore, every: int, mala: MalaRecorder) -> Any:
    """The recorder's on_flush hook: at every `every` steps, chain i's state, saved after its data."""
    chain = engine.chains[i]

    def on_flush(steps_done: int) -> Any:
        if steps_done % every:
            return None
        ckpt = engine.capture(i, steps_done)
        loss = mala.loss[i]
        if loss is not None:
            ckpt = dataclasses.replace(ckpt, mala_loss=loss.detach().to("cpu"))
        return lambda: checkpoints.save(chain, ckpt)

    return on_flush


def observable_loss(
    model: torch.nn.Module, loss_fn: LossFn, obs: ProbeRows, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Per-token loss (n_samples, token_pos) on the observable's fixed rows, batch by batch."""
    out = torch.zeros(obs.n_samples, obs.input_ids.shape[1] - 1, dtype=torch.float32, device=device)
    for i in range(obs.batches_per_draw):
        s, e = i * batch_size, (i + 1) * batch_size
        out[s:e] = loss_fn(model, obs.input_ids[s:e].to(device, non_blocking=True))  # no sync per draw
    return out
