"""Has the LLC estimate equilibrated? Pure checks on (chain, step) loss traces, shared by diagnose() and
calibrate(): arrays in, statistics out.

Why these. The estimator averages every step of a chain (devinterp's, burn-in included), so a chain that
has not forgotten its start biases the number itself, not only its error bar; and with a small step size
the chains can agree with each other (R-hat passes) while all of them are still rising. Two checks see it:

- the running-LLC plateau: the all-steps estimate against the mean of the last part of the chains (the
  transient's share of the reported number), and the last part's two halves against each other (is
  the tail itself still drifting). Chains are independent, so the standard error of each difference
  is their spread over chains, with no autocorrelation model;
- nested R-hat (Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari & Gelman 2023, arXiv 2110.13017):
  for many short chains, R-hat on groups of chains (superchains) rather than single chains, whose
  variance reflects what is left of the start rather than the chains' own noise.

And one that the loss cannot see: whether the chains stay near the checkpoint at all (`distance_growth`,
from save_metrics' distance). Along a direction the loss leaves exactly flat (a singular model's valley
without localization: the posterior is improper there) a chain diffuses without end, its distance growing
like sqrt(t), while its loss can look settled; what it reads then depends on how far it got. It is judged
only for runs with no prior of their own (no localization, weight decay or bounding box): with one the
posterior is proper, every direction relaxes in 2 / localization time units, and over the 5 of them a
calibration cell runs a stationary distance in one or two flat directions is as noisy as a diffusing
one (4 chains, simulated: the statistic's 5-95 % range is 0.6-4.7 against diffusion's 1.7-25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distinterp.analyses.chains import llc_estimate


@dataclass(frozen=True)
class Plateau:
    """The running-LLC plateau statistics of one store, relative to the tail's LLC (NaN when undefined)."""

    llc_all: float
    """The LLC over every step, as the estimator reports it."""
    llc_tail: float
    """The LLC over the last `tail` fraction of the steps."""
    transient: float
    """(llc_all - llc_tail) / |llc_tail|: the share of the transient in the reported number."""
    transient_se: float
    """Its standard error over chains (relative, same scale)."""
    drift: float
    """(second half of the tail - first half) / |llc_tail|: is the tail still moving."""
    drift_se: float
    """Its standard error over chains."""

    def equilibrated(self, tolerance: float, z: float) -> bool:
        """Both relative differences within `tolerance`, or not beyond z standard errors of it."""
        return all(
            not (np.isfinite(d) and abs(d) > tolerance + z * (se if np.isfinite(se) else 0.0))
            for d, se in ((self.transient, self.transient_se), (self.drift, self.drift_se))
        )


def running_llc_plateau(traces: np.ndarray, init_loss: float, n_beta: float, tail: float = 0.5) -> Plateau:
    """Plateau statistics of (chain, step) mean-loss traces (NaN past a chain's end) at this n_beta."""
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"traces: expected (chain, step), got shape {x.shape}")
    if not 0 < tail < 1:
        raise ValueError(f"tail: a fraction in (0, 1), got {tail}")
    nan = float("nan")
    rows = [r[np.isfinite(r)] for r in x]
    rows = [r for r in rows if r.size >= 8]
    if not rows:
        return Plateau(nan, nan, nan, nan, nan, nan)
    full, last, q3, q4 = [], [], [], []
    for r in rows:
        start = r.size - max(round(tail * r.size), 4)
        mid = start + (r.size - start) // 2
        full.append(r.mean())
        last.append(r[start:].mean())
        q3.append(r[start:mid].mean())
        q4.append(r[mid:].mean())

    def llc(v: list[float]) -> np.ndarray:
        return np.asarray(llc_estimate(np.asarray(v, dtype=np.float64), init_loss, n_beta))

    all_c, tail_c = llc(full), llc(last)
    scale = abs(float(tail_c.mean()))
    if not scale > 0:
        return Plateau(float(all_c.mean()), float(tail_c.mean()), nan, nan, nan, nan)
    gap = (all_c - tail_c) / scale
    move = (llc(q4) - llc(q3)) / scale

    def se(v: np.ndarray) -> float:
        return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else nan

    return Plateau(
        float(all_c.mean()), float(tail_c.mean()), float(gap.mean()), se(gap), float(move.mean()), se(move)
    )


def nested_rhat(traces: np.ndarray, superchains: int) -> float:
    """Nested R-hat of (chain, step) traces, consecutive chains grouped into `superchains` equal groups
    (Margossian et al. 2023, eq. 2.2-2.4): sqrt(1 + B / W), B the variance of the superchain means, W the
    mean over superchains of (variance of their chain means + mean within-chain variance)."""
    x = np.asarray(traces, dtype=np.float64)
    n_chains, n_steps = x.shape
    if superchains < 2 or n_chains % superchains or n_steps < 2 or not np.isfinite(x).all():
        return float("nan")
    m = n_chains // superchains
    groups = x.reshape(superchains, m, n_steps)
    chain_means = groups.mean(axis=2)
    super_means = chain_means.mean(axis=1)
    between = float(super_means.var(ddof=1))
    between_chains = chain_means.var(axis=1, ddof=1) if m > 1 else np.zeros(superchains)
    within_chains = groups.var(axis=2, ddof=1).mean(axis=1)
    within = float((between_chains + within_chains).mean())
    if within == 0:
        return 1.0 if between == 0 else float("inf")
    return math.sqrt(1.0 + between / within)


def distance_growth(distance: np.ndarray) -> tuple[np.ndarray, float]:
    """Per chain, and pooled over chains, the mean squared distance from the checkpoint over the last
    quarter of the steps over that of the first quarter, from (chain, step) distances (NaN past a chain's
    end). Diffusion along a flat valley (squared distance ~ t) gives (7/8) / (1/8) = 7; a chain the loss
    confines within a small part of the run gives ~1. Pooled: the ratio of the chains' summed quarter
    means (4 chains, one flat direction, simulated: diffusion 1.7-25, median 7; confined 0.7-1.33, 5th to
    95th percentile). inf for a chain whose distance is not finite, NaN for one shorter than 8 steps."""
    x = np.asarray(distance, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"distance: expected (chain, step), got shape {x.shape}")
    growth = np.full(x.shape[0], np.nan)
    first_sum = last_sum = 0.0
    for c, row in enumerate(x):
        ends = np.flatnonzero(~np.isnan(row))
        r = row[: ends[-1] + 1] if ends.size else row[:0]
        q = r.size // 4
        if q < 2:
            continue
        first, last = float(np.mean(r[:q] ** 2)), float(np.mean(r[-q:] ** 2))
        if not (np.isfinite(first) and np.isfinite(last)):
            growth[c] = np.inf
        elif first > 0:
            growth[c] = last / first
            first_sum, last_sum = first_sum + first, last_sum + last
    if np.isinf(growth).any():
        return growth, math.inf
    return growth, last_sum / first_sum if first_sum > 0 else math.nan


def localized(growth: float, threshold: float) -> bool:
    """The localization verdict on a pooled `distance_growth`: the chains' distance from the checkpoint has
    plateaued (growth at most `threshold`); unknown (NaN: no distance recorded, or not judged) counts as
    localized."""
    return not (growth > threshold)
