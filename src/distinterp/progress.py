"""Rank 0's progress display: draws complete over all ranks (and array tasks), read from the store."""

from __future__ import annotations

import logging
import threading
import time

from distinterp.parallel.plan import Plan
from distinterp.store import Location, Schema, read_progress

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Polls the store's per-chain progress on a thread and shows steps done, rate and ETA."""

    def __init__(self, location: Location, schema: Schema, plan: Plan, interval_s: float = 2.0):
        self.location = location
        self.total = schema.num_steps * len(plan.chains)
        self.chains = list(plan.chains)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._first: int | None = None
        self._bar = None
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="SGLD steps (all ranks)", unit="step", leave=False)
        except ImportError:  # pragma: no cover - tqdm comes with transformers
            pass
        self._thread = threading.Thread(target=self._run, name="distinterp-progress", daemon=True)
        self._thread.start()

    def done_steps(self) -> int:
        steps, _ = read_progress(self.location)
        return int(steps[self.chains].clip(max=self.total).sum())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._update(self.done_steps())
            except Exception as e:  # noqa: BLE001 - display only; never stop sampling for it
                logger.debug("progress read failed: %s", e)

    def _update(self, done: int) -> None:
        if self._first is None:
            self._first = done
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
        else:
            rate = (done - self._first) / max(time.monotonic() - self._start, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            logger.info("progress: %d/%d steps, ETA %.0f s", done, self.total, eta)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
