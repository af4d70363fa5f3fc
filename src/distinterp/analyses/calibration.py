"""The calibration choice rule: which sampler setting of an (lr x other settings) sweep to use, and the
estimate it gives. Pure: arrays in, a choice and its reason out.

Why this rule. The LLC estimate of a finite run, against the step size lr, carries two biases: with too
small an lr the chains have not left the checkpoint within the run, and the estimator (which averages
every step) takes in that transient, biased towards 0 (the diagnostics see it: chains that disagree,
R-hat, or drift, stationarity); with a larger lr the discretisation biases it up, to first order in lr
(Vollmer, Zygalakis & Teh 2016, JMLR 17, "Exploration of the (non-)asymptotic bias and variance of
stochastic gradient Langevin dynamics"), until chains diverge. So among the runs that equilibrated the
smallest lr has the least bias, and two equilibrated step sizes h < h' remove the first-order term by
Richardson extrapolation, m(h) - (m(h') - m(h)) h / (h' - h) (Durmus, Simsekli, Moulines, Badeau &
Richard 2016, NeurIPS, "Stochastic gradient Richardson-Romberg Markov chain Monte Carlo").
Localization pulls chains back towards the checkpoint, which keeps them from wandering along flat or
descending directions, but it biases the estimate towards 0 and flattens the curve for the wrong
reason; so the least localization with a healthy cell is preferred over a flatter curve.

The rule:
1. Candidates are healthy cells (the diagnostics' verdict) with a finite, positive estimate.
2. Groups are the settings of the other grid fields, ordered least localization first; the chosen group
   is the first with a candidate.
3. In it the smallest candidate lr is chosen. When the next larger lr of the grid is a candidate too,
   the estimate is the Richardson extrapolation of the two (unless the larger one's exceeds FIRST_ORDER
   times the chosen one's), and the choice is `confirmed` when they agree within `tolerance` of their
   mean (plus two standard errors); else the estimate is the chosen cell's own, unconfirmed.
4. No candidate: no choice.

Limits (measured in tests/test_calibrate.py and benchmarks/bench_trajectory.py): the choice is only as
fine as the lr grid (half a decade apart by default); a run at the chosen lr alone keeps that lr's
first-order bias (the extrapolated estimate needs its neighbour's run too); longer runs equilibrate at
smaller lr, so calibrate with the draws the production run will have; the extrapolation assumes both
step sizes are in the first-order regime; and the rule is only as good as the health verdict: at a point
that is not a local minimum no lr is right, and the diagnostics should flag every cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCE = 0.1
"""The chosen lr is `confirmed` when the next larger lr's estimate differs by at most this fraction of
their mean, plus two standard errors of the difference."""


FIRST_ORDER = 2.0
"""Extrapolate only when the larger lr's estimate is at most this multiple of the chosen one's: beyond it
the larger step is far from the first-order regime (near instability) and the straight line misleads."""


@dataclass(frozen=True)
class Choice:
    """The chosen lr, the cells it rests on (indices into the inputs: the chosen one, then its larger-lr
    neighbour when healthy), the LLC estimate the rule gives, and why; lr None when nothing qualified."""

    lr: float | None
    cells: tuple[int, ...]
    reason: str
    confirmed: bool
    estimate: float = float("nan")


def choose(
    lr: Sequence[float],
    group: Sequence[int],
    llc_mean: Sequence[float],
    llc_sem: Sequence[float],
    healthy: Sequence[bool],
    *,
    tolerance: float = TOLERANCE,
) -> Choice:
    """Apply the rule above. `group[i]` ranks cell i's other settings (0 = most preferred, e.g. the least
    localization)."""
    lr_a, mean, sem = (np.asarray(x, dtype=np.float64) for x in (lr, llc_mean, llc_sem))
    grp = np.asarray(group, dtype=np.int64)
    ok = np.asarray(healthy, dtype=bool) & np.isfinite(mean) & (mean > 0)
    sem = np.where(np.isfinite(sem), sem, 0.0)
    if not ok.any():
        return Choice(
            None, (), "no cell is healthy with a positive LLC; widen the grid or lengthen the runs", False
        )
    g = int(grp[ok].min())
    cells = sorted(np.flatnonzero(grp == g).tolist(), key=lambda j: lr_a[j])
    i = next(j for j in cells if ok[j])
    above = cells[cells.index(i) + 1] if cells.index(i) + 1 < len(cells) else None
    if above is None or not ok[above]:
        return Choice(
            float(lr_a[i]),
            (i,),
            f"UNCONFIRMED: lr={lr_a[i]:g} is the smallest healthy lr (LLC {mean[i]:.4g}), but the next "
            "larger lr is not healthy or not in the grid to confirm and extrapolate it",
            False,
            float(mean[i]),
        )
    diff, scale = abs(mean[above] - mean[i]), (mean[i] + mean[above]) / 2
    confirmed = bool(diff <= tolerance * scale + 2 * float(np.hypot(sem[i], sem[above])))
    if not mean[above] <= FIRST_ORDER * mean[i]:
        return Choice(
            float(lr_a[i]),
            (i, above),
            f"UNCONFIRMED: lr={lr_a[i]:g} is the smallest healthy lr (LLC {mean[i]:.4g}); the next, "
            f"lr={lr_a[above]:g}, gives {mean[above]:.4g}, more than {FIRST_ORDER:g}x: not first-order, "
            "so no extrapolation",
            False,
            float(mean[i]),
        )
    extrapolated = float(mean[i] - (mean[above] - mean[i]) * lr_a[i] / (lr_a[above] - lr_a[i]))
    return Choice(
        float(lr_a[i]),
        (i, above),
        f"{'confirmed' if confirmed else 'UNCONFIRMED'}: lr={lr_a[i]:g} is the smallest healthy lr "
        f"(LLC {mean[i]:.4g}); the next, lr={lr_a[above]:g}, gives {mean[above]:.4g} "
        f"({'within' if confirmed else 'beyond'} {tolerance:.0%}); extrapolated to lr -> 0: {extrapolated:.4g}",
        confirmed,
        extrapolated,
    )
