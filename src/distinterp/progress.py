"""Rank 0's live view of a run, read from the store (so it covers every rank and array task): steps done,
true rate and ETA (a resumed run starts from what the store holds), the running LLC estimate, diverged
chains, and one closing line; plus `progress_bar` for analyses that take more than a few seconds."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import zarr
from tqdm.auto import tqdm

from distinterp.analyses.chains import llc_estimate
from distinterp.parallel.plan import Plan
from distinterp.store import Location, SampleStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

BAR_DELAY_S = 3.0
"""Analyses show a bar only once they have run this long (tqdm's delay)."""


def progress_bar(
    items: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it", disable: bool = False
) -> Iterator[T]:
    """A bar over `items` on stderr that appears only when the loop takes more than BAR_DELAY_S."""
    yield from tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        delay=BAR_DELAY_S,
        leave=False,
        file=sys.stderr,
        disable=disable,
    )


class RunningLLC:
    """The LLC over every step durably written so far, chunk by chunk (each chunk is read once)."""

    def __init__(self, store: SampleStore | Location, num_chains: int, n_beta: float):
        location = store.location if isinstance(store, SampleStore) else store
        zstore = location.zarr_store(read_only=True)
        self.losses = zarr.open_array(zstore, path="sampling_loss_micro", mode="r", zarr_format=3)
        self.init = zarr.open_array(zstore, path="init_loss", mode="r", zarr_format=3)
        self.n_beta = n_beta
        self.folded = np.zeros(num_chains, dtype=np.int64)  # steps of each chain already summed
        self.sums = np.zeros(num_chains)

    def fold(self, chain: int, steps_done: int) -> None:
        """Add the steps of `chain` written since the last call."""
        start = int(self.folded[chain])
        if steps_done > start:
            block = np.asarray(self.losses[chain, start:steps_done], dtype=np.float64)
            self.sums[chain] += block.mean(axis=(1, 2)).sum()
            self.folded[chain] = steps_done

    def estimate(self, chains: list[int]) -> float:
        """n_beta * (mean loss over the chains' folded steps - their mean init loss); NaN before any."""
        chains = [c for c in chains if self.folded[c] > 0]
        if not chains:
            return float("nan")
        init = float(np.nanmean(np.asarray(self.init[...], np.float64)[chains]))
        mean = self.sums[chains].sum() / self.folded[chains].sum()
        return float(llc_estimate(mean, init, self.n_beta))


class ProgressReporter:
    """Polls the store's per-chain progress on a thread: a bar with the true rate, ETA, running LLC and
    diverged chains; says when it resumes a run, and prints elapsed time and steps/s at the end."""

    def __init__(
        self,
        store: SampleStore,
        plan: Plan,
        interval_s: float = 2.0,
        *,
        initial: np.ndarray | None = None,
        resumable: bool = False,
    ):
        """`initial`: per-chain steps the store held before any rank started (read by rank 0 while it
        prepared the store; read here otherwise); `resumable`: unfinished chains continue from
        checkpoints (else they restart, and their old steps are not counted as done)."""
        schema = store.schema_for("progress")
        self.store = store
        self.num_steps = schema.num_steps
        self.chains = list(plan.chains)
        self.total = schema.num_steps * len(self.chains)
        self.interval_s = interval_s
        self.llc = RunningLLC(
            store, schema.num_chains, float(schema.attrs["metadata"]["config"]["sampler"]["n_beta"])
        )
        steps = store.progress()[0] if initial is None else initial
        complete = int((steps[self.chains] >= self.num_steps).sum())
        kept = steps if resumable else np.where(steps >= self.num_steps, steps, 0)
        self.first = self._done(kept)
        self.diverged = 0
        self.live = list(self.chains)
        if self.first > 0:
            tqdm.write(
                f"resuming: {complete} of {len(self.chains)} chains complete "
                f"({self.first}/{self.total} steps already in {store})",
                file=sys.stderr,
            )
        self._bar = tqdm(
            total=self.total,
            initial=self.first,  # the rate and ETA count this session's steps only
            desc="SGLD steps (all ranks)",
            unit="step",
            leave=False,
            file=sys.stderr,
        )
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="distinterp-progress", daemon=True)
        self._thread.start()

    def _done(self, steps: np.ndarray) -> int:
        return int(steps[self.chains].clip(max=self.num_steps).sum())

    def poll(self) -> int:
        """Read the store's progress once, fold new steps into the LLC and update the bar; steps done."""
        steps, diverged = self.store.progress()
        live = self.live = [c for c in self.chains if diverged[c] < 0]
        for c in live:
            self.llc.fold(c, int(steps[c]))
        done = self._done(steps)
        with self._lock:
            self.diverged = int((diverged[self.chains] >= 0).sum())
            self._bar.update(max(done - self._bar.n, 0))  # a restarted chain's rows are rewritten
            self._bar.set_postfix_str(
                f"LLC≈{self.llc.estimate(live):.4g}, diverged {self.diverged}", refresh=True
            )
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - display only; never stop sampling for it
                logger.debug("progress read failed: %s", e)

    def stop(self, summary: bool = True) -> str:
        """Close the bar and, with `summary` (sampling ended normally, not interrupted or failed), print
        one line: steps this session, elapsed time, steps/s, LLC, diverged."""
        self._stop.set()
        self._thread.join(timeout=5)
        if not summary:
            self._bar.close()
            return ""
        try:
            done = self.poll()
        except Exception:  # noqa: BLE001 - the store may be unreachable after a failure
            done = self._bar.n
        self._bar.close()
        elapsed = time.monotonic() - self._start
        new = max(done - self.first, 0)
        estimate = self.llc.estimate(self.live)
        line = (
            f"sampled {new} steps in {elapsed:.1f} s ({new / max(elapsed, 1e-9):.1f} steps/s, all ranks); "
            f"{done}/{self.total} steps in the store, {self.diverged} chain(s) diverged"
            + (f", LLC ≈ {estimate:.4g}" if np.isfinite(estimate) else "")
        )
        print(line, file=sys.stderr)
        return line
