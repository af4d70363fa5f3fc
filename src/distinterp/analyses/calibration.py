"""The calibration choice rule: which sampler setting of an (lr x other settings) sweep to use, and the
estimate it gives. Pure: arrays in, a choice and its reason out.

Why this rule. The LLC estimate of a finite run, against the step size lr, carries two biases: with too
small an lr the chains have not left the checkpoint within the run, and the estimator (which averages
every step) takes in that transient, biased towards 0 (the diagnostics see it: chains that disagree,
R-hat, or drift, stationarity); with a larger lr the discretisation biases it up, to first order in lr
(Vollmer, Zygalakis & Teh 2016, JMLR 17, "Exploration of the (non-)asymptotic bias and variance of
stochastic gradient Langevin dynamics"), until chains diverge. So the estimate is flattest in lr where
the run has equilibrated and the discretisation is still first order, and there two step sizes h < h'
remove the first-order term by
Richardson extrapolation, m(h) - (m(h') - m(h)) h / (h' - h) (Durmus, Simsekli, Moulines, Badeau &
Richard 2016, NeurIPS, "Stochastic gradient Richardson-Romberg Markov chain Monte Carlo").
Localization pulls chains back towards the checkpoint, which keeps them from wandering along flat or
descending directions, but it biases the estimate towards 0 and flattens the curve for the wrong
reason; so the least localization with a healthy cell is preferred over a flatter curve.

The rule:
1. Candidates are healthy cells (the diagnostics' verdict) with a finite, positive estimate.
2. Groups are the settings of the other grid fields, ordered least localization first; the chosen group
   is the first with a pair of neighbouring lr (adjacent in its sorted lr) that are both candidates.
3. In it the flattest pair, smallest |d log LLC / d log lr|, is chosen, and its smaller lr. The
   transient makes the curve steep (LLC ~ lr while chains have not moved: a diagnosis cannot always
   see it when minibatch noise dominates the loss, as for the bigram at lr 1e-6), instability makes it
   steep again; the flattest stretch is where the run equilibrated and the discretisation is first
   order. If its slope is at most FIRST_ORDER_SLOPE, the estimate is the Richardson extrapolation of the
   pair to lr -> 0; else the smaller lr's own. `confirmed` when the pair agrees within `tolerance`.
4. No such pair: the first group's smallest healthy lr, unconfirmed; no candidate: no choice.

Limits (measured in tests/test_calibrate.py and benchmarks/bench_trajectory.py): the choice is only as
fine as the lr grid (half a decade apart by default); a run at the chosen lr alone keeps that lr's
first-order bias (the extrapolated estimate needs its neighbour's run too); longer runs equilibrate at
smaller lr, so calibrate with the draws the production run will have; the extrapolation assumes both
step sizes are in the first-order regime; and the rule is only as good as the health verdict: at a point
that is not a local minimum no lr is right, and the diagnostics should flag every cell.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCE = 0.1
"""The chosen lr is `confirmed` when the next larger lr's estimate differs by at most this fraction of
their mean, plus two standard errors of the difference."""


FIRST_ORDER_SLOPE = 0.25
"""Extrapolate only when the pair's |d log LLC / d log lr| is at most this (a half-decade step moves the
estimate by < 33 %): steeper, the pair is in the transient (slope ~1, LLC ~ lr) or near instability,
and a straight line in lr misleads."""


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
    for g in sorted(set(grp[ok].tolist())):
        cells = sorted(np.flatnonzero(grp == g).tolist(), key=lambda j: lr_a[j])
        pairs = [(a, b) for a, b in itertools.pairwise(cells) if ok[a] and ok[b]]
        if pairs:
            break
    else:
        g = int(grp[ok].min())
        i = min(np.flatnonzero(ok & (grp == g)).tolist(), key=lambda j: lr_a[j])
        return Choice(
            float(lr_a[i]),
            (i,),
            f"UNCONFIRMED: no two neighbouring lr are both healthy; lr={lr_a[i]:g} is the smallest healthy "
            f"lr (LLC {mean[i]:.4g})",
            False,
            float(mean[i]),
        )

    def slope(p: tuple[int, int]) -> float:
        return abs(math.log(mean[p[1]] / mean[p[0]]) / math.log(lr_a[p[1]] / lr_a[p[0]]))

    a, b = min(pairs, key=slope)
    diff, scale = abs(mean[b] - mean[a]), (mean[a] + mean[b]) / 2
    confirmed = bool(diff <= tolerance * scale + 2 * float(np.hypot(sem[a], sem[b])))
    pair = f"lr={lr_a[a]:g} -> {lr_a[b]:g}: LLC {mean[a]:.4g} -> {mean[b]:.4g}, log-slope {slope((a, b)):.2f}"
    if slope((a, b)) > FIRST_ORDER_SLOPE:
        return Choice(
            float(lr_a[a]),
            (a, b),
            f"UNCONFIRMED: flattest healthy pair {pair}, steeper than {FIRST_ORDER_SLOPE:g}: not first-order, "
            f"so lr={lr_a[a]:g}'s own estimate",
            False,
            float(mean[a]),
        )
    extrapolated = float(mean[a] - (mean[b] - mean[a]) * lr_a[a] / (lr_a[b] - lr_a[a]))
    return Choice(
        float(lr_a[a]),
        (a, b),
        f"{'confirmed' if confirmed else 'UNCONFIRMED'} ({'within' if confirmed else 'beyond'} {tolerance:.0%}): "
        f"flattest healthy pair {pair}; extrapolated to lr -> 0: {extrapolated:.4g}",
        confirmed,
        extrapolated,
    )
