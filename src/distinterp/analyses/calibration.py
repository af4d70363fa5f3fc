"""The calibration choice rule: which sampler setting of an (lr x other settings) sweep to use, and the
estimate it gives. Pure: arrays in, a choice and its reason out.

Why this rule. The LLC estimate of a finite run, against the step size lr, carries two biases. With a
large lr the discretisation (and minibatch-gradient noise) biases it, to first order in lr (Vollmer,
Zygalakis & Teh 2016, JMLR 17, "Exploration of the (non-)asymptotic bias and variance of stochastic
gradient Langevin dynamics"), until chains diverge. With a small lr the chains need more steps to
forget the checkpoint: relaxation takes a fixed Langevin *time* lr x steps, so a fixed number of draws
per cell leaves the small-lr cells in their transient, where the estimator (which averages every step)
is biased towards 0. A rule that looks for the flattest stretch of the curve is then fooled: a
transient cell next to a biased one can look flat, and strong localization flattens the curve by
pulling every estimate down. So:

- the cells are long enough to equilibrate at every lr (`jobs.calibrate` gives each cell the same
  Langevin time, draws proportional to 1/lr, up to a cap), and a cell counts only when the diagnostics,
  which include the running-LLC plateau check (`analyses.equilibration`), say it has equilibrated;
- among equilibrated cells the smallest lr has the least discretisation bias, and the first-order
  term is removed by a straight-line fit of the estimate against lr over the smallest equilibrated
  lrs, extrapolated to lr -> 0 (Richardson-Romberg: Durmus, Simsekli, Moulines, Badeau & Richard 2016,
  NeurIPS, "Stochastic gradient Richardson-Romberg Markov chain Monte Carlo"), rather than over one pair;
- localization is chosen for mixing, not flatness: the least localization whose cells equilibrate and
  whose chains stay localized (it biases the estimate towards 0 by an amount that grows with
  localization / n_beta^(1/2) for quartic directions: `toy.monomial_expected_llc` gives -1 % at
  localization 1 and -10 % at 10 for w^4 at n_beta 1000, so the least that mixes is the least biased).
  "Stay localized" matters without localization: at a singular checkpoint the posterior without a
  prior is often improper (the normal crossing w1^2 w2^4 is flat along both axes; reduced-rank
  regression at A = B = 0 is flat along {A = 0, B arbitrary}, and integrating A out leaves
  det(B^T B)^(-M/2)-type tails that do not integrate), so a chain there diffuses along the valley
  without end and its reading depends on how far it got, while its loss trace can look settled (the
  crossing at localization 0: lr 3e-5 / 1e-4 / 3e-4 read 0.222 / 0.241 / 0.286 and the line gave
  -13.7 %, where localization 1's lr 1e-4 cell reads -1.5 %). A cell without a prior of its own counts
  only when its chains' mean squared distance from the checkpoint has stopped growing (the `distance`
  check, `Thresholds.distance_growth`, from the distance `jobs.calibrate` records with
  save_metrics="distance"); a group whose equilibrated cells fail it is passed over, named in the
  reason ("not localized: raise localization"). Along an exact symmetry of the loss (a softmax's
  shift) this passes over localization 0 although its LLC is right; the cost is localization 1's small
  bias.

Before any cell runs, `jobs.calibrate` leaves out the lrs whose Euler-Maruyama step is too stiff for the
loss's top curvature at the checkpoint (`analyses.curvature`: lr x (n_beta lambda_max + localization)
above 1), so no cell this rule sees carries that bias, and gives the cells their Langevin time out of
one draw budget, cheapest first (`jobs.calibrate.allocate_draws`).

The rule:
1. Candidates are healthy cells (the diagnostics' verdict, plateau check included) with a finite,
   positive estimate that ran their full Langevin time, or that the draw cap cut short but ran at
   least 25 % of it and show they have settled (`settled`: both plateau differences within
   CUT_TOLERANCE as measured, no allowance for noise; `jobs.calibrate` passes the other cut cells as
   unhealthy). A full-time cell is presumed equilibrated unless the check shows otherwise; a cut one
   is not, since the check cannot see a transient much longer than the run (the 4-3-5 regression at
   1 time unit of 10, -12 % against the truth, passed it; the normal crossing's lr 3e-5 cell at
   localization 10, 30 % of its time, passed it, anchored the line and pulled the estimate to -31 %).
2. Groups are the settings of the other grid fields, ordered least localization first; the chosen group
   is the first with two neighbouring lr (adjacent in its sorted lr) that are both candidates and
   localized (`localized`: the `distance` check, judged only for cells with no localization, weight
   decay or bounding box; `Choice.not_localized` names the groups it passed over).
3. In it, the run of neighbouring candidates that starts at its smallest candidate lr; its smallest
   `FIT_CELLS` lr are fitted by LLC = a + b lr (weighted by their standard errors). If the two smallest
   move by at most FIRST_ORDER_SLOPE in log-log (first order), the estimate is a, the extrapolation to
   lr -> 0; else the group's smallest candidate's own, which can lie below the run with a failed cell
   between (3-2-6 at the truth, default grid, data seed 2: lr 3e-4 failed, 1e-3 and 3e-3 were not first
   order, and lr 1e-3's own read +26 % against the float64 target where the lone lr 1e-4 reads +0.6 %).
   The chosen lr is the smallest candidate (least biased, and its cell length is the one known to
   equilibrate). Only the fallback reaches past a failed cell: a line across one (replayed on the
   recorded cells) moved 4 estimates, each away from its target. `confirmed` when the smallest lr's own estimate and
   the extrapolation agree within `tolerance` (plus z standard errors): the discretisation bias at
   the chosen lr is small; and the estimate is precise enough to tell: z of its standard errors
   (`Choice.estimate_se`, over chains, propagated through the line by `fit_line_se`, with the line's
   shape counted in over three or more lr: `line_to_zero`) lie within `tolerance` of it. z is the 95 %
   quantile of Student's t over chains - 1 degrees of freedom (`z95`: 3.18 for 4 chains, 2.36 for 8),
   since a standard error over a few chains is itself uncertain; 2 when the chain count is not given. An
   extrapolation magnifies the cells' noise (two cells a half-decade apart: about 1.5 x the smaller
   lr's standard error), so a grid of few chains can agree and still not confirm.
4. The line removes the chosen group's step-size bias but not its localization bias. So a less localized
   group with a single candidate (no neighbour to extrapolate with) at an lr within the line's range is
   weighed against it at that lr (`_lone_preferred`): when the extra localization pulls the estimate by
   more than `tolerance` there and by more than the step-size bias the line measures at that lr, the
   lone cell's own estimate is taken, unconfirmed (the normal crossing at n 1e6: localization 1's lone
   lr 1e-4 cell, -1.5 %, against localization 10's line, -22.8 %; the 2-5-2 regression on an lr >= 3e-4
   grid: +6.3 % against -9.8 %).
5. No such pair: the first group's smallest healthy lr, unconfirmed; no candidate: no choice.

Limits: the choice is only as fine as the lr grid; a run at the chosen lr alone keeps its first-order
bias (`llc(..., extrapolate=...)` reruns the fitted lrs and returns the extrapolation too); the rule is
only as good as the health verdict, so at a point that is not a local minimum it should make no choice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCE = 0.1
"""`confirmed` when the chosen lr's own estimate and the extrapolation differ by at most this fraction of
the extrapolation, plus z standard errors, and z standard errors of the estimate are within it (`z95`)."""

FIRST_ORDER_SLOPE = 0.25
"""Extrapolate only when the two smallest equilibrated lr's |d log LLC / d log lr| is at most this (a
half-decade step moves the estimate by < 33 %): steeper, the pair is near instability or still in a
transient the diagnostics missed, and a straight line in lr misleads."""

Floats = Sequence[float] | np.ndarray
"""A 1-D run of numbers: a list or an array."""

Bools = Sequence[bool] | np.ndarray
"""A 1-D run of verdicts: a list or a boolean array."""

CUT_TOLERANCE = 0.05
"""A cut cell's plateau differences must be within this (diagnose()'s default plateau tolerance, half the
10 % an estimate is confirmed to) as measured: the calibration check also lets a difference pass when
it is within 2.5 % plus two standard errors, which for a cell with no time argument excuses a tail that
is still moving (the normal crossing's lr 3e-5 cell at localization 10: transient -8.8 % +- 11 %, tail
drift +49 % +- 38 %, passed)."""

FIT_CELLS = 3
"""How many of the smallest equilibrated neighbouring lr the straight line is fitted to (2 = Richardson)."""


def z95(chains: int | None) -> float:
    """Standard errors either side of a 95 % interval for a mean over `chains` chains: Student's t over
    chains - 1 degrees of freedom (12.7 for 2 chains, 3.18 for 4, 2.36 for 8, 2.05 for 30): a standard
    error from 4 chains has 3 degrees of freedom, and 2 of them cover 86 %, not 95 %. 2 when not known.
    For an extrapolation the cells' errors pool more degrees of freedom; chains - 1 is the cautious end."""
    if chains is None or chains < 2:
        return 2.0
    from scipy.stats import t as student_t  # imported when used (~0.3 s)

    return float(student_t.ppf(0.975, chains - 1))


@dataclass(frozen=True)
class Choice:
    """The chosen lr, the cells it rests on (indices into the inputs: the chosen one first, then the other
    fitted lrs), the LLC estimate the rule gives, and why; lr None when nothing qualified."""

    lr: float | None
    cells: tuple[int, ...]
    reason: str
    confirmed: bool
    estimate: float = float("nan")
    extrapolated: bool = False
    estimate_se: float = float("nan")
    """The estimate's standard error: over chains for one cell's own estimate, propagated through the
    weighted line for an extrapolation, with the line's shape counted in (`line_to_zero`)."""
    not_localized: tuple[int, ...] = ()
    """Groups (ranks, as `group` gives them) preferred to the chosen one that had two neighbouring
    equilibrated lr but were passed over because their chains were not localized."""
    estimate_z: float = 2.0
    """Standard errors either side of the estimate's 95 % interval, the one `confirmed` is judged with
    (`z95` of the chain count)."""


def settled(transient: float, drift: float, tolerance: float = CUT_TOLERANCE) -> bool:
    """Whether a cell the draw cap cut short shows it has equilibrated: both running-LLC plateau differences
    (`analyses.equilibration.Plateau`) within `tolerance` as measured, with no allowance for their noise."""
    return all(math.isfinite(d) and abs(d) <= tolerance for d in (transient, drift))


def extrapolate_to_zero(lr: Floats, llc_mean: Floats, llc_sem: Floats) -> float:
    """Intercept of the weighted least-squares line LLC = a + b lr: the estimate at lr -> 0 (two points:
    Richardson extrapolation). Standard errors below 1 % of the mean are floored there."""
    return fit_line(lr, llc_mean, llc_sem)[0]


def fit_line(lr: Floats, llc_mean: Floats, llc_sem: Floats) -> tuple[float, float]:
    """(a, b) of the weighted least-squares line LLC = a + b lr."""
    a, b, _ = fit_line_se(lr, llc_mean, llc_sem)
    return a, b


def fit_line_se(lr: Floats, llc_mean: Floats, llc_sem: Floats) -> tuple[float, float, float]:
    """(a, b, se of a) of the weighted least-squares line LLC = a + b lr: the intercept's standard error
    from the points' own (floored) standard errors, (X^T W X)^-1 [0, 0] ** 0.5, not from the scatter
    about the line (two points have none). Two points: sqrt(x2^2 s1^2 + x1^2 s2^2) / (x2 - x1)."""
    x, y, s = (np.asarray(v, dtype=np.float64) for v in (lr, llc_mean, llc_sem))
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(f"lr: need at least two distinct step sizes to extrapolate, got {list(x)}")
    s = np.maximum(np.where(np.isfinite(s), s, 0.0), 0.01 * np.abs(y).mean() + 1e-12)
    w = 1.0 / s**2
    design = np.stack([np.ones_like(x), x], axis=1)
    normal = design.T @ (w[:, None] * design)
    a, b = np.linalg.solve(normal, design.T @ (w * y))
    cov = np.linalg.inv(normal)
    return float(a), float(b), float(math.sqrt(max(float(cov[0, 0]), 0.0)))


def line_to_zero(lr: Floats, llc_mean: Floats, llc_sem: Floats) -> tuple[float, float, float]:
    """(a, b, se of a) of the line through the points to lr -> 0, the s.e. counting how far the intercept
    rests on the line's shape: over three or more points, the statistical s.e. (`fit_line_se`) and the
    distance to the two smallest lr's own intercept (Richardson), added in quadrature. Two points: the
    statistical s.e. alone.

    Why: the line removes the first-order step-size bias only; where the points bend, the intercept moves
    with the points chosen, by more than the chains' noise. Measured against float64 references (4-3-5
    trained on an lr >= 3e-4 grid, 5 data seeds each with its own sampler seed): the statistical s.e.
    alone covered the reference within 2 s.e. in 1 seed of 5, with this term in 4; the bigram's in 5 of 5
    either way (`benchmarks/results/known_answers_empirical_v4_*`, the README's "Each data seed with its
    own sampler seed")."""
    x, y, s = (np.asarray(v, dtype=np.float64) for v in (lr, llc_mean, llc_sem))
    a, b, se = fit_line_se(x, y, s)
    if x.size > 2:
        two = np.argsort(x)[:2]
        a2 = fit_line_se(x[two], y[two], s[two])[0]
        se = math.hypot(se, a - a2)
    return a, b, se


def choose(
    lr: Sequence[float],
    group: Sequence[int],
    llc_mean: Sequence[float],
    llc_sem: Sequence[float],
    healthy: Bools,
    *,
    localized: Bools | None = None,
    tolerance: float = TOLERANCE,
    fit_cells: int = FIT_CELLS,
    chains: int | None = None,
) -> Choice:
    """Apply the rule above. `group[i]` ranks cell i's other settings (0 = most preferred, e.g. the least
    localization); `localized[i]` is cell i's localization verdict (default: every cell localized);
    `chains` is how many chains each standard error is over (`z95`)."""
    lr_a, mean, sem = (np.asarray(x, dtype=np.float64) for x in (lr, llc_mean, llc_sem))
    grp = np.asarray(group, dtype=np.int64)
    settled_ok = np.asarray(healthy, dtype=bool) & np.isfinite(mean) & (mean > 0)
    held = np.ones(len(lr_a), dtype=bool) if localized is None else np.asarray(localized, dtype=bool)
    ok = settled_ok & held
    passed = _passed_over(lr_a, grp, settled_ok, held)
    sem = np.where(np.isfinite(sem), sem, 0.0)
    if fit_cells < 2:
        raise ValueError(f"fit_cells: need at least 2 step sizes to fit a line, got {fit_cells}")
    z = z95(chains)
    if not ok.any():
        why = (
            "no cell is healthy with a positive LLC; widen the grid or lengthen the runs"
            if not settled_ok.any()
            else "no healthy cell's chains are localized (distance from the checkpoint still growing); "
            "raise localization"
        )
        return Choice(None, (), why, False, not_localized=passed, estimate_z=z)
    for g in sorted(set(grp[ok].tolist())):
        cells = sorted(np.flatnonzero(grp == g).tolist(), key=lambda j: lr_a[j])
        if any(ok[a] and ok[b] for a, b in itertools.pairwise(cells)):
            break
    else:
        g = int(grp[ok].min())
        i = min(np.flatnonzero(ok & (grp == g)).tolist(), key=lambda j: lr_a[j])
        return Choice(
            float(lr_a[i]),
            (i,),
            f"UNCONFIRMED: no two neighbouring lr are both equilibrated and localized; lr={lr_a[i]:g} is "
            f"the smallest healthy lr (LLC {mean[i]:.4g} +- {sem[i]:.2g})",
            False,
            float(mean[i]),
            estimate_se=float(sem[i]),
            not_localized=passed,
            estimate_z=z,
        )
    passed = tuple(p for p in passed if p < g)
    first = next(k for k, (a, b) in enumerate(itertools.pairwise(cells)) if ok[a] and ok[b])
    run = [cells[first]]
    for j in cells[first + 1 :]:
        if not ok[j]:
            break
        run.append(j)
    fit = run[:fit_cells]
    a, b = fit[0], fit[1]
    slope = abs(math.log(mean[b] / mean[a]) / math.log(lr_a[b] / lr_a[a]))
    values = ", ".join(f"{lr_a[j]:g}: {mean[j]:.4g}" for j in fit)
    if slope > FIRST_ORDER_SLOPE:
        own = min((j for j in cells if ok[j]), key=lambda j: lr_a[j])  # a lone smaller one is less biased
        below = f"; the smallest, lr={lr_a[own]:g}, lies below them" if own != a else ""
        return Choice(
            float(lr_a[own]),
            (own,) if own != a else tuple(fit),
            f"UNCONFIRMED: smallest equilibrated neighbouring lr {values}; log-slope {slope:.2f} > "
            f"{FIRST_ORDER_SLOPE:g} is not first order{below}, so lr={lr_a[own]:g}'s own estimate "
            f"({mean[own]:.4g} +- {sem[own]:.2g})",
            False,
            float(mean[own]),
            estimate_se=float(sem[own]),
            not_localized=passed,
            estimate_z=z,
        )
    while True:  # drop the largest lr while the points are not on a line (curvature: past first order)
        estimate, slope_b, _ = fit_line_se(lr_a[fit], mean[fit], sem[fit])
        line = estimate + slope_b * lr_a[fit]
        off = np.abs(mean[fit] - line) - 2 * sem[fit] - tolerance / 2 * abs(estimate)
        if len(fit) == 2 or not (off > 0).any():
            break
        fit = fit[:-1]
    estimate_se = line_to_zero(lr_a[fit], mean[fit], sem[fit])[2]
    values = ", ".join(f"{lr_a[j]:g}: {mean[j]:.4g}" for j in fit)
    lone = _lone_preferred(lr_a, grp, mean, ok, g, fit, estimate, slope_b, tolerance)
    if lone is not None:
        i, step_bias, pull = lone
        return Choice(
            float(lr_a[i]),
            (i,),
            f"UNCONFIRMED: lr={lr_a[i]:g}'s own estimate ({mean[i]:.4g} +- {sem[i]:.2g}), a lone equilibrated "
            f"lr of a less localized setting, is preferred to the more localized line ({values}; to lr -> 0: "
            f"{estimate:.4g} +- {estimate_se:.2g}): at lr={lr_a[i]:g} the extra localization pulls the estimate "
            f"by {pull:+.0%}, while that line puts the step-size bias there at {step_bias:+.0%}",
            False,
            float(mean[i]),
            estimate_se=float(sem[i]),
            not_localized=passed,
            estimate_z=z,
        )
    diff = abs(mean[a] - estimate)
    agree = bool(diff <= tolerance * abs(estimate) + z * float(np.hypot(sem[a], sem[b])))
    precise = bool(z * estimate_se <= tolerance * abs(estimate))
    confirmed = agree and precise
    why = (
        f"{'within' if agree else 'beyond'} {tolerance:.0%} of lr={lr_a[a]:g}'s own"
        if precise or not agree
        else f"agrees with lr={lr_a[a]:g}'s own, but {z:.3g} s.e. ({z * estimate_se / abs(estimate):.0%}, "
        f"95 % over {chains or 'an unknown number of'} chains) exceed {tolerance:.0%}: more chains or draws"
    )
    return Choice(
        float(lr_a[a]),
        tuple(fit),
        f"{'confirmed' if confirmed else 'UNCONFIRMED'}: smallest equilibrated lr {values} (LLC by lr); "
        f"straight line to lr -> 0: {estimate:.4g} +- {estimate_se:.2g}, {why}",
        confirmed,
        estimate,
        True,
        estimate_se,
        passed,
        estimate_z=z,
    )


def _lone_preferred(
    lr: np.ndarray,
    group: np.ndarray,
    mean: np.ndarray,
    ok: np.ndarray,
    chosen: int,
    fit: list[int],
    estimate: float,
    slope: float,
    tolerance: float,
) -> tuple[int, float, float] | None:
    """A lone candidate of a more preferred (less localized) group that beats the chosen group's line, as
    (cell, its step-size bias as the line measures it, the localization's pull at its lr), or None.

    The line removes the chosen group's step-size bias but not its localization bias, which no fit over lr
    can see. Where a less localized group has a single candidate at an lr within the line's range, the two
    biases are compared at that lr: the step-size bias by the line (slope x lr / intercept), the pull of the
    extra localization by the lone cell against the line there. The lone cell wins when the pull exceeds
    `tolerance` and the step-size bias is the smaller (the normal crossing at n 1e6: localization 1's lone
    lr 1e-4 cell reads -1.5 %, localization 10's line -22.8 %, its pull -17 % against a step-size bias of
    +6 % at that lr)."""
    if not estimate > 0:
        return None
    for g in sorted(set(group[ok & (group < chosen)].tolist())):  # least localized first
        i = int(min(np.flatnonzero(ok & (group == g)).tolist(), key=lambda j: lr[j]))
        on_line = estimate + slope * lr[i]
        if lr[i] > max(lr[j] for j in fit) or not on_line > 0:
            continue
        step_bias = slope * lr[i] / estimate
        pull = mean[i] / on_line - 1.0
        if abs(pull) > tolerance and abs(step_bias) < abs(pull):
            return i, float(step_bias), float(-pull / (1.0 + pull))
    return None


def _passed_over(lr: np.ndarray, group: np.ndarray, settled: np.ndarray, held: np.ndarray) -> tuple[int, ...]:
    """The groups with two neighbouring equilibrated lr (`settled`) that are not both localized (`held`)
    in any such pair: the ones the localization check passes over."""
    out = []
    for g in sorted(set(group.tolist())):
        cells = sorted(np.flatnonzero(group == g).tolist(), key=lambda j: lr[j])
        pairs = [(a, b) for a, b in itertools.pairwise(cells) if settled[a] and settled[b]]
        if pairs and not any(held[a] and held[b] for a, b in pairs):
            out.append(int(g))
    return tuple(out)
