"""A chain's rows buffered on the device and handed to the writer a chunk at a time, then its progress;
the divergence rule."""

from __future__ import annotations

import logging
from typing import Any, cast

import numpy as np
import torch

from distinterp.store.schema import DIVERGED_STEP, STEPS_DONE, Schema
from distinterp.store.writer import StoreWriter

logger = logging.getLogger(__name__)


class ChainRecorder:
    """Buffers one chain's rows on the device and hands whole chunks to the writer, then its progress.

    Rows stay device tensors until a flush (every `step_chunk` steps), so a step never waits for the host.
    A flush copies the chunk once and finds the first non-finite loss there: the chain diverged at that
    step; rows after it are dropped (they stay NaN in the store) and the chain counts as finished.
    `writer=None` records nothing (an FSDP rank that is not its group's writer) but still finds divergence.
    """

    def __init__(
        self,
        schema: Schema,
        writer: StoreWriter | None,
        chain: int,
        *,
        num_burnin_steps: int,
        num_steps_bw_draws: int,
    ):
        self.schema = schema
        self.writer = writer
        self.chain = chain
        self.burnin = num_burnin_steps
        self.every = num_steps_bw_draws
        self.chunk = schema.step_chunk
        # name -> [(step, row)], in step order; "before" rows are the step's loss and inputs, "after" rows
        # come from the update (metrics) and the draw, which a step whose loss is non-finite never reaches.
        self._rows: dict[str, list[tuple[int, torch.Tensor | np.ndarray]]] = {}
        self._after: set[str] = set()
        self._checks: list[tuple[int, bool, torch.Tensor]] = []  # (step, is_loss_check, all-finite flag)
        self._first_step = 0
        self._first_draw = 0
        self.diverged_at: int | None = None
        self.on_flush: Any = None  # steps_done -> op to run after the data, before progress (a checkpoint)

    def resume_at(self, step: int) -> None:
        """Continue a chain whose rows before `step` are durable in the store."""
        self._first_step = step
        self._first_draw = max(0, -(-(step - self.burnin) // self.every))

    def init_loss(self, value: torch.Tensor) -> None:
        self._submit([("init_loss", (self.chain, slice(None)), _np(value, np.float32))])

    def step(self, step: int, values: dict[str, torch.Tensor], *, loss: torch.Tensor | None = None) -> None:
        """Rows of `step` along the step dim; `loss` (the step's sampling loss) is checked at the flush."""
        self._add(step, values, after=False)
        if loss is not None:
            self._checks.append((step, True, torch.isfinite(loss).all()))

    def metrics(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Rows of `step` from its update (metrics_*), dropped when the step's loss was non-finite."""
        self._add(step, values, after=True)

    def draw(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Rows of the draw taken at `step`; a non-finite observable loss ends the chain there."""
        self._add(step, values, after=True)
        obs = [v for k, v in values.items() if k != "sampling_loss"]
        if obs:
            self._checks.append((step, False, torch.stack([torch.isfinite(v).all() for v in obs]).all()))

    def _add(self, step: int, values: dict[str, torch.Tensor], *, after: bool) -> None:
        for name, v in values.items():
            self._rows.setdefault(name, []).append((step, v.detach() if isinstance(v, torch.Tensor) else v))
            if after:
                self._after.add(name)

    def end_step(self, step: int) -> None:
        """Flush at every chunk boundary and at the last step."""
        done = step + 1
        if done % self.chunk == 0 or done == self.schema.num_steps:
            self.flush(done)

    def stop(self, step: int) -> None:
        """The chain stopped at `step` (its loss function raised on non-finite logits): flush what it has."""
        self.flush(step + 1, stopped_at=step)

    def flush(self, steps_done: int, stopped_at: int | None = None) -> None:
        loss_bad, draw_bad = self._first_non_finite()
        ends = [s for s in (loss_bad, draw_bad, stopped_at) if s is not None]
        if ends:
            self.diverged_at = min(ends)
            steps_done = self.diverged_at + 1

        def kept(name: str, step: int) -> bool:
            if step >= steps_done:
                return False
            return not (step == loss_bad and name in self._after)

        writes: list[Any] = []
        n_draws = 0
        for name, rows in self._rows.items():
            values = [v for s, v in rows if kept(name, s)]
            if not values:
                continue
            is_draw = self.schema.arrays[name].dims[1] == "draw"
            start = self._first_draw if is_draw else self._first_step
            if is_draw:
                n_draws = max(n_draws, len(values))
            stacked = (
                torch.stack(cast(list[torch.Tensor], values))
                if isinstance(values[0], torch.Tensor)
                else np.stack(values)
            )
            block = _np(stacked, self.schema.arrays[name].dtype)
            writes.append((name, (self.chain, slice(start, start + len(values))), block))
        if self.diverged_at is not None:
            writes.append(
                (DIVERGED_STEP, (slice(self.chain, self.chain + 1),), np.array([self.diverged_at], np.int64))
            )
            steps_done = self.schema.num_steps  # a diverged chain is finished; its later rows stay NaN
        elif self.on_flush is not None and steps_done < self.schema.num_steps:
            op = self.on_flush(steps_done)
            if op is not None:
                writes.append(op)
        writes.append((STEPS_DONE, (slice(self.chain, self.chain + 1),), np.array([steps_done], np.int64)))
        self._submit(writes)
        self._first_step = steps_done
        self._first_draw += n_draws
        self._rows = {}
        self._checks = []

    def _first_non_finite(self) -> tuple[int | None, int | None]:
        """First step of this chunk with a non-finite sampling loss, and first draw with a non-finite
        observable: one host copy for the whole chunk."""
        if not self._checks:
            return None, None
        flags = torch.stack([f for _, _, f in self._checks]).cpu().tolist()
        loss_bad = next((s for (s, is_loss, _), ok in zip(self._checks, flags) if is_loss and not ok), None)
        draw_bad = next(
            (s for (s, is_loss, _), ok in zip(self._checks, flags) if not is_loss and not ok), None
        )
        return loss_bad, draw_bad

    def _submit(self, writes: list[Any]) -> None:
        if self.writer is not None:
            self.writer.submit(writes)
            return
        for op in writes:  # a non-writer rank records nothing but saves its own checkpoint shard
            if callable(op):
                op()


def _np(value: torch.Tensor | np.ndarray, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu").numpy()
    return np.asarray(value, dtype=dtype)
