"""calibrate(): which lr / localization to use, decided by a grid of short runs and a documented rule.

Every cell of the grid is a normal store under the root (`<root>/lr=0.001_localization=10.zarr`),
spread over ranks and array tasks and resumable like a trajectory (`distinterp.jobs.sweep`); the choice
is `distinterp.analyses.calibration.choose`, whose docstring states the rule and its limits.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, NonNegativeFloat, model_validator

from distinterp.analyses.calibration import TOLERANCE, Choice, choose, settled
from distinterp.analyses.curvature import CEILING, step_stiffness, top_eigenvalue
from distinterp.analyses.diagnostics import Thresholds, diagnose
from distinterp.analyses.equilibration import localized, running_llc_plateau
from distinterp.config import SamplerConfig, default_nbeta
from distinterp.identity import recorded_settings
from distinterp.jobs.route import OWN, sample_kwargs
from distinterp.jobs.runner import check_output_path
from distinterp.jobs.settings import SampleSettings, parse_override
from distinterp.jobs.sources import load_dataset, load_model, load_observables, tokenizer_name
from distinterp.jobs.sweep import (
    Run,
    aggregate_sweep,
    check_label,
    child,
    restriction_masks,
    run_sweep,
    stores_complete,
    temporary_root,
)
from distinterp.parallel.distributed import runtime
from distinterp.store import Location
from distinterp.store.open import open_tree
from distinterp.update import DISTANCE_ONLY

logger = logging.getLogger(__name__)

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "lr": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "localization": (0.0, 1.0, 10.0),
}
"""The sweep when none is given: lr from 1e-5 to 1e-2 in half-decade steps, localization none, weak
(a prior of standard deviation 1 around the checkpoint) and strong. Every cell runs the same Langevin
time (see `cell_draws`), so the cost sits in the small-lr cells: lr below 1e-5 would need more than
1000 x the largest cell's draws to equilibrate."""

MAX_DRAWS_FACTOR = 50
"""The old default cap on each cell's draws, as a multiple of num_draws (now `max_draws=50 * num_draws`
gives it back): it left the normal crossing's lr 1e-4 cell at localization 1, the one that reaches its
learning coefficient, at 10 % of the 1e5 draws it needs."""

DRAW_BUDGET_FACTOR = 2000
"""Draws per chain over the whole grid, as a multiple of num_draws (4e5 at the default 200; 1.6e6 SGLD
steps for 4 chains, about 3x the old default grid's 5.1e5): enough that on the default grid the cells of
up to 1e5 draws (lr 1e-4 at localization 1, lr 1e-5 at 10) run their whole Langevin time. Cells are
served cheapest first (`allocate_draws`), so the budget goes to the cells that can equilibrate and a
small lr that cannot reach a quarter of its time costs only num_draws."""

MIN_TIME_FRACTION = 0.25
"""A cell the draw cap cut below this fraction of its Langevin time (1.25 of its 5 relaxation times) does
not count, healthy or not: the plateau check cannot see a transient much longer than the run (the 4-3-5
regression at localization 1: 1 time unit of 10, -12 % against the truth, passed the calibration
thresholds; 3 of 10, -5.6 %, and 10, -1.5 %: `benchmarks/known_answers.py --equilibration`). A cell
cut above it counts only when its running LLC shows it settled (`analyses.calibration.settled`)."""

RELAXATIONS = 5.0
"""Cell length in relaxation times of the localization prior: SGLD's localization term pulls each
coordinate back at rate localization / 2 per unit of Langevin time lr x steps (an Ornstein-Uhlenbeck
process), so directions the loss leaves flat or nearly so (a singular model's) relax in 2 / localization
time units, whatever lr is. Five of them (10 time units at localization 1) leave the start-up a small
share of the all-steps average: on the 4-3-5 reduced-rank regression at localization 1, n_beta 145,
lr 1e-3, 10 time units gave 5.70 over all steps against 5.77 over the last half (-1.2 %), while 2
time units gave 5.34 (-6.5 % against the long run) and passed the plateau check at -4.6 %."""


def cell_draws(
    lr: float,
    localization: float,
    *,
    num_draws: int,
    max_draws: int,
    top_lr: float,
    relaxations: float = RELAXATIONS,
    steps_per_draw: int = 1,
) -> int:
    """Draws for one cell, so each runs long enough at its lr: relaxations x 2 / localization units of
    Langevin time lr x steps, or with no localization the time of num_draws at the grid's largest lr;
    never fewer than num_draws, never more than max_draws (a draw is steps_per_draw SGLD steps). A fixed
    draw count leaves the small-lr cells in their transient, which is what fooled a flatness rule."""
    if num_draws < 1 or max_draws < num_draws:
        raise ValueError(f"max_draws: must be >= num_draws ({num_draws}) >= 1, got {max_draws}")
    if not lr > 0 or not top_lr > 0:
        raise ValueError(f"grid['lr']: step sizes must be > 0, got {lr}")
    time = relaxations * 2.0 / localization if localization > 0 else num_draws * steps_per_draw * top_lr
    return int(min(max_draws, max(num_draws, math.ceil(time / (lr * steps_per_draw) - 1e-9))))


MIN_LRS = 3
"""When the curvature ceiling leaves fewer lr than this on the grid, the grid is extended below its
smallest kept lr (in its own ratio, e.g. half decades) until this many lie under the ceiling: the rule
needs two neighbouring equilibrated lr, and a third to check the line."""

CURVATURE_BATCHES = 4
"""Batches (of batch_size rows, the dataset's first) whose mean loss the curvature is measured on."""


@dataclass(frozen=True)
class Ceiling:
    """What the curvature ceiling did to the grid's lr: the loss Hessian's top eigenvalue at the checkpoint,
    the ceiling on lr x (n_beta lambda_max + localization), the lrs dropped (with their stiffness) and
    the lrs added below the grid to keep MIN_LRS."""

    lambda_max: float
    ceiling: float
    lrs: tuple[float, ...]
    dropped: dict[float, float]
    added: tuple[float, ...]

    def record(self) -> dict[str, Any]:
        """JSON for the root's record and the table's attrs."""
        return {
            "lambda_max": self.lambda_max,
            "ceiling": self.ceiling,
            "dropped": [[lr, s] for lr, s in self.dropped.items()],
            "added": list(self.added),
        }


def checkpoint_curvature(
    model: Any, dataset: Any, loss_fn: Any, batch_size: int, num_batches: int = CURVATURE_BATCHES
) -> float:
    """Top eigenvalue of the mean per-token loss's Hessian at the model's current weights, over its first
    num_batches batches (`analyses.curvature.top_eigenvalue`); the model is left as it was (eval mode
    while measuring, so dropout does not make the Hessian-vector products noisy)."""
    import torch

    from distinterp.data import input_ids_tensor
    from distinterp.loss import resolve_loss_fn
    from distinterp.sampling import vocab_size

    ids = input_ids_tensor(dataset, "dataset", vocab_size(model))
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    rows = ids[: max(1, batch_size) * max(1, num_batches)].to(device)
    fn = resolve_loss_fn(loss_fn)
    batches = list(torch.split(rows, max(1, batch_size)))

    def loss() -> torch.Tensor:
        return sum(fn(model, b).float().mean() for b in batches) / len(batches)  # type: ignore[return-value]

    was_training = model.training
    model.eval()
    try:  # the math attention kernel: the fused CPU/GPU ones have no double backward
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            return top_eigenvalue(loss, params)
    except (RuntimeError, NotImplementedError) as e:
        if "not implemented" not in str(e) and "does not require grad" not in str(e):
            raise
        logger.warning("calibrate: no Hessian-vector product for this model (%s); no lr ceiling", e)
        return math.nan
    finally:
        model.train(was_training)


def apply_ceiling(
    lrs: Sequence[float], n_beta: float, lambda_max: float, localizations: Sequence[float], ceiling: float
) -> Ceiling:
    """The grid's lrs whose `step_stiffness` at the largest localization is at most `ceiling`; when fewer
    than MIN_LRS remain, extended below the smallest kept by the grid's own lrs a decade (or more) down
    (half-decade grids stay half-decade)."""
    if not math.isfinite(lambda_max):  # not measured: every lr runs
        return Ceiling(lambda_max, ceiling, tuple(sorted(float(x) for x in lrs)), {}, ())
    loc = max([float(x) for x in localizations] + [0.0])
    stiff = {float(lr): step_stiffness(float(lr), n_beta, lambda_max, loc) for lr in lrs}
    kept = sorted(lr for lr, s in stiff.items() if s <= ceiling)
    dropped = {lr: round(s, 4) for lr, s in stiff.items() if s > ceiling}
    added: list[float] = []
    want = min(MIN_LRS, len(stiff))
    decade = 1
    while dropped and len(kept) < want:  # the grid's own lrs a decade (two, ...) down, below the smallest
        floor = kept[0] if kept else min(stiff)
        for lr in sorted((float(f"{x / 10**decade:.6g}") for x in stiff), reverse=True):
            ok = step_stiffness(lr, n_beta, lambda_max, loc) <= ceiling
            if lr < floor and ok and lr not in kept and len(kept) < want:
                kept = sorted([*kept, lr])
                added.append(lr)
        decade += 1
    return Ceiling(lambda_max, ceiling, tuple(kept), dropped, tuple(sorted(added)))


def allocate_draws(need: Sequence[int], budget: int, minimum: int) -> list[int]:
    """Draws per cell out of `budget` per chain: every cell gets `minimum`; then, cheapest need first (ties
    in grid order), each gets its whole need while the budget lasts; the first that does not fit gets
    what is left if that is at least MIN_TIME_FRACTION of its need (a cut cell), else `minimum`, as does
    every later one (a capped cell, which would not count, so its draws are not spent)."""
    if budget < minimum * len(need):
        raise ValueError(
            f"draw_budget: {budget} draws per chain cannot give the {len(need)} cells num_draws={minimum} "
            f"each; raise it to at least {minimum * len(need)}"
        )
    given = [minimum] * len(need)
    left = budget - minimum * len(need)
    for i in sorted(range(len(need)), key=lambda j: (need[j], j)):
        extra = max(need[i] - minimum, 0)
        if extra <= left:
            given[i] += extra
            left -= extra
        elif minimum + left >= MIN_TIME_FRACTION * need[i]:
            given[i] += left
            left = 0
    return given


def budget_for(need: Sequence[int], cell: int, minimum: int) -> int:
    """The least `draw_budget` with which `allocate_draws` gives `cell` its whole need: every cell served
    before it (cheaper need, ties in grid order) gets its own, the rest `minimum`."""
    order = sorted(range(len(need)), key=lambda j: (need[j], j))
    served = order[: order.index(cell) + 1]
    return sum(max(need[j], minimum) for j in served) + minimum * (len(need) - len(served))


SOFT = ("ess", "plateau", "rhat", "nested_rhat")
"""Health checks a cell that ran its whole time fails for want of time: a longer cell (`relaxations`)
can pass them, where a diverged or drifting (`distance`) one needs other settings."""


ESS_MARGIN = 1.2
"""How much more time than the ESS shortfall alone (ESS grows about linearly with a settled chain's
length) the relaxations `shortfall` suggests gives: the ESS of the longer run is itself an estimate."""


def shortfall(
    labels: Sequence[str],
    need: Sequence[int],
    given: Sequence[int],
    problems: Sequence[str],
    minimum: int,
    *,
    timed: Sequence[bool] | None = None,
    ess: Sequence[float] | None = None,
    ess_needed: float | None = None,
    relaxations: float = RELAXATIONS,
) -> str:
    """What would let a cell count, when none did: the cells that ran their whole time and failed only for
    want of time (named with their first problem), and the cheapest cell the draw budget cut, with the
    `draw_budget` that gives it its time. Where a full-time cell failed on bulk ESS alone (`ess` below
    `ess_needed`), the `relaxations` that would reach it (ESS grows with the cell's time, which
    relaxations scales for the cells with a localization, `timed`) and the draw_budget that gives that
    cell the longer time. Empty when nothing applies."""
    parts = []
    soft = [
        i
        for i, p in enumerate(problems)
        if given[i] >= need[i]
        and p.strip()
        and all(line.split(":")[0] in SOFT for line in p.split("\n") if line)
    ]
    if soft:
        named = "; ".join(f"{labels[i]} ({problems[i].splitlines()[0]})" for i in soft[:3])
        parts.append(f"ran their whole time but for want of time failed: {named}")
        only_ess = [
            i
            for i in soft
            if ess is not None
            and timed is not None
            and timed[i]
            and ess[i] > 0
            and all(line.startswith("ess:") for line in problems[i].split("\n") if line)
        ]
        if only_ess and ess is not None and timed is not None and ess_needed:
            i = min(only_ess, key=lambda j: (need[j], j))
            factor = ESS_MARGIN * ess_needed / ess[i]
            longer = math.ceil(relaxations * factor - 1e-9)
            scaled = [
                math.ceil(n * longer / relaxations) if t else n for n, t in zip(need, timed, strict=True)
            ]
            parts.append(
                f"{labels[i]} reached bulk ESS {ess[i]:.0f} of {ess_needed:g}: relaxations={longer} (from "
                f"{relaxations:g}) with draw_budget={budget_for(scaled, i, minimum)} gives it the time"
            )
        else:
            parts.append(
                f"longer cells (relaxations=, now {relaxations:g}) with a draw_budget to match can pass"
            )
    short = [i for i in range(len(labels)) if given[i] < need[i]]
    if short:
        i = min(short, key=lambda j: (need[j], j))
        parts.append(
            f"the draw budget gave {labels[i]} {given[i]} of the {need[i]} draws its time needs: "
            f"draw_budget={budget_for(need, i, minimum)} gives it all"
        )
    return "; ".join(parts)


THRESHOLDS = Thresholds(
    rhat=1.1,
    ess_per_chain=25.0,
    bound_mcse=1e9,
    nested_rhat=1.1,
    geweke_z=1e9,
    plateau_tolerance=0.025,
    plateau_rise=math.inf,
    min_relaxations=0.0,
    distance_fails=True,
)
"""Health thresholds for calibration cells. R-hat (and nested R-hat) is held to the classic 1.1 (Gelman
et al., Bayesian Data Analysis, 3rd ed., sec. 11.4; diagnose() fails R-hat there too, and nested R-hat
at 1.01), and the bulk ESS to 25 per chain (100 for 4 chains) rather than diagnose()'s 50: enough to
tell the chains agree. Whether a cell has equilibrated is
the running-LLC plateau check: it measures the transient's share of the estimate itself, which is what
the rule needs, held to 2.5 % rather than diagnose()'s 5 %: the extrapolation multiplies a cell's error
by up to 1 + h / (h' - h) = 1.46 for half-decade steps, and the check sees only part of a slow transient
(the 4-3-5 regression at 2 time units: -4.6 % seen, -6.5 % against a 5x longer run). Geweke's test is
off (1e9): with no burn-in it flags any visible start-up of a single chain however small its share of the estimate (the deep linear
network's lr 1e-3 cells at localization 1: |z| 4.2 in one chain, transient share -4.6 %). The [0, d/2]
bound is off too: a large lr overshooting d/2 is the discretisation bias that the rule measures and
extrapolates away. diagnose()'s one-sided rise test and its minimum of relaxation times are off: the
rule keeps its own (cells run `RELAXATIONS`, a cut cell counts only above `MIN_TIME_FRACTION` of them and
when `settled`). The localization check (`distance`, from the distance that every cell records with
save_metrics="distance", judged for cells without localization) fails a cell here and is a warning in
diagnose()'s default: a cell whose chains keep moving away from the checkpoint samples an improper
posterior and is no candidate. save_metrics="distance" records no other metric, so the drift-vs-noise
and MALA checks do not run on the cells (with save_metrics=True given to calibrate(), every cell records
all of them and they keep diagnose()'s lines). A production run is diagnosed with the default
thresholds."""

PREFERENCE = ("localization", "llc_weight_decay", "noise_level")
"""Grid fields whose smaller values are preferred (they bias the estimate); the rest keep grid order."""


@dataclass
class Calibration:
    """The sweep (`table`: per cell LLC and health, over a `cell` dim with one coord per grid field), the
    chosen sample()/llc() keyword arguments (`best`, None when nothing qualified), the cells the choice
    rests on (`between`), the rule's LLC `estimate` (extrapolated when it can be) and why."""

    table: xr.Dataset
    best: dict[str, Any] | None
    between: list[str]
    reason: str
    confirmed: bool
    estimate: float
    extrapolate: list[dict[str, Any]] | None = None
    """When `estimate` is an extrapolation: the other fitted cells' {lr, num_draws}; `llc(**best,
    extrapolate=...)` reruns them and returns the same extrapolation as `llc_extrapolated`."""
    root: str = ""
    """Where the cells' stores are."""
    estimate_se: float = float("nan")
    """The standard error of `estimate` (over chains; through the line when extrapolated)."""
    estimate_z: float = 2.0
    """Standard errors either side of `estimate`'s 95 % interval: Student's t over the chains (3.18 for 4)."""

    @property
    def interval(self) -> tuple[float, float]:
        """`estimate` +- `estimate_z` standard errors: the 95 % interval `confirmed` is judged with."""
        half = self.estimate_z * self.estimate_se
        return self.estimate - half, self.estimate + half

    def __str__(self) -> str:
        return f"calibration: {self.reason}"


def cell_label(cell: Mapping[str, Any]) -> str:
    """'lr=0.001_localization=10': the store name of one cell."""
    return check_label(
        "_".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items())
    )


def grid_cells(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first field slowest; bad fields fail naming them."""
    if not grid:
        raise ValueError("grid: is empty; give at least lr, e.g. {'lr': [1e-5, 1e-4, 1e-3]}")
    if "lr" not in grid:
        raise ValueError("grid: must sweep lr (the rule looks for where the LLC is flat in lr)")
    for name, values in grid.items():
        if name not in SamplerConfig.model_fields or name in ("sampling_method_kwargs",):
            raise ValueError(f"grid: {name!r} is not a sampler setting; sweep e.g. lr, localization, n_beta")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid[{name!r}]: expected a non-empty list of values, got {values!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"grid[{name!r}]: has repeated values {list(values)}")
    cells = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    labels = [cell_label(c) for c in cells]
    if len(set(labels)) != len(labels):
        raise ValueError("grid: two values print the same (e.g. 1e-4 and 0.0001000001); use distinct values")
    return cells


def calibrate(
    model: Any,
    dataset: Any,
    observables: dict[str, Any],
    *,
    output_path: str | Path | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    tolerance: float = TOLERANCE,
    storage_options: dict[str, Any] | None = None,
    array_task: tuple[int, int] | None = None,
    run_settings: Mapping[str, Any] | None = None,
    scale_draws: bool = True,
    max_draws: int | None = None,
    relaxations: float = RELAXATIONS,
    lr_ceiling: float | None = CEILING,
    draw_budget: int | None = None,
    **sample_kwargs: Any,
) -> Calibration | None:
    """Run every grid cell as a multi-chain sample() into `<output_path>/<cell>.zarr` and choose.

    `grid` maps sampler settings to values (default DEFAULT_GRID); n_beta is as given, else devinterp's
    default_nbeta(batch_size). Other keyword arguments go to every sample() (num_chains, num_draws, ...).
    Every cell records its chains' distance from the checkpoint (save_metrics="distance", or all metrics
    with save_metrics=True) for the rule's localization check; `.best` leaves it out.
    With scale_draws (default) each cell runs a fixed Langevin time (`cell_draws`: `relaxations` times
    2 / localization, draws proportional to 1 / lr), at least num_draws and at most max_draws (default:
    no cap of its own), out of a total of `draw_budget` draws per chain over the grid (default
    DRAW_BUDGET_FACTOR x num_draws) given cheapest cell first (`allocate_draws`); `.best` carries the
    chosen cell's num_draws.
    lr_ceiling (default CEILING; None: off): the top eigenvalue lambda_max of the loss Hessian at the
    checkpoint is measured first (`checkpoint_curvature`, seconds) and grid lrs with lr x (n_beta
    lambda_max + localization) above the ceiling are dropped, the grid extended below to MIN_LRS lrs
    (`apply_ceiling`; what it did is in the table's attrs, the record and `.reason`).
    output_path None: a new temporary directory (logged, and in `.root`), for interactive use.
    Collective under torchrun; rank 0 returns the Calibration once every cell is complete, else None.
    """
    grid = dict(grid) if grid is not None else dict(DEFAULT_GRID)
    cells = grid_cells(grid)
    if lr_ceiling is not None and not lr_ceiling > 0:
        raise ValueError(f"lr_ceiling: must be > 0 (or None to keep every grid lr), got {lr_ceiling}")
    if output_path is None:
        output_path = temporary_root("calibration")
    common = dict(sample_kwargs)
    for name in grid:
        common.pop(name, None)
    top_lr = max(float(v) for v in grid["lr"])  # the grid as given: the ceiling does not shorten loc-0 cells
    ceiling = None
    if lr_ceiling is not None and "n_beta" not in grid:
        n_beta = sample_kwargs.get("n_beta") or default_nbeta(
            int(sample_kwargs.get("batch_size", 32)), int(sample_kwargs.get("gradient_accumulation_steps", 1))
        )
        lambda_max = checkpoint_curvature(
            model, dataset, sample_kwargs.get("loss_fn"), int(sample_kwargs.get("batch_size", 32))
        )
        locs = grid.get("localization", [sample_kwargs.get("localization", 0.0)])
        ceiling = apply_ceiling(grid["lr"], float(n_beta), lambda_max, locs, lr_ceiling)
        if ceiling.dropped:
            logger.info(
                "calibrate: loss curvature %.4g at the checkpoint; dropped lr %s (lr x n_beta x curvature > %g)%s",
                lambda_max,
                ", ".join(f"{lr:g} ({s:.2g})" for lr, s in ceiling.dropped.items()),
                lr_ceiling,
                f", added {', '.join(f'{lr:g}' for lr in ceiling.added)}" if ceiling.added else "",
            )
            grid["lr"] = list(ceiling.lrs)
            cells = grid_cells(grid)
    scaled = scale_draws and "num_draws" not in grid
    base = int(sample_kwargs.get("num_draws", SamplerConfig.model_fields["num_draws"].default))
    cap = int(max_draws) if max_draws is not None else 1 << 62
    if max_draws is not None and max_draws < base:
        raise ValueError(f"max_draws: must be >= num_draws ({base}), got {max_draws}")
    if scaled:
        common.pop("num_draws", None)
    # every cell records the distance for the localization check; all the metrics when asked for
    metrics = True if common.pop("save_metrics", False) is True else DISTANCE_ONLY
    if sample_kwargs.get("n_beta") is None and "n_beta" not in grid:
        common["n_beta"] = default_nbeta(
            int(sample_kwargs.get("batch_size", 32)), int(sample_kwargs.get("gradient_accumulation_steps", 1))
        )  # devinterp's b / log(b) for the effective batch b
    runs = []
    capped: list[str] = []  # cells the cap cut below MIN_TIME_FRACTION of their time: not counted
    cut: dict[str, float] = {}  # cells the cap cut above it: the fraction they ran; count only if settled
    steps_per_draw = int(sample_kwargs.get("num_steps_bw_draws", 1))
    locs = [float(c.get("localization", sample_kwargs.get("localization", 0.0))) for c in cells]
    need = [
        cell_draws(
            float(c["lr"]),
            loc,
            num_draws=base,
            max_draws=1 << 62,
            top_lr=top_lr,
            relaxations=relaxations,
            steps_per_draw=steps_per_draw,
        )
        for c, loc in zip(cells, locs)
    ]
    budget = int(draw_budget) if draw_budget is not None else DRAW_BUDGET_FACTOR * base
    given = allocate_draws([min(n, cap) for n in need], budget, base) if scaled else [base] * len(cells)
    for cell, draws, full in zip(cells, given, need):
        kwargs: dict[str, Any] = {**cell, "save_metrics": metrics}
        if scaled:
            kwargs["num_draws"] = draws
            if draws < MIN_TIME_FRACTION * full:
                capped.append(cell_label(cell))
            elif draws < full:
                cut[cell_label(cell)] = round(draws / full, 4)
        if run_settings is not None:  # the CLI: what `distinterp sample` of this cell records
            recorded = dict(run_settings)
            recorded["sampler"] = {
                **recorded["sampler"],
                **{k: v for k, v in kwargs.items() if k != "run_settings"},
                "n_beta": {**common, **cell}["n_beta"],
            }
            kwargs["run_settings"] = recorded
        runs.append(Run(cell_label(cell), model, kwargs))
    root = run_sweep(
        "calibration",
        runs,
        dataset,
        observables,
        output_path=str(output_path),
        storage_options=storage_options,
        array_task=array_task,
        common=common,
        extra={
            "grid": [[k, list(v)] for k, v in grid.items()],  # a list: JSON keeps its order
            **({"capped": capped} if capped else {}),
            **({"cut": cut} if cut else {}),
            **({"curvature": ceiling.record()} if ceiling is not None else {}),
        },
    )
    if not runtime().is_coordinator or not stores_complete(root, [r.label for r in runs]):
        return None
    needs = {r.label: min(n, cap) for r, n in zip(runs, need)} if scaled else None
    return choose_cell(
        root, tolerance=tolerance, common=common, need=needs, minimum=base, relaxations=relaxations
    )


def choose_cell(
    root: str | Location,
    *,
    storage_options: dict[str, Any] | None = None,
    tolerance: float = TOLERANCE,
    common: Mapping[str, Any] | None = None,
    allow_partial: bool = False,
    need: Mapping[str, int] | None = None,
    minimum: int | None = None,
    relaxations: float = RELAXATIONS,
) -> Calibration:
    """The table of a calibration root and the rule's choice (also for a root another job filled). `need`:
    each cell's draws for its whole time (calibrate() knows them): when no cell counts, the reason then
    says what would let one (`shortfall`)."""
    table = aggregate_sweep(
        root, storage_options=storage_options, allow_partial=allow_partial, thresholds=THRESHOLDS
    )
    if table.attrs.get("kind") != "calibration":
        raise ValueError(f"{root}: is a {table.attrs.get('kind')} root, not a calibration")
    from distinterp.jobs.sweep import read_record

    location = root if isinstance(root, Location) else Location(str(root), dict(storage_options or {}))
    record = read_record(location) or {}
    grid: dict[str, list[Any]] = dict(record["grid"])
    cells = grid_cells(grid)
    table = table.assign_coords({name: ("cell", [c[name] for c in cells]) for name in grid})
    assert list(table.cell.values) == [cell_label(c) for c in cells]
    others = [n for n in PREFERENCE if n in grid] + [n for n in grid if n != "lr" and n not in PREFERENCE]
    keys = [tuple(_rank(grid[n], c[n], n in PREFERENCE) for n in others) for c in cells]
    order = {k: i for i, k in enumerate(sorted(set(keys)))}
    healthy = table["healthy"].values if "healthy" in table else np.isfinite(table.llc_mean.values)
    growth = table["distance_growth"].values if "distance_growth" in table else np.full(len(cells), np.nan)
    held = np.asarray([localized(float(g), THRESHOLDS.distance_growth) for g in growth], dtype=bool)
    problems = [str(p) for p in table["problems"].values] if "problems" in table else [""] * len(cells)
    # equilibrated but for the localization check: the rule tells such a group apart in its reason
    healthy = np.asarray(healthy, dtype=bool) | (~held & np.asarray([_only_distance(p) for p in problems]))
    short = np.isin(table.cell.values, list(record.get("capped", [])))
    unsettled = np.isin(table.cell.values, [c for c in record.get("cut", {}) if not _settled(location, c)])
    table = table.assign(capped=("cell", short), unsettled=("cell", unsettled), localized=("cell", held))
    curvature = record.get("curvature")
    if curvature is not None:  # the lr ceiling: what it measured and which lrs it dropped or added
        table.attrs.update(
            lambda_max=curvature["lambda_max"],
            lr_ceiling=curvature["ceiling"],
            dropped_lr=[lr for lr, _ in curvature["dropped"]],
            dropped_stiffness=[s for _, s in curvature["dropped"]],
            added_lr=list(curvature["added"]),
        )
    chains = int(table.llc_per_chain.shape[1]) if "llc_per_chain" in table else 0
    picked: Choice = choose(
        [c["lr"] for c in cells],
        [order[k] for k in keys],
        table.llc_mean.values,
        table.llc_sem.values,
        np.asarray(healthy, dtype=bool) & ~short & ~unsettled,
        localized=held,
        tolerance=tolerance,
        chains=chains or None,
    )
    best = None
    own = record.get("runs", {})
    labels = [str(x) for x in table.cell.values]

    settings = dict(record.get("settings", {}) if common is None else common)
    shared_draws = settings.get("num_draws", SamplerConfig.model_fields["num_draws"].default)

    def draws(i: int) -> dict[str, Any]:
        return {"num_draws": int(own.get(labels[i], {}).get("num_draws", shared_draws))}

    extrapolate = None
    if picked.lr is not None:
        best = {
            **_sample_kwargs(settings),
            **cells[picked.cells[0]],
            "lr": picked.lr,
            **draws(picked.cells[0]),
        }
        if picked.extrapolated:
            extrapolate = [{"lr": float(cells[i]["lr"]), **draws(i)} for i in picked.cells[1:]]
    table = table.assign(num_draws=("cell", [draws(i)["num_draws"] for i in range(len(cells))]))
    between = [str(table.cell.values[i]) for i in picked.cells]
    reason = picked.reason
    if picked.lr is None and need is not None and minimum is not None:
        given = [draws(i)["num_draws"] for i in range(len(cells))]
        base_loc = float(settings.get("localization", 0.0))
        timed = [float(c.get("localization", base_loc)) > 0 for c in cells]
        hint = shortfall(
            labels,
            [need[x] for x in labels],
            given,
            problems,
            minimum,
            timed=timed,
            ess=[float(e) for e in table["ess_bulk"].values] if "ess_bulk" in table else None,
            ess_needed=THRESHOLDS.ess_per_chain * chains,
            relaxations=relaxations,
        )
        reason += f"; {hint}" if hint else ""
    if picked.not_localized:
        names = [
            ", ".join(f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(others, k))
            for k in sorted(set(keys))
        ]
        passed = [k for k, r in order.items() if r in picked.not_localized]
        reason += (
            "; not localized, passed over (distance from the checkpoint still growing, > {:g}): {}".format(
                THRESHOLDS.distance_growth,
                "; ".join(names[order[k]] for k in passed),
            )
        )
    if curvature is not None and curvature["dropped"]:
        reason += (
            f"; lr {', '.join(f'{lr:g}' for lr, _ in curvature['dropped'])} not run: lr x (n_beta x "
            f"{curvature['lambda_max']:.3g} + localization) = "
            f"{', '.join(f'{s:.2g}' for _, s in curvature['dropped'])} above {curvature['ceiling']:g}"
            + (
                f", lr {', '.join(f'{lr:g}' for lr in curvature['added'])} added"
                if curvature["added"]
                else ""
            )
        )
    table.attrs.update(
        estimate=picked.estimate,
        estimate_se=picked.estimate_se,
        estimate_z=picked.estimate_z,
        chosen_lr=picked.lr or float("nan"),
        between=between,
        reason=reason,
        confirmed=int(picked.confirmed),
    )
    return Calibration(
        table=table,
        best=best,
        between=between,
        reason=reason,
        confirmed=picked.confirmed,
        estimate=picked.estimate,
        extrapolate=extrapolate,
        root=str(location.url if hasattr(location, "url") else root),
        estimate_se=picked.estimate_se,
        estimate_z=picked.estimate_z,
    )


def _settled(root: Location, label: str) -> bool:
    """Whether the cut cell `label` shows a settled running LLC (`analyses.calibration.settled`), over the
    chains its diagnosis used."""
    checks = diagnose(open_tree(child(root, label)), thresholds=THRESHOLDS).checks
    used = np.isin(checks.chain.values, list(checks.attrs.get("chains_used", checks.chain.values)))
    p = running_llc_plateau(
        np.asarray(checks.loss_trace.values)[used],
        float(checks.init_loss),
        float(checks.n_beta),
        THRESHOLDS.plateau_tail,
    )
    return settled(p.transient, p.drift)


def _only_distance(problems: str) -> bool:
    """Whether a cell's only problem is the localization check (`distance: not localized ...`)."""
    lines = [line for line in problems.split("\n") if line.strip()]
    return bool(lines) and all(line.startswith("distance: not localized") for line in lines)


def _rank(values: list[Any], value: Any, ascending: bool) -> int:
    return sorted(values).index(value) if ascending else list(values).index(value)


def _sample_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the cells shared, as sample()/llc() keyword arguments (unset defaults left out)."""
    import inspect

    from distinterp.sampling import sample

    params = inspect.signature(sample).parameters
    return {
        k: v
        for k, v in settings.items()
        if k in params and not (params[k].default is not inspect.Parameter.empty and params[k].default == v)
    }


# ─── The runner: `distinterp calibrate CONFIG --grid sampler.lr=1e-5,1e-4` ──────────


class CalibrationSampler(SamplerConfig):
    """SamplerConfig with lr and n_beta optional: the grid sets lr, n_beta defaults to default_nbeta."""

    lr: NonNegativeFloat | None = None  # type: ignore[assignment]
    n_beta: NonNegativeFloat | None = None  # type: ignore[assignment]


class CalibrateSettings(SampleSettings):
    """A calibration job: SampleSettings (output_path = the root) plus the grid over sampler settings."""

    sampler: CalibrationSampler = Field(default_factory=CalibrationSampler)
    grid: dict[str, list[float]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRID.items()},
        description="sampler setting -> values; default lr x localization (DEFAULT_GRID)",
    )
    tolerance: float = Field(
        TOLERANCE, gt=0, description="how close the chosen lr's estimate and the extrapolation must be"
    )
    scale_draws: bool = Field(
        True,
        description="cells run a fixed Langevin time (draws ~ 1/lr, see cell_draws); False: num_draws each",
    )
    max_draws: int | None = Field(
        None, gt=0, description="cap on each cell's draws (default: none of its own)"
    )
    draw_budget: int | None = Field(
        None,
        gt=0,
        description="draws per chain over the whole grid (default 2000 x num_draws), cheapest cell first",
    )
    relaxations: float = Field(RELAXATIONS, gt=0, description="cell length in 2/localization time units")
    lr_ceiling: float | None = Field(
        CEILING,
        gt=0,
        description="drop grid lrs with lr x (n_beta x top loss curvature + localization) above this; null: off",
    )

    @model_validator(mode="after")
    def _calibration_only(self) -> CalibrateSettings:
        if self.chains is not None:
            raise ValueError("chains: a calibration splits its work by array_task, not chains; remove chains")
        grid_cells(self.grid)
        return self


def parse_grid(items: Sequence[str]) -> dict[str, list[float]]:
    """['sampler.lr=1e-5,1e-4'] -> {'lr': [1e-05, 0.0001]} (values parsed as YAML)."""
    grid: dict[str, list[float]] = {}
    for text in items:
        key, _, raw = text.partition("=")
        if not key.startswith("sampler.") or not raw:
            raise ValueError(f"--grid {text!r}: expected sampler.FIELD=V1,V2,..., e.g. sampler.lr=1e-5,1e-4")
        name = key.removeprefix("sampler.")
        grid[name] = [parse_override(f"v={v}")["v"] for v in raw.split(",")]
    return grid


def run_calibrate(settings: CalibrateSettings) -> Calibration | None:
    """The plain function behind `distinterp calibrate`."""
    common = sample_kwargs(settings, "calibrate")  # the one route: refuses before any work
    check_output_path(settings.output_path, storage_options=settings.storage_options)
    tokenizer = tokenizer_name(settings.model)  # text data: tokenized once, with the model's tokenizer
    data = load_dataset(settings.dataset, "dataset", tokenizer)
    model = load_model(settings.model, data, settings.dataset)
    observables = load_observables(settings, data, tokenizer, model)
    recorded = recorded_settings(settings, OWN["calibrate"])
    if settings.weight_restriction is not None:  # every cell samples the same weights
        common["param_masks"] = restriction_masks(model, settings.weight_restriction, "weight_restriction")
    return calibrate(
        model,
        data,
        observables,
        output_path=settings.output_path,
        grid=settings.grid,
        tolerance=settings.tolerance,
        scale_draws=settings.scale_draws,
        max_draws=settings.max_draws,
        draw_budget=settings.draw_budget,
        relaxations=settings.relaxations,
        lr_ceiling=settings.lr_ceiling,
        storage_options=settings.storage_options,
        array_task=settings.array_task.resolved(),
        run_settings=recorded,
        **common,
    )
