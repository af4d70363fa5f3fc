"""Is this LLC trustworthy? `diagnose(samples)` checks a sampling store's chains and names what to fix.

Every check reads the store one (chain, step-chunk) block at a time, so memory stays at one chunk, and
works on live (incomplete) stores, devinterp-written stores and fsspec URLs. Each threshold is a field of
`Thresholds`, documented with where it comes from. The statistics behind the verdict are returned as a
per-chain `xr.Dataset` (`Diagnosis.checks`), so reports and pipelines can show or test them.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from distinterp.analyses.chains import chain_status, llc_estimate
from distinterp.analyses.equilibration import (
    distance_growth,
    localized,
    nested_rhat,
    running_llc_plateau,
)
from distinterp.errors import UnhealthyRunWarning as UnhealthyRunWarning  # re-exported: its old home
from distinterp.integrity import names_damaged_chunks
from distinterp.progress import progress_bar
from distinterp.store import STEPS_DONE
from distinterp.store.source import Samples, samples_of

logger = logging.getLogger(__name__)

CHECKS = (
    "diverged",
    "incomplete",
    "stationarity",
    "plateau",
    "rhat",
    "nested_rhat",
    "ess",
    "below_init",
    "bounds",
    "outlier",
    "distance",
    "grad_vs_noise",
    "mala",
)
"""The checks, in the order problems are listed."""


@dataclass(frozen=True)
class Thresholds:
    """Where each check draws its line, and the source of that line."""

    rhat: float = 1.1
    """Rank-normalised split R-hat above this fails the run: the chains disagree (Gelman et al., Bayesian Data
    Analysis, 3rd ed., sec. 11.4, the classic 1.1; it sees chains stuck apart, e.g. one offset chain). Not
    Vehtari et al. 2021's 1.01 as a failure: that line is for many long chains from dispersed starts; our
    chains start at one checkpoint and are exchangeable, and then R-hat ~ sqrt(1 + 1 / ESS per chain) (Vats
    & Knudson 2021, Statistical Science 36(4), 'Revisiting the Gelman-Rubin diagnostic'), so 1.01 only says
    ESS < 50 per chain, which `ess_per_chain` says directly, and whether the start-up is over is what the
    `plateau` check measures (`benchmarks/results/known_answers_equilibration.md`: R-hat > 1.01 in 5 of 13
    equilibrated cells)."""
    rhat_warn: float = 1.01
    """R-hat above this (and not above `rhat`) is noted, not failed: Vehtari, Gelman, Simpson, Carpenter &
    Buerkner 2021 (Bayesian Analysis 16(2), 'Rank-normalization, folding, and localization'), sec. 4."""
    ess_per_chain: float = 50.0
    """Bulk ESS over all chains below this x chains fails the run: the R-hat 1.01 line of Vehtari et al.
    2021 restated for exchangeable chains (Vats & Knudson 2021: R-hat 1.01 <=> ESS 50 per chain); fewer
    effective draws than that and neither the Monte Carlo error nor the plateau differences can be trusted."""
    ess_warn_per_chain: float = 100.0
    """Bulk ESS below this x chains (and not below `ess_per_chain`) is noted: Vehtari et al. 2021, sec. 4
    (ESS > 400 for four chains, for R-hat and the Monte Carlo error to be reliable)."""
    geweke_z: float = 3.0
    """|z| of Geweke's test (first 10 % vs last 50 % of a chain's loss trace after burn-in; Geweke 1992, 'Evaluating
    the accuracy of sampling-based approaches') above this: the chain is noted as not stationary, not failed.
    Geweke's z takes the first window's Monte Carlo error from that window alone (10 % of the chain), which
    a slow singular model's loss outlasts, so |z| is inflated, and it flags any visible start-up whatever
    its share of the estimate (`stationarity` in 9 of 13 equilibrated cells of the equilibration
    benchmark before it became a note); the share itself is what the `plateau` check fails on."""
    geweke_first: float = 0.1
    """Geweke's first window, as a fraction of the chain (Geweke 1992)."""
    geweke_last: float = 0.5
    """Geweke's last window, as a fraction of the chain (Geweke 1992)."""
    plateau_tolerance: float = 0.05
    """Running-LLC plateau (`analyses.equilibration`): the LLC over every step may differ from the LLC over
    the last `plateau_tail` of the steps, and that tail's two halves from each other, by at most this
    fraction (beyond `plateau_z` standard errors over chains). The estimator averages every step, so the
    first difference is the transient's share of the reported number: half the 10 % a calibrated estimate
    is held to, so a cell that passes has a transient that cannot take it there alone. A chain whose
    running LLC is still rising fails it even when the chains agree with each other (R-hat passes)."""
    plateau_tail: float = 0.5
    """The last part of the chain the plateau check compares against (the second half, as split R-hat
    and Geweke's last window)."""
    plateau_z: float = 2.0
    """Standard errors over chains that a plateau difference must exceed the tolerance by (a two-sided
    ~5 % test with the chains as independent replicates)."""
    plateau_rise: float = 0.05
    """The running LLC is still rising when, as measured (no standard-error allowance), the all-steps LLC
    lies below the tail's, or the tail's second half above its first, by more than this fraction. One-sided:
    chains start at the checkpoint, a minimum, so the start-up only raises the loss; a tail rising by more
    than the 5 % tolerance is that start-up unfinished (calibrate's `settled` rule for cut cells, two-sided
    there), while a falling one is the slow fluctuation of the loss, which the two-sided test above covers.
    Measured against the truth: it catches the 4-3-5 lr 3e-3 cell at 3 time units (drift +6.6 %, -9 % off)."""
    min_relaxations: float = 1.25
    """With SGLD and localization > 0: a run shorter than this many relaxation times of the localization
    prior fails `plateau`. The prior pulls every coordinate back at rate localization / 2 per unit of
    Langevin time lr x steps (an Ornstein-Uhlenbeck process), so directions the loss leaves flat relax in
    2 / localization time units whatever lr is, and a shorter run cannot have forgotten its start; nor can
    the plateau check see a transient longer than the run (calibrate drops cells cut below the same 1.25:
    `jobs.calibrate.MIN_TIME_FRACTION` x `RELAXATIONS`). Against the truth: every 1-time-unit cell at
    localization 1 (0.5 relaxations) was -6.5 % to -13.9 % off but one (-2.4 %), and the plateau
    differences alone missed them (-1.1 % to -6.5 %)."""
    nested_rhat: float = 1.01
    """Nested R-hat (Margossian et al. 2023, arXiv 2110.13017) above this: groups of chains disagree. The
    same line as R-hat's (Vehtari et al. 2021); it runs when there are at least `nested_min_chains`
    chains, in `superchains` groups of consecutive chains, the many-short-chains regime it was made for."""
    nested_min_chains: int = 8
    """Chains needed before nested R-hat runs (at least two per superchain)."""
    superchains: int = 4
    """Superchains nested R-hat groups the chains into (consecutive chains; all start at the checkpoint)."""
    below_init_z: float = 1.96
    """A step's minibatch loss is 'below the initial loss beyond minibatch noise' when it is more than
    this many standard errors (std over the minibatch rows / sqrt(rows)) below it: a one-sided 2.5 % test."""
    below_init_fraction: float = 0.5
    """Fraction of such steps above which the checkpoint is not a local minimum for the sampler. At a
    minimum the expected loss is above the initial one (Lau et al. 2023, arXiv 2308.12108, sec. 4), so for
    symmetric noise at most half the steps lie below it at all; more than half beyond the noise means the
    median loss is below it. (Not 2.5 %: the row-based standard error underestimates the batch-to-batch
    spread, and a healthy bigram run has 17 % of its steps beyond 1.96 of them.)"""
    bound_mcse: float = 2.0
    """An estimate is outside [0, d/2] (Watanabe 2009: 0 <= lambda <= d/2 for d parameters) when it is
    beyond the interval by more than this many Monte Carlo standard errors."""
    outlier_p: float = 1e-3
    """A chain's LLC is wildly beyond the spread of the others when a new draw from a normal fitted to the
    other chains would lie that far with probability below this, Bonferroni-corrected over the chains
    (leave-one-out prediction interval, t with n-2 degrees of freedom; Hahn & Meeker 1991, 'Statistical
    Intervals', sec. 4.5). Needs >= 3 chains. (MAD z-scores flag 17 % of healthy 4-chain runs.)"""
    distance_growth: float = 1.5
    """The localization check (`distance`, with save_metrics True or "distance"), for runs with no prior
    of their own (localization, weight decay and bounding box all off): the chains' mean squared distance
    from the checkpoint over the last quarter of the steps over that of the first quarter, pooled over
    chains (`analyses.equilibration.distance_growth`), above this: the chains are not localized, still
    moving away along a direction the loss leaves flat, where the posterior is improper. Diffusion gives
    7 (squared distance ~ t; 1.7 at its 5th percentile with 4 chains and one flat direction, simulated),
    a chain the loss confines ~1 (1.33 at its 95th). devinterp's guidance (calibration notebook): the
    distance should plateau; else raise localization. With a prior the check is not judged (the
    posterior is proper; whether the run outlasted the prior's relaxation is the `plateau` check's)."""
    distance_fails: bool = False
    """Whether a failed localization check fails the run (calibrate()'s cells: a cell whose chains are not
    localized is no candidate) or is a note (diagnose()'s default): along an exact symmetry of the loss
    (a softmax's shift, a layer's rescaling) a run without localization diffuses while its LLC stays
    right, so for a production run the distance is a warning and the `plateau` check judges the number;
    a calibration can afford to prefer the localization whose chains provably stay put."""
    grad_vs_noise: float = 1.0
    """With save_metrics: median ratio of the drift (scaled gradient) norm to the injected noise norm above
    this: the update is dominated by descent, not noise, so SGLD is optimising rather than sampling
    (Welling & Teh 2011, sec. 4: sampling starts once the injected noise dominates)."""
    mala_target: float = 0.9
    """With save_metrics: a mean MALA acceptance probability (devinterp 1.x's; Furman & Lau 2024,
    arXiv 2402.03698) below this is noted, not failed: Furman & Lau aim for about 0.9, but devinterp 1.x's
    formula takes each end's loss on its own minibatch, so when n_beta x (minibatch standard error) >> 1
    the minibatch noise alone pulls it toward 0.5 whatever the step size (the bigram demo: ~0.5)."""


@dataclass
class Diagnosis:
    """The verdict on a store: healthy when no check failed; problems name the check, chains and fix."""

    healthy: bool
    problems: list[str]
    checks: xr.Dataset
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the verdict and, when unhealthy, the checks that failed; the checks that only warned."""
        if self.healthy:
            line = "healthy (" + ", ".join(self.checks.attrs.get("checks_run", [])) + " passed)"
            warned = [str(c) for c in self.checks.check.values if bool(self.checks.warned.sel(check=c).any())]
            return line + (f"; warnings: {', '.join(warned)}" if warned else "")
        failed = [str(c) for c in self.checks.check.values if bool(self.checks.flagged.sel(check=c).any())]
        return f"UNHEALTHY: {len(self.problems)} problem(s): " + ", ".join(failed)

    def __str__(self) -> str:
        lines = [f"diagnosis {self.summary()}"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def report(self, what: str, stacklevel: int = 2) -> None:
        """Log the verdict (info), and warn with every problem when unhealthy."""
        logger.info("%s: diagnosis %s", what, self.summary())
        if not self.healthy:
            warnings.warn(
                f"{what}: {self.summary()}\n" + "\n".join(f"  - {p}" for p in self.problems),
                UnhealthyRunWarning,
                stacklevel=stacklevel + 1,
            )

    def attrs(self) -> dict[str, Any]:
        """Attributes for a result dataset (netCDF-safe: int and str only)."""
        return {
            "healthy": int(self.healthy),
            "diagnosis": self.summary(),
            "diagnosis_problems": "\n".join(self.problems),
        }


# ─── pure statistics ────────────────────────────────────────────────────────


def geweke_z(trace: np.ndarray, first: float = 0.1, last: float = 0.5) -> float:
    """Geweke's z: mean of the first window minus mean of the last, over their Monte Carlo errors."""
    trace = np.asarray(trace, dtype=np.float64)
    n = trace.size
    a, b = trace[: max(int(first * n), 4)], trace[n - max(int(last * n), 4) :]
    if n < 16 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    se2 = _mcse(a) ** 2 + _mcse(b) ** 2
    if se2 == 0:
        return 0.0 if a.mean() == b.mean() else float("inf")
    return float((a.mean() - b.mean()) / math.sqrt(se2))


def _mcse(x: np.ndarray) -> float:
    """Monte Carlo standard error of one chain's mean (autocorrelation-aware, ArviZ)."""
    from arviz_stats.base import array_stats  # imported when used: it brings scipy.stats (~1 s)

    if np.ptp(x) == 0:
        return 0.0
    return float(array_stats.mcse(x[None, :], chain_axis=0, draw_axis=1, method="mean"))


def loo_prediction_t(values: np.ndarray) -> np.ndarray:
    """Per value: (x - mean of the others) / (std of the others * sqrt(1 + 1/(n-1))), t with n-2 dof."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    out = np.zeros(n)
    for i in range(n):
        rest = np.delete(values, i)
        dev = values[i] - rest.mean()
        sd = rest.std(ddof=1) * math.sqrt(1 + 1 / (n - 1))
        out[i] = dev / sd if sd > 0 else (0.0 if dev == 0 else math.copysign(math.inf, dev))
    return out


def outlier_threshold(n: int, p: float) -> float:
    """|t| above which a leave-one-out prediction t (n-2 dof) is beyond p, Bonferroni over n values."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(1 - p / (2 * n), n - 2))


def split_rhat_ess(traces: np.ndarray) -> tuple[float, float]:
    """Rank-normalised split R-hat and bulk ESS of (chain, step) traces (Vehtari et al. 2021, ArviZ)."""
    if traces.shape[0] < 1 or traces.shape[1] < 8 or not np.isfinite(traces).all():
        return float("nan"), float("nan")
    if np.ptp(traces) == 0:
        return 1.0, float(traces.size)
    from arviz_stats.base import array_stats

    rhat = float(array_stats.rhat(traces, chain_axis=0, draw_axis=1, method="rank"))
    ess = float(array_stats.ess(traces, chain_axis=0, draw_axis=1, method="bulk"))
    return rhat, ess


# ─── reading the store, chunk by chunk ──────────────────────────────────────


def _as_dataset(samples: Samples, storage_options: dict[str, Any] | None) -> xr.Dataset:
    """The samples to diagnose: an address's store opened lazily (store.source), or what sample() returned."""
    try:
        opened = samples_of(samples, storage_options)
    except TypeError as e:
        raise TypeError(f"diagnose: {e}") from None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"diagnose: {e}") from None
    return opened.dataset if isinstance(opened, xr.DataTree) else opened


def _step_chunk(var: xr.DataArray) -> int:
    chunks = var.encoding.get("preferred_chunks", {}).get("step") or (var.encoding.get("chunks") or [0, 0])[1]
    return int(chunks) if chunks else 50


def _loss_traces(ds: xr.Dataset, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per (chain, step): mean minibatch loss and its standard error over rows; NaN past each length."""
    var = ds.sampling_loss_micro
    n_chains, n_steps = ds.sizes["chain"], ds.sizes["step"]
    mean = np.full((n_chains, n_steps), np.nan)
    se = np.full((n_chains, n_steps), np.nan)
    chunk = _step_chunk(var)
    blocks = [
        (c, s, min(s + chunk, lengths[c])) for c in range(n_chains) for s in range(0, lengths[c], chunk)
    ]
    for c, s, e in progress_bar(blocks, desc="diagnose: reading losses", unit="chunk"):
        block = np.asarray(var.isel(chain=c, step=slice(s, e)).values, dtype=np.float64)
        rows = block.mean(axis=-1)  # (steps, rows): each row's mean per-token loss
        mean[c, s:e] = rows.mean(axis=1)
        if rows.shape[1] > 1:
            se[c, s:e] = rows.std(axis=1, ddof=1) / math.sqrt(rows.shape[1])
    return mean, se


def _lengths(ds: xr.Dataset, diverged: dict[int, int]) -> list[int]:
    """Steps of each chain that hold data: its durable steps, cut at the step it diverged."""
    n_steps = ds.sizes["step"]
    if STEPS_DONE in ds:
        done = np.asarray(ds[STEPS_DONE].values).clip(0, n_steps)
    else:
        done = np.full(ds.sizes["chain"], n_steps)
    return [int(min(done[c], diverged.get(c, n_steps))) for c in range(ds.sizes["chain"])]


def relaxations(ds: xr.Dataset, steps: int) -> float:
    """Relaxation times of the localization prior that `steps` SGLD steps span, lr x steps x localization
    / 2 (`Thresholds.min_relaxations`); NaN when it does not bound the relaxation: no localization, RMSprop
    preconditioning (its step is not lr) or a learning-rate schedule."""
    sampler = ds.attrs.get("metadata", {}).get("config", {}).get("sampler", {})
    try:
        lr, loc = float(sampler["lr"]), float(sampler.get("localization") or 0.0)
    except (KeyError, TypeError, ValueError):
        return float("nan")
    method = sampler.get("sampling_method", "sgmcmc_sgld")
    schedule = sampler.get("scheduler_type", "constant")
    if (
        method != "sgmcmc_sgld"
        or schedule not in (None, "constant")
        or not (loc > 0 and lr > 0 and steps > 0)
    ):
        return float("nan")
    return lr * steps * loc / 2.0


def unconfined(ds: xr.Dataset) -> bool:
    """Whether the run has no prior of its own (localization, llc_weight_decay and bounding box off), so
    its posterior can be improper along a flat direction: the runs the localization check judges."""
    sampler = ds.attrs.get("metadata", {}).get("config", {}).get("sampler", {})
    return (
        not float(sampler.get("localization") or 0.0)
        and not float(sampler.get("llc_weight_decay") or 0.0)
        and sampler.get("bounding_box_size") is None
    )


def num_sampled_params(ds: xr.Dataset) -> int | None:
    """d, the number of sampled parameters, when the store records it."""
    ours = ds.attrs.get("distinterp", {})
    for value in (ours.get("num_sampled_params"), ds.attrs.get("metrics_numel")):
        if value is not None:
            return int(value)
    return None


def _chains(chains: list[int]) -> str:
    return "chain " + str(chains[0]) if len(chains) == 1 else "chains " + ", ".join(map(str, chains))


# ─── diagnose ───────────────────────────────────────────────────────────────


@names_damaged_chunks
def diagnose(
    samples: Samples,
    *,
    storage_options: dict[str, Any] | None = None,
    thresholds: Thresholds | None = None,
    num_params: int | None = None,
) -> Diagnosis:
    """Check a sampling store's chains; `num_params` (d) overrides what the store records."""
    t = thresholds or Thresholds()
    ds = _as_dataset(samples, storage_options)
    for name in ("sampling_loss_micro", "init_loss"):
        if name not in ds:
            raise ValueError(f"diagnose: the store has no {name!r}; is it a sampling store?")
    n_beta = float(ds.attrs["metadata"]["config"]["sampler"]["n_beta"])
    n_chains, n_steps = ds.sizes["chain"], ds.sizes["step"]
    complete, incomplete, diverged = chain_status(ds)
    lengths = _lengths(ds, diverged)
    trace, trace_se = _loss_traces(ds, lengths)
    finite = [c for c in range(n_chains) if c not in diverged and lengths[c] > 0]
    use = [c for c in finite if c in complete] or finite
    init_all = np.asarray(ds.init_loss.values, dtype=np.float64)
    init = float(np.nanmean(init_all[use])) if use else float("nan")

    burnin = int(ds.attrs["metadata"]["config"]["sampler"].get("num_burnin_steps", 0) or 0)
    flagged = {name: np.zeros(n_chains, dtype=bool) for name in CHECKS}
    warned = {name: np.zeros(n_chains, dtype=bool) for name in CHECKS}
    problems: list[str] = []
    notes: list[str] = []
    ran: list[str] = ["diverged"]

    # Diverged and incomplete chains
    if diverged:
        flagged["diverged"][list(diverged)] = True
        which = sorted(diverged)
        problems.append(
            f"diverged: {len(which)}/{n_chains} chains ({_chains(which)}) hit a non-finite loss at step "
            + ", ".join(str(diverged[c]) for c in which)
            + "; lower lr (or raise localization); analyses exclude them"
        )
    if incomplete:
        flagged["incomplete"][incomplete] = True
        problems.append(
            f"incomplete: {_chains(incomplete)} have "
            + ", ".join(f"{lengths[c]}/{n_steps}" for c in incomplete)
            + " steps; finish the run (rerun the same command)"
        )
    elif STEPS_DONE not in ds and ds.attrs.get("completed") != 1:
        problems.append("incomplete: the store is not marked completed; finish the run")
        flagged["incomplete"][:] = True
    ran.append("incomplete")

    # Per chain: LLC, its Monte Carlo error, stationarity, steps below the initial loss
    llc = np.full(n_chains, np.nan)
    mcse = np.full(n_chains, np.nan)
    gz = np.full(n_chains, np.nan)
    below = np.full(n_chains, np.nan)
    for c in finite:
        x = trace[c, : lengths[c]]
        llc[c] = llc_estimate(x.mean(), init, n_beta)
        mcse[c] = n_beta * _mcse(x) if x.size >= 8 else np.nan
        gz[c] = geweke_z(x[burnin:], t.geweke_first, t.geweke_last)
        se = np.nan_to_num(trace_se[c, : lengths[c]], nan=0.0)
        below[c] = float(np.mean(x < init - t.below_init_z * se))

    bad = [c for c in finite if np.isfinite(gz[c]) and abs(gz[c]) > t.geweke_z]
    if any(np.isfinite(gz[c]) for c in finite):
        ran.append("stationarity")
    if bad:
        warned["stationarity"][bad] = True
        trend = "rising" if np.nanmean(-gz[bad]) > 0 else "falling"
        notes.append(
            f"stationarity: {_chains(bad)}: loss trace after burn-in shows a trend (Geweke |z| "
            + ", ".join(f"{abs(gz[c]):.1f}" for c in bad)
            + f" > {t.geweke_z:g}; loss {trend}); a warning: whether it moves the LLC is the plateau check's"
        )

    # The running LLC: has the reported (all-steps) estimate reached its plateau?
    plateau = running_llc_plateau(trace[finite], init, n_beta, t.plateau_tail) if finite else None
    relax = relaxations(ds, min((lengths[c] for c in finite), default=0))
    if plateau is not None and np.isfinite(plateau.transient):
        ran.append("plateau")
        settled = plateau.equilibrated(t.plateau_tolerance, t.plateau_z)
        rising = plateau.transient < -t.plateau_rise or plateau.drift > t.plateau_rise
        if not settled or rising:
            flagged["plateau"][finite] = True
            why = "has not settled" if not settled else "is still rising"
            problems.append(
                f"plateau: the running LLC {why}: all steps {plateau.llc_all:.4g} vs the last "
                f"{t.plateau_tail:.0%} {plateau.llc_tail:.4g} ({plateau.transient:+.1%} +- {plateau.transient_se:.1%}), "
                f"drift within that tail {plateau.drift:+.1%} +- {plateau.drift_se:.1%} (tolerance "
                f"{t.plateau_tolerance:.0%}; rising beyond {t.plateau_rise:.0%} as measured); more draws "
                "(longer at smaller lr), or a larger lr"
            )
    if np.isfinite(relax) and finite:
        if "plateau" not in ran:
            ran.append("plateau")
        if relax < t.min_relaxations:
            flagged["plateau"][finite] = True
            problems.append(
                f"plateau: the run spans {relax:.2g} relaxation times of the localization prior "
                f"(lr x steps x localization / 2) < {t.min_relaxations:g}: too short to have forgotten "
                "the checkpoint, whatever the plateau differences say; more draws (to "
                f"{math.ceil(t.min_relaxations / relax * min(lengths[c] for c in finite))} steps)"
            )

    # Across chains: R-hat and ESS over the common length of the finite chains
    common = min((lengths[c] for c in finite), default=0)
    nrhat = float("nan")
    groups = t.superchains
    if len(finite) >= max(t.nested_min_chains, 2 * groups):
        usable = len(finite) - len(finite) % groups
        nrhat = nested_rhat(trace[finite[:usable], :common], groups)
        if np.isfinite(nrhat):
            ran.append("nested_rhat")
            if nrhat > t.nested_rhat:
                flagged["nested_rhat"][finite[:usable]] = True
                problems.append(
                    f"nested_rhat: nested R-hat over {groups} superchains is {nrhat:.3f} > {t.nested_rhat:g}: "
                    "groups of chains disagree; more draws per chain"
                )
    rhat, ess = split_rhat_ess(trace[finite, :common]) if finite else (float("nan"), float("nan"))
    if np.isfinite(rhat):
        ran += ["rhat", "ess"]
        if rhat > t.rhat:
            flagged["rhat"][finite] = True
            problems.append(
                f"rhat: split R-hat of the loss traces is {rhat:.3f} > {t.rhat:g}: the chains disagree; "
                "more draws, or raise localization"
            )
        elif rhat > t.rhat_warn:
            warned["rhat"][finite] = True
            notes.append(
                f"rhat: split R-hat of the loss traces is {rhat:.3f} > {t.rhat_warn:g} (Vehtari et al. "
                f"2021), a warning below {t.rhat:g}: for chains from one checkpoint it says ESS is low"
            )
        if ess < t.ess_per_chain * len(finite):
            flagged["ess"][finite] = True
            problems.append(
                f"ess: bulk ESS {ess:.0f} < {t.ess_per_chain:g} x {len(finite)} chains; more draws"
            )
        elif ess < t.ess_warn_per_chain * len(finite):
            warned["ess"][finite] = True
            notes.append(
                f"ess: bulk ESS {ess:.0f} < {t.ess_warn_per_chain:g} x {len(finite)} chains (a warning); "
                "more draws for a tighter Monte Carlo error"
            )

    b = [c for c in finite if below[c] > t.below_init_fraction]
    if finite:
        ran.append("below_init")
    if b:
        flagged["below_init"][b] = True
        problems.append(
            f"below_init: {_chains(b)} spend "
            + ", ".join(f"{below[c]:.0%}" for c in b)
            + f" of steps below the initial loss beyond minibatch noise (more than {t.below_init_fraction:.0%}):"
            " the checkpoint is not a local minimum for the sampler; raise localization, or lower lr"
        )

    d = num_params if num_params is not None else num_sampled_params(ds)
    lo_ok = llc + t.bound_mcse * np.nan_to_num(mcse) >= 0
    hi_ok = (llc - t.bound_mcse * np.nan_to_num(mcse) <= d / 2) if d is not None else np.ones(n_chains, bool)
    out = [c for c in finite if not (lo_ok[c] and hi_ok[c])]
    if finite:
        ran.append("bounds")
    if out:
        flagged["bounds"][out] = True
        bound = f"[0, d/2 = {d / 2:g}]" if d is not None else "[0, inf)"
        neg = [c for c in out if not lo_ok[c]]
        fix = "raise localization or train the checkpoint further" if neg else "lower lr"
        problems.append(
            f"bounds: {_chains(out)}: LLC "
            + ", ".join(f"{llc[c]:.4g}" for c in out)
            + f" lies outside {bound}; {fix}"
        )
    if d is None and finite:
        notes.append("d (sampled parameters) is not recorded in this store: only LLC >= 0 was checked")

    loo_t = np.full(n_chains, np.nan)
    if len(finite) >= 3:
        ran.append("outlier")
        loo_t[finite] = loo_prediction_t(llc[finite])
        cut = outlier_threshold(len(finite), t.outlier_p)
        far = [c for c in finite if abs(loo_t[c]) > cut]
        if far:
            flagged["outlier"][far] = True
            problems.append(
                f"outlier: {_chains(far)}: LLC "
                + ", ".join(f"{llc[c]:.4g}" for c in far)
                + f" is far beyond the other chains' (median {np.median(llc[finite]):.4g}; p < "
                f"{t.outlier_p:g}); more draws, lower lr or raise localization"
            )

    metrics = _metric_checks(ds, finite, lengths, t, flagged, warned, problems, notes, ran, n_beta, trace_se)

    llc_use = llc[use] if use else np.array([np.nan])
    pooled_mcse = (
        n_beta * float(np.nanstd(trace[finite, :common])) / math.sqrt(ess)
        if np.isfinite(ess) and ess > 0
        else float("nan")
    )
    chain = np.arange(n_chains)
    checks = xr.Dataset(
        {
            "flagged": (("check", "chain"), np.stack([flagged[k] for k in CHECKS])),
            "warned": (("check", "chain"), np.stack([warned[k] for k in CHECKS])),
            "steps_done": ("chain", np.asarray(lengths, dtype=np.int64)),
            "complete": ("chain", np.isin(chain, complete)),
            "diverged_step": ("chain", np.array([diverged.get(int(c), -1) for c in chain], dtype=np.int64)),
            "llc": ("chain", llc),
            "llc_mcse": ("chain", mcse),
            "geweke_z": ("chain", gz),
            "frac_below_init": ("chain", below),
            "llc_outlier_t": ("chain", loo_t),
            **metrics,
            "loss_trace": (("chain", "step"), trace),
            "loss_trace_se": (("chain", "step"), trace_se),
            "init_loss": init,
            "n_beta": n_beta,
            "rhat": rhat,
            "nested_rhat": nrhat,
            "llc_tail": float("nan") if plateau is None else plateau.llc_tail,
            "plateau_transient": float("nan") if plateau is None else plateau.transient,
            "plateau_drift": float("nan") if plateau is None else plateau.drift,
            "relaxations": relax,
            "ess_bulk": ess,
            "llc_mean": float(np.mean(llc_use)),
            "llc_std": float(np.std(llc_use)),
            "llc_mean_mcse": pooled_mcse,
            "num_sampled_params": -1 if d is None else int(d),
        },
        coords={"check": list(CHECKS), "chain": chain},
        attrs={"thresholds": asdict(t), "checks_run": ran, "chains_used": list(use)},
    )
    return Diagnosis(healthy=not problems, problems=problems, checks=checks, notes=notes)


def _metric_checks(
    ds: xr.Dataset,
    finite: list[int],
    lengths: list[int],
    t: Thresholds,
    flagged: dict[str, np.ndarray],
    warned: dict[str, np.ndarray],
    problems: list[str],
    notes: list[str],
    ran: list[str],
    n_beta: float = 1.0,
    ds_se: np.ndarray | None = None,
) -> dict[str, Any]:
    """Checks on the metrics_* traces that save_metrics=True records: distance, drift vs noise, MALA."""
    n = ds.sizes["chain"]
    out: dict[str, Any] = {}
    if "metrics_distance" in ds:
        dist = np.full((n, max(lengths, default=0)), np.nan)
        for c in finite:
            dist[c, : lengths[c]] = ds.metrics_distance.isel(chain=c, step=slice(0, lengths[c])).values
        growth, pooled = distance_growth(dist)
        judged = unconfined(ds)
        out["distance_growth"] = ("chain", growth)
        out["distance_growth_pooled"] = pooled if judged else math.nan
        ran.append("distance")
        inf = [c for c in finite if np.isinf(growth[c])]
        if inf:
            flagged["distance"][inf] = True
            problems.append(f"distance: {_chains(inf)} moved a non-finite distance; lower lr")
        elif judged and not localized(pooled, t.distance_growth):
            per_chain = ", ".join(f"{growth[c]:.2g}" for c in finite if np.isfinite(growth[c]))
            line = (
                "distance: not localized: the chains' distance from the checkpoint is still growing (mean "
                f"square over the last quarter / the first: {pooled:.3g} over chains, {per_chain} per chain "
                f"> {t.distance_growth:g}; diffusion along a flat direction gives ~7), so the posterior "
                "without localization is improper here; raise localization"
            )
            if t.distance_fails:
                flagged["distance"][finite] = True
                problems.append(line)
            else:
                warned["distance"][finite] = True
                notes.append(line + " (a warning: harmless along an exact symmetry of the loss)")
    if "metrics_scaled_grad" in ds and "metrics_noise" in ds:
        ratio = np.full(n, np.nan)
        for c in finite:
            g = np.asarray(ds.metrics_scaled_grad.isel(chain=c, step=slice(0, lengths[c])).values, np.float64)
            z = np.asarray(ds.metrics_noise.isel(chain=c, step=slice(0, lengths[c])).values, np.float64)
            half = g.size // 2
            with np.errstate(divide="ignore", invalid="ignore"):
                r = g[half:] / z[half:]
            ratio[c] = float(np.median(r)) if r.size else np.nan
        out["grad_noise_ratio"] = ("chain", ratio)
        ran.append("grad_vs_noise")
        loud = [c for c in finite if not (np.isfinite(ratio[c]) and ratio[c] <= t.grad_vs_noise)]
        loud = [c for c in loud if lengths[c] >= 2]
        if loud:
            flagged["grad_vs_noise"][loud] = True
            problems.append(
                f"grad_vs_noise: {_chains(loud)}: drift/noise norm ratio "
                + ", ".join(f"{ratio[c]:.3g}" for c in loud)
                + f" > {t.grad_vs_noise:g} (median over the second half): SGLD is descending, not "
                "sampling; lower lr, or check that the checkpoint is trained"
            )
    if "metrics_mala_acceptance" in ds:
        acc = np.full(n, np.nan)
        for c in finite:
            a = np.asarray(
                ds.metrics_mala_acceptance.isel(chain=c, step=slice(0, lengths[c])).values, np.float64
            )
            acc[c] = float(np.nanmean(a)) if np.isfinite(a).any() else np.nan
        out["mala_acceptance"] = ("chain", acc)
        ran.append("mala")
        low = [c for c in finite if np.isfinite(acc[c]) and acc[c] < t.mala_target]
        if low:
            noise = float(np.nanmedian(ds_se)) * n_beta if ds_se is not None else float("nan")
            notes.append(
                f"mala: {_chains(low)}: mean MALA acceptance "
                + ", ".join(f"{acc[c]:.2f}" for c in low)
                + f" < {t.mala_target:g} (Furman & Lau 2024's aim); n_beta x minibatch standard error is "
                f"{noise:.3g}, so minibatch noise "
                + ("dominates it" if noise > 1 else "does not explain it: lower lr")
            )
    return out
