"""Known answers: calibrate() from its defaults, and fixed settings, against learning coefficients known in
closed form; and whether diagnose() flags the calibration cells that had not equilibrated.

    python benchmarks/known_answers.py [--json out.json] [--smoke] [--cases population,empirical]
                                       [--seeds 2] [--n 1000] [--grid default|benchmark] [--only NAME]
                                       [--check-cells K] [--equilibration] [--crossing-n N]
                                       [--lr 3e-5,1e-4] [--localization 1] [--max-draws N]
                                       [--cases empirical,trained --seeds 5] [--rows-jsonl F]
                                       [--references-from F] [--no-reference]

The default run (the 8 population cases, 155k SGLD steps each) takes about 10 minutes on an idle
2-core machine; `--cases population,empirical` adds 3 empirical cases x `--seeds` data seeds.

Cases (`distinterp.toy`): reduced-rank regression y = BAx at its deepest true parameter in each of the
four regimes of Aoyagi & Watanabe 2005, deep linear networks of 3-5 layers (Aoyagi 2024), the potentials
w1^2 + w2^4 and the normal crossing w1^2 w2^4, each with its population loss (exact K, no data noise);
and reduced-rank regression with an empirical loss on n sampled points (minibatch 100, n_beta = n /
log n, several data seeds) plus the bigram. Sizes are parameters (`--n`, `--widths-scale`).

What the population cases aim at. The estimator's target is E[n_beta K] under exp(-n_beta K -
localization |w|^2 / 2), which tends to lambda as n_beta grows but at finite n_beta is lambda - (m - 1) /
log n_beta + O(1 / log^2 n_beta) for multiplicity m (Watanabe 2009; all cases here but one have m = 1),
minus a localization bias of order localization / sqrt(n_beta) for quartic directions. The table shows
both lambda and, where it is known exactly (the monomials, by quadrature), the finite-n target. The
normal crossing runs at its own n (`--crossing-n`, default 1e6, n_beta 72382): its next pole leaves an
n^(-1/4) term, so at n 1000 its target at localization 1 is 0.210 (-16 %), at 1e6 0.241 (-3.5 %).

The grid: `--grid default` runs calibrate()'s DEFAULT_GRID (21 cells; minutes per case here);
`--grid benchmark` (the default of this script, for time) its lr >= 3e-4 part (4 lr x 3 localizations).
Every calibration uses calibrate()'s defaults otherwise (4 chains, num_draws 200, cells scaled by
cell_draws). The fixed settings are the issue's textbook ones: lr 5e-4, localization 1, 4 chains x 1500
draws. `--lr`, `--localization` and `--max-draws` replace the grid's values and the draw cap, to see
why a case misses (they are not the untuned defaults).

The empirical rows also carry a float64 reference for the estimator's own finite-n target E[n_beta (L_n(w) -
L_n(w0))] under the exact localized posterior (`distinterp.reference.expected_llc`: full-batch MALA over 512
chains, with its acceptance rate and standard error), at localization 1 (the fixed settings'), at the chosen
localization and at the grid's: so each error splits into the sampler's (estimate - reference) and the
estimator's at finite n (reference - lambda); `--references-from rows.jsonl` adds them to an earlier run's
rows (rows that have them keep them, so two runs' rows can be merged into one table). `--cases trained`
runs the same regressions with the checkpoint at the minimum of L_n (closed-form reduced-rank regression,
`toy.dln_empirical_minimum`), as a trained network is, instead of at the truth.

Equilibration against the truth: each calibration cell's all-steps estimate is compared with a reference
run of the same cell 4x longer (its last half); a cell "has not equilibrated" when they differ by more
than 5 % of the reference (beyond two standard errors). `--check-cells K` does this for the cells of the
first K cases (it is the expensive part).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]

CROSSING_N = 1_000_000
"""n for the normal crossing w1^2 w2^4 (n_beta = n / log n = 72382): its exact finite-n target at
localization 1 is 0.2413 (-3.5 % from lambda 1/4; -16 % at n 1000, -2.0 % at 1e7), since its next pole
(1/2) leaves an n^(-1/4) term that the other cases' targets lack; `--crossing-n` changes it."""

LARGE_DLN = [80, 60, 60, 80]
"""The largest population case: a 3-layer network of 13,200 parameters at a rank-10 truth (lambda 1850)."""

LARGE_N = 10_000
"""n for the 13,200-parameter network (n_beta = n / log n = 1086), its own as the normal crossing's. At n
1000 the estimator's target E[n_beta K] is not yet lambda for this model: the settled readings as lr -> 0
(localization 1, n_beta 145) level off near 2200, +19 % (lr 1e-5 at lr x n_beta x lambda_max 0.06, where
the step-size bias is ~1.5 %), and localization moves them by a third (10: 1605), so no sampler setting
reaches 10 % there. Its 9,500-parameter rank-0 block has a degree-6 potential, so its posterior scale is
n_beta^(-1/6): 0.44 at n_beta 145, against singular values ~1 in the rank-10 part it couples to; the
expansion behind lambda needs it small. 1e4 (scale 0.31; a reading at n_beta 1448 was -7 %) is the
largest n whose calibration fits the default draw budget: the loss Hessian's top eigenvalue is 40, so
the lr ceiling is 1 / (1086 x 40) = 2.3e-5 and lr 1e-5 needs 1e5 draws per time unit of localization 10;
at 1e5 (n_beta 8686) every lr under the ceiling needs > 1e6 draws (`--large-n` changes it)."""

RESULTS = ROOT / "benchmarks" / "results"
"""Where a full run writes its JSON and its markdown table (`--results NAME`)."""

FIXED = dict(lr=5e-4, localization=1.0, num_chains=4, num_draws=1500)
"""The issue's fixed textbook settings (devinterp-style: one lr, localization 1, 1500 draws)."""

BENCH_GRID = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "localization": [0.0, 1.0, 10.0]}
"""The part of DEFAULT_GRID this script runs unless --grid default: lr >= 3e-4 (cells below need more
than 10000 draws at localization 1, which the default cap stops at anyway)."""


@dataclass
class Case:
    """One known answer: how to build (model, dataset, loss_fn) for a data seed, lambda, multiplicity."""

    name: str
    kind: str
    build: Callable[[int], tuple[Any, Any, Any]]
    lam: float
    multiplicity: int
    n_beta: float
    batch_size: int = 1
    target: Callable[[float], float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    extra: dict[str, Any] = field(default_factory=dict)
    reference_loss: Callable[[Any, Any], tuple[Any, Any]] | None = None
    """(model, data) -> (float64 batched L_n, flattened w0) for `reference.expected_llc` (empirical cases)."""
    proper_at_zero: bool = False
    """Whether the posterior without localization is proper, so a localization-0 reference exists."""


def cases(
    n: int, seeds: int, smoke: bool, crossing_n: int = CROSSING_N, large_n: int = LARGE_N
) -> list[Case]:
    """The suite: population cases first, then empirical ones; the normal crossing at its own n."""
    import torch

    from distinterp import toy

    ids = torch.zeros((8, 2), dtype=torch.int64)  # the population losses only read the shape
    n_beta = n / math.log(n)

    def dln(widths: list[int], rank: int, kind: str, size: int = n) -> Case:
        lam, m = toy.dln_learning_coefficient(widths, rank)
        label = "rrr" if len(widths) == 3 else f"dln{len(widths) - 1}"
        if kind == "population":
            return Case(
                f"{label} {'-'.join(map(str, widths))} r{rank}" + (f" n={size}" if size != n else ""),
                kind,
                lambda seed: (
                    toy.DeepLinearNetwork(widths, rank, point="deepest"),
                    ids,
                    toy.dln_population_loss,
                ),
                float(lam),
                m,
                size / math.log(size),
            )

        def build(seed: int) -> tuple[Any, Any, Any]:
            model = toy.DeepLinearNetwork(widths, rank, point="deepest")
            data = toy.dln_regression_data(model, n, seed)
            if kind == "trained":  # the checkpoint training reaches: the minimum of L_n, not the truth
                model = toy.dln_empirical_minimum(model)
            return model, data, toy.dln_empirical_loss

        return Case(
            f"{label} {'-'.join(map(str, widths))} r{rank} n={n}" + (" trained" if kind == "trained" else ""),
            kind,
            build,
            float(lam),
            m,
            n_beta,
            batch_size=min(100, n),
            seeds=list(range(seeds)),
            reference_loss=lambda model, data: toy.dln_empirical_loss_float64(model),
        )

    def monomial(k: tuple[int, ...], product: bool, size: int = n) -> Case:
        lam, m = toy.monomial_learning_coefficient(k, product=product)
        name = ("*" if product else "+").join(f"w{i + 1}^{2 * x}" for i, x in enumerate(k))
        beta = size / math.log(size)
        return Case(
            name,
            "population",
            lambda seed: (toy.Monomials(k, product=product), ids, toy.monomial_loss),
            float(lam),
            m,
            beta,
            target=lambda loc: (
                toy.monomial_expected_llc(k, beta, loc, product=product)
                if loc > 0 or not product
                else float("nan")  # improper without localization: no finite-n target
            ),
        )

    def bigram(V: int) -> Case:
        def build(seed: int) -> tuple[Any, Any, Any]:
            data = toy.markov_dataset(toy.markov_chain(V, 0), 65, 512, seed + 1)
            return toy.bigram_mle(data, V), data, None

        return Case(
            f"bigram V={V}",
            "empirical",
            build,
            toy.bigram_learning_coefficient(V),
            1,
            1000.0,
            16,
            seeds=list(range(seeds)),
            reference_loss=lambda model, data: (
                toy.bigram_loss_float64(data, V),
                model.W.detach().double().reshape(-1),
            ),
            proper_at_zero=True,  # the flat softmax shifts leave L_n unchanged; the rest is a Dirichlet
        )

    if smoke:
        return [monomial((1, 2), False), dln([2, 2, 2], 0, "empirical")]
    population = [
        dln([3, 2, 6], 1, "population"),  # N + r > M + H
        dln([6, 2, 3], 1, "population"),  # M + r > N + H
        dln([2, 5, 2], 1, "population"),  # H + r > M + N
        dln([4, 3, 5], 0, "population"),  # the fourth (general) regime
        dln([3, 2, 2, 3], 1, "population"),
        dln([3, 2, 3, 2, 3], 1, "population"),
        dln([3, 2, 3, 2, 3, 3], 1, "population"),  # 5 layers
        dln(LARGE_DLN, 10, "population", large_n),  # 13,200 parameters, at its own n
        monomial((1, 2), False),
        monomial((1, 2), True, crossing_n),
    ]
    empirical = [dln([4, 3, 5], 0, "empirical"), dln([3, 2, 6], 1, "empirical"), bigram(4)]
    trained = [dln([4, 3, 5], 0, "trained"), dln([3, 2, 6], 1, "trained")]
    return population + empirical + trained


SAMPLER_SEED = 100
"""init_seed of data seed 0 (devinterp's default); data seed s samples with SAMPLER_SEED + SEED_STRIDE x s."""

SEED_STRIDE = 1000
"""Chain c of a run seeds its noise with init_seed + c (devinterp), so data seeds' init_seeds are this far
apart for their chains to share no seed."""


def shared_settings(case: Case, seed: int) -> dict[str, Any]:
    """n_beta, batch size, initial-loss batches and sampler seed of every run of a case (the initial loss over
    about the whole dataset for empirical losses: its error is multiplied by n_beta).

    Each data seed gets its own sampler seed. With one init_seed for every data seed, the chains draw the same
    noise on nearly the same landscape, so their errors repeat from seed to seed and the mean over data seeds
    does not average the sampler's noise (the bigram's lr 3e-4 cell read 0.07 below its reference in all five
    seeds, to two digits)."""
    common: dict[str, Any] = dict(
        n_beta=case.n_beta,
        batch_size=case.batch_size,
        num_init_loss_batches=1,
        init_seed=SAMPLER_SEED + SEED_STRIDE * seed,
    )
    if case.kind in ("empirical", "trained"):
        n = len(case.build(seed)[1])
        common["num_init_loss_batches"] = (
            32 if case.name.startswith("bigram") else max(1, 2 * n // case.batch_size)
        )
    return common


def run_case(
    case: Case,
    seed: int,
    grid: dict[str, list[float]] | None,
    base: str,
    smoke: bool,
    max_draws: int | None = None,
    calibrate_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """calibrate() and the fixed settings on one (case, data seed); costs in steps (cells x chains x draws).
    `calibrate_kwargs` (--relaxations, --draw-budget, --chains-per-batch) go to calibrate() alone."""
    import numpy as np
    import xarray as xr

    import distinterp
    from distinterp.jobs.calibrate import calibrate

    common = shared_settings(case, seed)
    model, data, loss_fn = case.build(seed)
    if loss_fn is not None:
        common["loss_fn"] = loss_fn
    kwargs: dict[str, Any] = {"num_draws": 20, "max_draws": 200} if smoke else {}
    if max_draws is not None and not smoke:
        kwargs["max_draws"] = max_draws
    kwargs.update(calibrate_kwargs or {})
    start = time.perf_counter()
    cal = calibrate(model, data, {}, output_path=f"{base}/cal", grid=grid, **common, **kwargs)
    seconds = time.perf_counter() - start
    assert cal is not None
    table = cal.table
    chains = int(table.llc_per_chain.shape[1])
    cost = int(np.asarray(table.num_draws.values).clip(0).sum()) * chains
    fixed = {**FIXED, **({"num_draws": 50} if smoke else {})}
    model, data, loss_fn = case.build(seed)
    from distinterp.errors import IncompleteStoreError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = distinterp.llc(model, data, {}, output_path=f"{base}/fixed.zarr", **common, **fixed)
        except IncompleteStoreError:  # every chain diverged (lr 5e-4 on a stiff model): no estimate
            res = xr.Dataset({"llc_mean": float("nan")}, attrs={"healthy": 0})
    best = cal.best or {}
    target = case.target(float(best.get("localization", 0.0))) if case.target and cal.best else None
    corrected = case.lam - (case.multiplicity - 1) / math.log(case.n_beta)
    return {
        "case": case.name,
        "kind": case.kind,
        "seed": seed,
        "lambda": case.lam,
        "multiplicity": case.multiplicity,
        "n_beta": case.n_beta,
        "expected_finite_n": target if target is not None else corrected,
        "calibrated": cal.estimate,
        "calibrated_se": cal.estimate_se,
        "calibrated_z": cal.estimate_z,  # s.e. either side of its 95 % interval
        "calibrated_error": (cal.estimate - case.lam) / case.lam,
        "chosen": {k: best.get(k) for k in ("lr", "localization", "num_draws")},
        "extrapolated": cal.extrapolate is not None,
        "confirmed": cal.confirmed,
        "reason": cal.reason,
        "fixed": float(res.llc_mean),
        "fixed_error": (float(res.llc_mean) - case.lam) / case.lam,
        "fixed_healthy": bool(res.attrs.get("healthy", 0)),
        "cost_cells": int(table.sizes["cell"]),
        "cost_steps": cost,
        "seconds": seconds,
        "cells": [
            {
                "cell": str(table.cell.values[i]),
                "llc": float(table.llc_mean.values[i]),
                "sem": float(table.llc_sem.values[i]),
                "healthy": bool(table.healthy.values[i]),
                "capped": bool(table.capped.values[i]),
                "unsettled": bool(table.unsettled.values[i]),
                "num_draws": int(table.num_draws.values[i]),
                "distance_growth": float(table.distance_growth.values[i]),
                "localized": bool(table.localized.values[i]),
            }
            for i in range(table.sizes["cell"])
        ],
        "root": f"{base}/cal",
    }


REFERENCE = dict(chains=512, burnin=4000, draws=4000)
"""MALA settings of the float64 reference (`reference.expected_llc`): 512 chains x (4000 + 4000) full-batch
steps, 5-25 s per localization here; its standard error is 0.05-0.2 % of the target on these cases, and
doubling burn-in and draws moved no reading by more than 2 standard errors."""

PROXY_LOCALIZATION = 0.1
"""Where the chosen localization is 0 and the posterior there is improper (reduced-rank regression), the
reference is also taken at this small localization (`--proxy-localization`), as the trend the loc-0 chain
follows while it is still near the checkpoint: a proxy, labelled so, not a target."""

PROXY_REFERENCE = dict(chains=128, burnin=16000, draws=16000)
"""MALA settings at the proxy localization: 10x weaker localization relaxes 10x slower, so 4x the steps on a
quarter of the chains (s.e. 0.3-0.7 % of the target)."""


def references(
    case: Case, seed: int, localizations: list[float], settings: dict[str, int] = REFERENCE
) -> dict[str, Any]:
    """The estimator's finite-n target E[n_beta (L_n(w) - L_n(w0))] at each localization, by float64 full-batch
    MALA (independent of distinterp's sampler); None where the posterior is improper (localization 0 on a
    model whose loss does not confine w, as reduced-rank regression's A = 0, B arbitrary valley)."""
    from distinterp import toy
    from distinterp.reference import expected_llc

    assert case.reference_loss is not None
    model, data, _ = case.build(seed)
    loss, w0 = case.reference_loss(model, data)
    out: dict[str, Any] = {}
    if isinstance(model, toy.DeepLinearNetwork):  # how far above the minimum of L_n the checkpoint sits
        low, w_min = toy.dln_empirical_loss_float64(toy.dln_empirical_minimum(model))
        out["gap"] = case.n_beta * float(loss(w0[None])[0] - low(w_min[None])[0])
    for loc in sorted(set(localizations)):
        if loc == 0 and not case.proper_at_zero:
            out[f"{loc:g}"] = None
            continue
        out[f"{loc:g}"] = expected_llc(loss, w0, case.n_beta, loc, seed=seed, **settings).as_dict()
    return out


def add_references(
    rows: list[dict[str, Any]],
    suite: list[Case],
    grid_locs: list[float],
    smoke: bool = False,
    proxy: float | None = PROXY_LOCALIZATION,
) -> None:
    """Each empirical row gains `reference` at localization 1 (the fixed settings'), at the chosen one and at
    every localization of the grid, and the split of its errors: sampler (estimate - reference) and
    estimator (reference - lambda). A row that already has them keeps them."""
    by_name = {c.name: c for c in suite}
    for row in rows:
        case = by_name.get(row["case"])
        if case is None or case.reference_loss is None or "reference" in row:
            continue  # no reference loss, or one an earlier run added (rows merged from two runs)
        chosen = row["chosen"].get("localization")
        locs = [FIXED["localization"], *grid_locs] + ([float(chosen)] if chosen is not None else [])
        refs = references(
            case, row["seed"], locs, dict(chains=32, burnin=100, draws=100) if smoke else REFERENCE
        )
        row["checkpoint_gap"] = refs.pop("gap", 0.0)  # the bigram sits at its MLE
        row["reference"] = refs
        lam = row["lambda"]

        def ref_at(loc: float | None, refs: dict[str, Any] = refs) -> float:
            got = refs.get(f"{loc:g}") if loc is not None else None
            return float(got["mean"]) if got else float("nan")

        at_chosen, at_fixed = ref_at(chosen), ref_at(FIXED["localization"])
        row["reference_proxy_localization"] = None
        if chosen == 0 and at_chosen != at_chosen and proxy:  # improper at 0: the small-localization trend
            settings = dict(chains=32, burnin=100, draws=100) if smoke else PROXY_REFERENCE
            refs.update(references(case, row["seed"], [proxy], settings))
            refs.pop("gap", None)
            at_chosen = ref_at(proxy)
            row["reference_proxy_localization"] = proxy
        row["reference_chosen"] = at_chosen
        row["reference_fixed"] = at_fixed
        row["calibrated_sampler_error"] = (row["calibrated"] - at_chosen) / at_chosen
        row["fixed_sampler_error"] = (row["fixed"] - at_fixed) / at_fixed
        row["estimator_error_chosen"] = (at_chosen - lam) / lam
        row["estimator_error_fixed"] = (at_fixed - lam) / lam
        for cell in row.get("cells", []):
            settings = dict(part.split("=") for part in cell["cell"].split("_"))
            ref = ref_at(float(settings.get("localization", 0.0)))
            cell["reference"] = ref
            cell["sampler_error"] = (cell["llc"] - ref) / ref


def check_cells(row: dict[str, Any], case: Case, smoke: bool) -> list[dict[str, Any]]:
    """Each cell against a 4x longer reference of itself (last half): not equilibrated when the cell's
    all-steps estimate is off by > 5 % (beyond 2 standard errors); and what diagnose() said of it."""
    import numpy as np

    import distinterp

    out = []
    common = shared_settings(case, row["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        for i, cell in enumerate(row["cells"]):
            settings = dict(part.split("=") for part in cell["cell"].split("_"))
            model, data, loss_fn = case.build(row["seed"])
            if loss_fn is not None:
                common["loss_fn"] = loss_fn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = distinterp.sample(
                    model,
                    data,
                    {},
                    output_path=f"{tmp}/ref{i}.zarr",
                    lr=float(settings["lr"]),
                    localization=float(settings.get("localization", 0.0)),
                    num_draws=4 * cell["num_draws"],
                    **common,
                )
                verdict = distinterp.diagnose(f"{row['root']}/{cell['cell']}.zarr")
                ref = distinterp.diagnose(tree).checks
            trace = np.asarray(ref.loss_trace.values)
            half = trace.shape[1] // 2
            per_chain = float(ref.n_beta) * (np.nanmean(trace[:, half:], axis=1) - float(ref.init_loss))
            reference = float(per_chain.mean())
            se = float(per_chain.std(ddof=1) / math.sqrt(per_chain.size))
            off = cell["llc"] - reference
            unequilibrated = bool(abs(off) > 0.05 * abs(reference) + 2 * se)
            out.append(
                {
                    "case": row["case"],
                    "cell": cell["cell"],
                    "llc": cell["llc"],
                    "reference": reference,
                    "unequilibrated": unequilibrated,
                    "flagged": not verdict.healthy,
                    "checks": [str(p).split(":")[0] for p in verdict.problems],
                }
            )
            if smoke:
                break
    return out


EQUILIBRATION_CASES = [([4, 3, 5], 0), ([3, 2, 6], 1), ([3, 2, 3, 2, 3], 1)]
"""The population cases --equilibration runs cells of known length on (widths, rank)."""


def equilibration_table(smoke: bool, chains: int = 8, keep: str | None = None) -> list[dict[str, Any]]:
    """diagnose() against the truth on cells of known length: population-loss deep linear networks
    (EQUILIBRATION_CASES, n_beta 145, localization 1) at lr 1e-3 and 3e-3, each run for 1, 3 and 10
    Langevin time units with `chains` chains; the truth is the last half of a 20-unit run of the same
    lr, and a cell has not equilibrated when its all-steps estimate is > 5 % from it (beyond 2 standard
    errors). Each row carries what the checks measured: nested R-hat, bulk ESS, the plateau differences."""
    import numpy as np
    import torch

    import distinterp
    from distinterp import toy
    from distinterp.jobs.calibrate import THRESHOLDS

    ids = torch.zeros((8, 2), dtype=torch.int64)
    n_beta = 1000 / math.log(1000)
    common = dict(
        loss_fn=toy.dln_population_loss,
        n_beta=n_beta,
        localization=1.0,
        batch_size=1,
        num_init_loss_batches=1,
        num_chains=chains,
    )
    rows = []
    times = [0.05, 0.1] if smoke else [1.0, 3.0, 10.0]
    todo = EQUILIBRATION_CASES[:1] if smoke else EQUILIBRATION_CASES
    with workdir(keep, "equilibration") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for widths, rank in todo:
            name = f"{'-'.join(map(str, widths))} r{rank}"
            for lr in [1e-3, 3e-3]:
                model = toy.DeepLinearNetwork(widths, rank, point="deepest")
                ref_draws = round((0.2 if smoke else 20.0) / lr)
                ref_path = f"{tmp}/{slug(name)}_ref{lr:g}.zarr"
                distinterp.sample(model, ids, {}, output_path=ref_path, lr=lr, num_draws=ref_draws, **common)
                ref = distinterp.diagnose(ref_path).checks
                trace = np.asarray(ref.loss_trace.values)
                half = trace.shape[1] // 2
                per_chain = n_beta * (np.nanmean(trace[:, half:], axis=1) - float(ref.init_loss))
                truth = float(per_chain.mean())
                se = float(per_chain.std(ddof=1) / math.sqrt(per_chain.size))
                for t in times:
                    draws = max(8, round(t / lr))
                    path = f"{tmp}/{slug(name)}_cell{lr:g}_{draws}.zarr"
                    distinterp.sample(model, ids, {}, output_path=path, lr=lr, num_draws=draws, **common)
                    verdict = distinterp.diagnose(path)
                    strict = distinterp.diagnose(path, thresholds=THRESHOLDS)
                    c = verdict.checks
                    llc = float(c.llc_mean)
                    rows.append(
                        {
                            "case": name,
                            "lr": lr,
                            "time": t,
                            "draws": draws,
                            "chains": chains,
                            "llc": llc,
                            "truth": truth,
                            "off": llc / truth - 1,
                            "unequilibrated": bool(abs(llc - truth) > 0.05 * abs(truth) + 2 * se),
                            "diagnose_flags": not verdict.healthy,
                            "diagnose_checks": list(dict.fromkeys(p.split(":")[0] for p in verdict.problems)),
                            "diagnose_warnings": sorted({n.split(":")[0] for n in verdict.notes}),
                            "relaxations": float(c.relaxations),
                            "calibration_flags": not strict.healthy,
                            "nested_rhat": float(c.nested_rhat),
                            "ess_bulk": float(c.ess_bulk),
                            "plateau_transient": float(c.plateau_transient),
                            "plateau_drift": float(c.plateau_drift),
                        }
                    )
                    r = rows[-1]
                    print(
                        f"{name:10s} lr {lr:g} time {t:5.1f} ({draws:6d} draws): LLC {llc:6.3f} vs {truth:6.3f} "
                        f"({r['off']:+6.1%}) {'NOT equilibrated' if r['unequilibrated'] else 'equilibrated    '} "
                        f"nested R-hat {r['nested_rhat']:.3f} ESS {r['ess_bulk']:6.0f} plateau "
                        f"{r['plateau_transient']:+.1%}/{r['plateau_drift']:+.1%}  diagnose: "
                        f"{','.join(r['diagnose_checks']) or 'healthy'} (warns: "
                        f"{','.join(r['diagnose_warnings']) or '-'}); calibration cell: "
                        f"{'flagged' if r['calibration_flags'] else 'counted'}",
                        flush=True,
                    )
    return rows


def equilibration_markdown(rows: list[dict[str, Any]]) -> str:
    """The --equilibration table: each cell against its truth, what every check measured and said."""
    out = [
        "| case | lr | time | draws x chains | LLC | truth | off | equilibrated? | nested R-hat | bulk ESS | "
        "plateau transient / drift | relaxations | diagnose() fails | diagnose() warns | calibration cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['case']} | {r['lr']:g} | {r['time']:g} | {r['draws']} x {r['chains']} | {r['llc']:.3f} | "
            f"{r['truth']:.3f} | {r['off']:+.1%} | {'no' if r['unequilibrated'] else 'yes'} | "
            f"{r['nested_rhat']:.3f} | {r['ess_bulk']:.0f} | {r['plateau_transient']:+.1%} / "
            f"{r['plateau_drift']:+.1%} | {r.get('relaxations', float('nan')):.2g} | "
            f"{', '.join(r['diagnose_checks']) or 'healthy'} | {', '.join(r.get('diagnose_warnings', [])) or '-'} | "
            f"{'flagged' if r['calibration_flags'] else 'counted'} |"
        )
    bad = [r for r in rows if r["unequilibrated"]]
    good = [r for r in rows if not r["unequilibrated"]]
    caught = sum(r["diagnose_flags"] for r in bad)
    false = sum(r["diagnose_flags"] for r in good)
    out += [
        "",
        f"- {len(bad)} of {len(rows)} cells not equilibrated; diagnose() failed {caught}/{len(bad)} of them and "
        f"{false}/{len(good)} equilibrated cells",
    ]
    return "\n".join(out) + "\n"


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers (argparse names the option when this fails)."""
    return [float(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--smoke", action="store_true", help="two tiny cases, short cells: seconds")
    p.add_argument(
        "--cases",
        default="population",
        help="population (default: ~10 min idle), empirical, trained (the rrr cases at the minimum of L_n), "
        "comma-separated",
    )
    p.add_argument("--only", default="", help="run only cases whose name contains this ('A|B': either)")
    p.add_argument("--seeds", type=int, default=2, help="data seeds per empirical case")
    p.add_argument(
        "--data-seeds",
        type=floats,
        help="comma-separated data seeds replacing 0..seeds-1 (split a run over processes)",
    )
    p.add_argument("--n", type=int, default=1000, help="data size n (n_beta = n / log n)")
    p.add_argument(
        "--crossing-n", type=int, default=CROSSING_N, help="n of the normal crossing w1^2 w2^4 (its own)"
    )
    p.add_argument("--large-n", type=int, default=LARGE_N, help="n of the 13,200-parameter network (its own)")
    p.add_argument("--grid", choices=["benchmark", "default"], default="benchmark")
    p.add_argument("--lr", type=floats, help="comma-separated lr replacing the grid's (e.g. 3e-5,1e-4,3e-4)")
    p.add_argument("--localization", type=floats, help="comma-separated localizations replacing the grid's")
    p.add_argument("--max-draws", type=int, help="cap on a cell's draws (default calibrate's: 50 x 200)")
    p.add_argument("--relaxations", type=float, help="calibrate()'s relaxations (what its reason may advise)")
    p.add_argument("--draw-budget", type=int, help="calibrate()'s draw_budget per chain over the grid")
    p.add_argument("--chains-per-batch", type=int, help="chains per batched step in calibrate()'s cells")
    p.add_argument(
        "--check-cells",
        type=int,
        default=0,
        help="check the cells of the first K runs against 4x longer runs",
    )
    p.add_argument(
        "--equilibration",
        action="store_true",
        help="only diagnose() against the truth (cells of known length)",
    )
    p.add_argument(
        "--chains", type=int, default=8, help="chains per --equilibration cell (nested R-hat needs 8)"
    )
    p.add_argument("--rows-jsonl", help="append each (case, seed) row to this JSON-lines file as it finishes")
    p.add_argument(
        "--references-from",
        help="read the rows of earlier runs from this JSON-lines file (--rows-jsonl) and add the references "
        "to the rows that lack them",
    )
    p.add_argument(
        "--proxy-localization",
        type=float,
        default=PROXY_LOCALIZATION,
        help="where loc 0 was chosen and is improper, the reference's small localization (0: none)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="skip the float64 MALA references of the empirical rows"
    )
    p.add_argument("--keep", help="keep every store under this directory (default: temporary, removed)")
    p.add_argument(
        "--results",
        help="also write benchmarks/results/NAME.json and NAME.md (the table the README quotes)",
    )
    args = p.parse_args()
    if args.crossing_n < 3 or args.n < 3:
        p.error("--n and --crossing-n: need n >= 3 (n_beta = n / log n), e.g. --crossing-n 1000000")
    import torch

    torch.set_num_threads(1)
    import logging

    logging.getLogger("distinterp").setLevel(logging.ERROR)
    sys.path.insert(0, str(ROOT))
    if args.equilibration:
        eq = equilibration_table(args.smoke, args.chains, args.keep)
        harness.write_json(args.json, {"equilibration": eq})
        print(equilibration_markdown(eq).splitlines()[-1])
        if args.results:
            RESULTS.mkdir(parents=True, exist_ok=True)
            harness.write_json(str(RESULTS / f"{args.results}.json"), {"equilibration": eq})
            (RESULTS / f"{args.results}.md").write_text(equilibration_markdown(eq))
        return
    kinds = {"population", "empirical"} if args.smoke else set(args.cases.split(","))
    suite = [
        c
        for c in cases(args.n, args.seeds, args.smoke, args.crossing_n, args.large_n)
        if c.kind in kinds and any(part in c.name for part in args.only.split("|"))
    ]
    if args.data_seeds and not all(float(x).is_integer() and x >= 0 for x in args.data_seeds):
        p.error(f"--data-seeds: whole numbers >= 0, e.g. --data-seeds 1,2; got {args.data_seeds}")
    if args.data_seeds:
        for case in suite:
            if case.kind != "population":
                case.seeds = [int(x) for x in args.data_seeds]
    grid = None if args.grid == "default" else BENCH_GRID
    for name in ("lr", "localization"):
        if getattr(args, name):
            from distinterp.jobs.calibrate import DEFAULT_GRID

            grid = {k: list(v) for k, v in (grid or DEFAULT_GRID).items()}
            grid[name] = getattr(args, name)
    if args.smoke:
        grid = {"lr": [1e-3, 3e-3], "localization": [1.0]}
    passed = ("relaxations", "draw_budget", "chains_per_batch")
    calibrate_kwargs = {k: getattr(args, k) for k in passed if getattr(args, k) is not None}
    rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    if args.references_from:  # rows a run wrote with --rows-jsonl: add the references only
        names = {c.name for c in suite}
        with open(args.references_from) as fh:
            rows = [r for r in map(json.loads, fh) if r["case"] in names]
        suite = []
    header = (
        f"{'case':28s} {'kind':10s} {'seed':>4s} {'lambda':>7s} {'m':>2s} {'n_beta':>7s} {'finite-n':>8s} {'calibrated':>10s} "
        f"{'error':>7s} {'fixed':>7s} {'error':>7s} {'chosen (lr, loc, draws)':>26s} {'cells':>5s} {'steps':>8s} {'s':>5s}"
    )
    print(header, flush=True)
    for case in suite:
        for seed in case.seeds:
            with workdir(args.keep, f"{slug(case.name)}_seed{seed}") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = run_case(case, seed, grid, tmp, args.smoke, args.max_draws, calibrate_kwargs)
                if len(rows) < args.check_cells:
                    cells += check_cells(row, case, args.smoke)
            if not args.keep:
                row["root"] = ""  # gone with the temporary directory
            rows.append(row)
            if args.rows_jsonl:  # each row as it finishes, so a long run's finished part survives
                with open(args.rows_jsonl, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            ch = row["chosen"]
            chosen = f"{ch['lr']}, {ch['localization']}, {ch['num_draws']}" + (
                " x" if row["extrapolated"] else ""
            )
            print(
                f"{row['case']:28s} {row['kind']:10s} {seed:4d} {row['lambda']:7.3f} {row['multiplicity']:2d} "
                f"{row['n_beta']:7.0f} {row['expected_finite_n']:8.3f} {row['calibrated']:10.3f} {row['calibrated_error']:+7.1%} "
                f"{row['fixed']:7.3f} {row['fixed_error']:+7.1%} {chosen:>26s} {row['cost_cells']:5d} "
                f"{row['cost_steps']:8d} {row['seconds']:5.0f}",
                flush=True,
            )
    if not args.no_reference:
        every = {c.name: c for c in cases(args.n, args.seeds, args.smoke, args.crossing_n, args.large_n)}
        locs = list((grid or _default_grid())["localization"])
        add_references(rows, list(every.values()), locs, args.smoke, args.proxy_localization or None)
    summary = summarize(rows, cells)
    for line in summary["lines"]:
        print(line)
    harness.write_json(args.json, {"rows": rows, "cells": cells, "summary": summary})
    if args.results:
        RESULTS.mkdir(parents=True, exist_ok=True)
        harness.write_json(
            str(RESULTS / f"{args.results}.json"), {"rows": rows, "cells": cells, "summary": summary}
        )
        table = reference_markdown if any("reference" in r for r in rows) else markdown
        (RESULTS / f"{args.results}.md").write_text(table(rows, summary["lines"]))
        print(f"wrote {RESULTS / args.results}.json and .md")


def _default_grid() -> dict[str, list[float]]:
    """calibrate()'s DEFAULT_GRID (imported late: the script's --help needs no torch)."""
    from distinterp.jobs.calibrate import DEFAULT_GRID

    return {k: list(v) for k, v in DEFAULT_GRID.items()}


def slug(name: str) -> str:
    """A case name as a directory name: 'w1^2*w2^4' -> 'w1_2xw2_4'."""
    return "".join(
        c if c.isalnum() or c in "-." else "x" if c == "*" else "p" if c == "+" else "_" for c in name
    )


@contextlib.contextmanager
def workdir(keep: str | None, name: str) -> Iterator[str]:
    """`keep/name` (made, and left for inspection) when --keep is given, else a temporary directory."""
    if keep:
        path = Path(keep) / name
        path.mkdir(parents=True, exist_ok=True)
        yield str(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


def markdown(rows: list[dict[str, Any]], lines: list[str]) -> str:
    """The table the README quotes: one row per (case, data seed), then the goals' summary lines."""
    out = [
        "| case | loss | data seed | lambda | calibrated | error | 2 s.e. | fixed settings | error | "
        "chosen: lr, localization, draws | cells x total SGLD steps | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ch = r["chosen"]
        how = " (extrapolated)" if r["extrapolated"] else ""
        how += "" if r["confirmed"] else " (unconfirmed)"
        se = r.get("calibrated_se", float("nan"))
        out.append(
            f"| {r['case']} | {r['kind']} | {r['seed']} | {r['lambda']:.4g} | {r['calibrated']:.4g} | "
            f"{r['calibrated_error']:+.1%} | {2 * se / abs(r['lambda']):.1%} | {r['fixed']:.4g} | "
            f"{r['fixed_error']:+.1%} | {ch['lr']}, {ch['localization']}, {ch['num_draws']}{how} | "
            f"{r['cost_cells']} x {r['cost_steps']:,} | {r['seconds']:.0f} |"
        )
    return "\n".join(out + [""] + [f"- {line}" for line in lines]) + "\n"


def reference_markdown(rows: list[dict[str, Any]], lines: list[str]) -> str:
    """The empirical table with the float64 reference: each estimate's error against lambda, split into the
    sampler's (estimate - reference at its localization) and the estimator's at finite n (reference - lambda)."""

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{x:+.1%}"

    def num(x: float) -> str:
        return "improper" if x != x else f"{x:.3f}"

    out = [
        "| case | seed | lambda | n_beta (L_n(w0) - min L_n) | calibrated (lr, loc) | reference at its loc | "
        "calibrated - lambda | "
        "of which sampler (calibrated - reference) | estimator (reference - lambda) | fixed (lr 5e-4, loc 1) | "
        "reference at loc 1 | fixed - lambda | of which sampler | estimator |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "reference" not in r:
            continue
        ch = r["chosen"]
        proxy = r.get("reference_proxy_localization")
        loc_c = proxy if proxy else ch["localization"]
        refc = r["reference"].get(f"{float(loc_c):g}") if loc_c is not None else None
        se_c = f" +- {refc['se']:.3f}" if refc else ""
        if proxy:
            se_c += f" (improper at 0; at loc {proxy:g})"
        ref1 = r["reference"].get(f"{1.0:g}")
        out.append(
            f"| {r['case']} | {r['seed']} | {r['lambda']:.4g} | {r.get('checkpoint_gap', 0.0):.2f} | "
            f"{r['calibrated']:.3f} ({ch['lr']}, "
            f"{ch['localization']:g}) | {num(r['reference_chosen'])}{se_c} | {pct(r['calibrated_error'])} | "
            f"{pct(r['calibrated_sampler_error'])} | {pct(r['estimator_error_chosen'])} | {r['fixed']:.3f} | "
            f"{num(r['reference_fixed'])} +- {ref1['se']:.3f} | {pct(r['fixed_error'])} | "
            f"{pct(r['fixed_sampler_error'])} | {pct(r['estimator_error_fixed'])} |"
        )
    out += ["", *case_means_markdown(rows)]
    accept = [v["acceptance"] for r in rows for v in r.get("reference", {}).values() if isinstance(v, dict)]
    drift = [
        abs(v["drift"]) / v["drift_se"]
        for r in rows
        for v in r.get("reference", {}).values()
        if isinstance(v, dict) and v["drift_se"] > 0
    ]
    if accept:
        out += [
            "",
            f"Reference: float64 full-batch MALA, {REFERENCE['chains']} chains x ({REFERENCE['burnin']} + "
            f"{REFERENCE['draws']}) steps per localization; acceptance {min(accept):.2f}-{max(accept):.2f}; "
            f"|second half - first half| / its s.e.: median {sorted(drift)[len(drift) // 2]:.1f}, "
            f"max {max(drift):.1f}. 'improper': localization 0 on reduced-rank regression has no finite target; "
            f"where it was chosen, the reference is taken at localization {PROXY_LOCALIZATION:g} ("
            f"{PROXY_REFERENCE['chains']} chains x ({PROXY_REFERENCE['burnin']} + {PROXY_REFERENCE['draws']}) "
            "steps), the trend a localization-0 chain follows near the checkpoint: a proxy, not a target.",
        ]
    cell_rows = _cell_errors(rows)
    if cell_rows:
        out += [
            "",
            "Every calibration cell with localization > 0 against the reference at its localization (mean over "
            "seeds of (cell - reference) / reference):",
            "",
            "| case | " + " | ".join(cell_rows["cells"]) + " |",
            "|---|" + "---|" * len(cell_rows["cells"]),
        ]
        for name, errs in cell_rows["by_case"].items():
            out.append(
                f"| {name} | " + " | ".join(pct(errs.get(c, float("nan"))) for c in cell_rows["cells"]) + " |"
            )
    return "\n".join(out + [""] + [f"- {line}" for line in lines]) + "\n"


def case_means_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Per case, means over its data seeds: |error| against lambda of both settings, and the split of the
    signed error into the estimator's (reference - lambda) and the sampler's (estimate - reference)."""
    import numpy as np

    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "reference" in r:
            lam = r["lambda"]  # the split in shares of lambda, so that the two parts add up
            r = {
                **r,
                "calibrated_sampler_share": (r["calibrated"] - r["reference_chosen"]) / lam,
                "fixed_sampler_share": (r["fixed"] - r["reference_fixed"]) / lam,
            }
            by_case.setdefault(r["case"], []).append(r)

    def mean(rs: list[dict[str, Any]], key: str, absolute: bool = False) -> str:
        vals = [abs(r[key]) if absolute else r[key] for r in rs if r[key] == r[key]]
        return f"{np.mean(vals):+.1%}".replace("+", "" if absolute else "+") if vals else "n/a"

    out = [
        "| case | seeds | mean n_beta (L_n(w0) - min L_n) | mean abs error: calibrated | fixed | "
        "calibrated = estimator + sampler (mean signed, % of lambda) | fixed = estimator + sampler |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in by_case.items():
        gap = float(np.mean([r.get("checkpoint_gap", 0.0) for r in rs]))
        out.append(
            f"| {name} | {len(rs)} | {gap:.2f} | {mean(rs, 'calibrated_error', True)} | "
            f"{mean(rs, 'fixed_error', True)} | {mean(rs, 'calibrated_error')} = "
            f"{mean(rs, 'estimator_error_chosen')} + {mean(rs, 'calibrated_sampler_share')} | "
            f"{mean(rs, 'fixed_error')} = {mean(rs, 'estimator_error_fixed')} + {mean(rs, 'fixed_sampler_share')} |"
        )
    return out


def _cell_errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case, per calibration cell (lr, localization > 0): the mean over seeds of its sampler error."""
    import numpy as np

    by_case: dict[str, dict[str, list[float]]] = {}
    names: list[str] = []
    for r in rows:
        for c in r.get("cells", []):
            if "sampler_error" not in c or c["sampler_error"] != c["sampler_error"]:
                continue
            by_case.setdefault(r["case"], {}).setdefault(c["cell"], []).append(c["sampler_error"])
            if c["cell"] not in names:
                names.append(c["cell"])
    return {
        "cells": names,
        "by_case": {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in by_case.items()},
    }


def summarize(rows: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The goals: population cases within 10 %; empirical mean error per case no worse than fixed, every
    case within 30 %; every unequilibrated cell flagged."""
    import numpy as np

    lines = []
    pop = [r for r in rows if r["kind"] == "population"]
    if pop:
        worst = max(abs(r["calibrated_error"]) for r in pop)
        lines.append(
            f"population: worst calibrated error {worst:.1%} (goal 10 %), fixed settings' worst "
            f"{max(abs(r['fixed_error']) for r in pop):.1%}"
        )
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] in ("empirical", "trained"):
            by_case.setdefault(r["case"], []).append(r)
    for name, rs in by_case.items():
        cal = float(np.mean([abs(r["calibrated_error"]) for r in rs]))
        fix = float(np.mean([abs(r["fixed_error"]) for r in rs]))
        lines.append(
            f"empirical {name}: mean |error| over {len(rs)} seeds: calibrated {cal:.1%}, fixed {fix:.1%}; worst "
            f"calibrated {max(abs(r['calibrated_error']) for r in rs):.1%} (goal 30 %)"
        )

    def covered(rs: list[dict[str, Any]], z: float | None = None) -> int:
        """Seeds whose calibrated estimate lies within z of its own standard errors of the reference (None:
        the z calibrate() confirms with, Student's t over its chains; rows from before it: 2)."""
        return sum(
            abs(r["calibrated"] - r["reference_chosen"])
            <= (z or r.get("calibrated_z", 2.0)) * r["calibrated_se"]
            for r in rs
            if r["reference_chosen"] == r["reference_chosen"]
        )

    for name, rs in by_case.items():
        if not all("reference" in r for r in rs):
            continue

        def mean_abs(key: str, rs: list[dict[str, Any]] = rs) -> float:
            vals = [abs(r[key]) for r in rs if r[key] == r[key]]
            return float(np.mean(vals)) if vals else float("nan")

        lines.append(
            f"  {name}: estimator's own error at finite n (reference - lambda), mean |.|: "
            f"{mean_abs('estimator_error_fixed'):.1%} at localization 1, {mean_abs('estimator_error_chosen'):.1%} "
            f"at the chosen localization; sampler's (estimate - reference): fixed {mean_abs('fixed_sampler_error'):.1%}, "
            f"calibrated {mean_abs('calibrated_sampler_error'):.1%}; the calibrated estimate +- 2 s.e. covers "
            f"its reference in {covered(rs, 2.0)} of {len(rs)} seeds, +- its 95 % interval (Student's t over "
            f"its chains) in {covered(rs)}"
        )
    if cells:
        bad = [c for c in cells if c["unequilibrated"]]
        missed = [c for c in bad if not c["flagged"]]
        lines.append(
            f"cells: {len(bad)} of {len(cells)} not equilibrated (against 4x longer runs); diagnose() flagged "
            f"{len(bad) - len(missed)} of them; {sum(c['flagged'] for c in cells if not c['unequilibrated'])} "
            "equilibrated cells flagged too"
        )
        lines += [
            f"  missed: {c['case']} {c['cell']}: {c['llc']:.3f} vs {c['reference']:.3f}" for c in missed
        ]
    return {"lines": lines}


if __name__ == "__main__":
    main()
