"""Known answers: calibrate() from its defaults, and fixed settings, against learning coefficients known in
closed form; and whether diagnose() flags the calibration cells that had not equilibrated.

    python benchmarks/known_answers.py [--json out.json] [--smoke] [--cases population,empirical]
                                       [--seeds 2] [--n 1000] [--grid default|benchmark] [--only NAME]
                                       [--check-cells K] [--equilibration] [--crossing-n N]
                                       [--lr 3e-5,1e-4] [--localization 1] [--max-draws N]

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

Equilibration against the truth: each calibration cell's all-steps estimate is compared with a reference
run of the same cell 4x longer (its last half); a cell "has not equilibrated" when they differ by more
than 5 % of the reference (beyond two standard errors). `--check-cells K` does this for the cells of the
first K cases (it is the expensive part).
"""

from __future__ import annotations

import argparse
import contextlib
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
            return model, toy.dln_regression_data(model, n, seed), toy.dln_empirical_loss

        return Case(
            f"{label} {'-'.join(map(str, widths))} r{rank} n={n}",
            kind,
            build,
            float(lam),
            m,
            n_beta,
            batch_size=min(100, n),
            seeds=list(range(seeds)),
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
    return population + empirical


def shared_settings(case: Case, seed: int) -> dict[str, Any]:
    """n_beta, batch size and initial-loss batches of every run of a case (the initial loss over about the
    whole dataset for empirical losses: its error is multiplied by n_beta)."""
    common: dict[str, Any] = dict(n_beta=case.n_beta, batch_size=case.batch_size, num_init_loss_batches=1)
    if case.kind == "empirical":
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
) -> dict[str, Any]:
    """calibrate() and the fixed settings on one (case, data seed); costs in steps (cells x chains x draws)."""
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
                "healthy": bool(table.healthy.values[i]),
                "num_draws": int(table.num_draws.values[i]),
                "distance_growth": float(table.distance_growth.values[i]),
                "localized": bool(table.localized.values[i]),
            }
            for i in range(table.sizes["cell"])
        ],
        "root": f"{base}/cal",
    }


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
        "--cases", default="population", help="population (default: ~10 min idle), empirical, or both"
    )
    p.add_argument("--only", default="", help="run only cases whose name contains this ('A|B': either)")
    p.add_argument("--seeds", type=int, default=2, help="data seeds per empirical case")
    p.add_argument("--n", type=int, default=1000, help="data size n (n_beta = n / log n)")
    p.add_argument(
        "--crossing-n", type=int, default=CROSSING_N, help="n of the normal crossing w1^2 w2^4 (its own)"
    )
    p.add_argument("--large-n", type=int, default=LARGE_N, help="n of the 13,200-parameter network (its own)")
    p.add_argument("--grid", choices=["benchmark", "default"], default="benchmark")
    p.add_argument("--lr", type=floats, help="comma-separated lr replacing the grid's (e.g. 3e-5,1e-4,3e-4)")
    p.add_argument("--localization", type=floats, help="comma-separated localizations replacing the grid's")
    p.add_argument("--max-draws", type=int, help="cap on a cell's draws (default calibrate's: 50 x 200)")
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
    grid = None if args.grid == "default" else BENCH_GRID
    for name in ("lr", "localization"):
        if getattr(args, name):
            from distinterp.jobs.calibrate import DEFAULT_GRID

            grid = {k: list(v) for k, v in (grid or DEFAULT_GRID).items()}
            grid[name] = getattr(args, name)
    if args.smoke:
        grid = {"lr": [1e-3, 3e-3], "localization": [1.0]}
    rows, cells = [], []
    header = (
        f"{'case':28s} {'kind':10s} {'seed':>4s} {'lambda':>7s} {'m':>2s} {'n_beta':>7s} {'finite-n':>8s} {'calibrated':>10s} "
        f"{'error':>7s} {'fixed':>7s} {'error':>7s} {'chosen (lr, loc, draws)':>26s} {'cells':>5s} {'steps':>8s} {'s':>5s}"
    )
    print(header, flush=True)
    for case in suite:
        for seed in case.seeds:
            with workdir(args.keep, f"{slug(case.name)}_seed{seed}") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = run_case(case, seed, grid, tmp, args.smoke, args.max_draws)
                if len(rows) < args.check_cells:
                    cells += check_cells(row, case, args.smoke)
            if not args.keep:
                row["root"] = ""  # gone with the temporary directory
            rows.append(row)
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
    summary = summarize(rows, cells)
    for line in summary["lines"]:
        print(line)
    harness.write_json(args.json, {"rows": rows, "cells": cells, "summary": summary})
    if args.results:
        RESULTS.mkdir(parents=True, exist_ok=True)
        harness.write_json(
            str(RESULTS / f"{args.results}.json"), {"rows": rows, "cells": cells, "summary": summary}
        )
        (RESULTS / f"{args.results}.md").write_text(markdown(rows, summary["lines"]))
        print(f"wrote {RESULTS / args.results}.json and .md")


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
        if r["kind"] == "empirical":
            by_case.setdefault(r["case"], []).append(r)
    for name, rs in by_case.items():
        cal = float(np.mean([abs(r["calibrated_error"]) for r in rs]))
        fix = float(np.mean([abs(r["fixed_error"]) for r in rs]))
        lines.append(
            f"empirical {name}: mean |error| over {len(rs)} seeds: calibrated {cal:.1%}, fixed {fix:.1%}; worst "
            f"calibrated {max(abs(r['calibrated_error']) for r in rs):.1%} (goal 30 %)"
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
