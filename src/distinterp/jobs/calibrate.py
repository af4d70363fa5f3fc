"""calibrate(): which lr / localization to use, decided by a grid of short runs and a documented rule.

Every cell of the grid is a normal store under the root (`<root>/lr=0.001_localization=10.zarr`),
spread over ranks and array tasks and resumable like a trajectory (`distinterp.jobs.sweep`); the choice
is `distinterp.analyses.calibration.choose`, whose docstring states the rule and its limits.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, NonNegativeFloat, model_validator

from distinterp.analyses.calibration import TOLERANCE, Choice, choose
from distinterp.analyses.diagnostics import Thresholds
from distinterp.config import SamplerConfig, default_nbeta
from distinterp.identity import recorded_settings
from distinterp.jobs.route import sample_kwargs
from distinterp.jobs.runner import check_output_path
from distinterp.jobs.settings import SampleSettings, parse_override
from distinterp.jobs.sources import load_dataset, load_model, load_observables, tokenizer_name
from distinterp.jobs.sweep import Run, aggregate_sweep, check_label, run_sweep, stores_complete
from distinterp.parallel.distributed import runtime
from distinterp.store import Location

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "lr": (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "localization": (0.0, 10.0, 100.0),
}
"""The sweep when none is given: lr from 1e-6 to 3e-2 in half-decade steps, localization none to strong."""

THRESHOLDS = Thresholds(rhat=1.1, ess_per_chain=25.0, bound_mcse=1e9)
"""Health thresholds for calibration cells. The runs are short on purpose, so R-hat is held to the
classic 1.1 (Gelman et al., Bayesian Data Analysis, 3rd ed., sec. 11.4) rather than 1.01, and the bulk
ESS to 25 per chain (100 for 4 chains) rather than 100: enough to tell an equilibrated cell from one
still in its transient. The [0, d/2] bound is effectively off (1e9 standard errors): a large lr overshooting d/2 is the
discretisation bias that the rule measures and extrapolates away. A production run is diagnosed with
the default thresholds."""

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
    output_path: str | Path,
    grid: Mapping[str, Sequence[Any]] | None = None,
    tolerance: float = TOLERANCE,
    storage_options: dict[str, Any] | None = None,
    array_task: tuple[int, int] | None = None,
    run_settings: Mapping[str, Any] | None = None,
    **sample_kwargs: Any,
) -> Calibration | None:
    """Run every grid cell as a short multi-chain sample() into `<output_path>/<cell>.zarr` and choose.

    `grid` maps sampler settings to values (default DEFAULT_GRID); n_beta is as given, else devinterp's
    default_nbeta(batch_size). Other keyword arguments go to every sample() (num_chains, num_draws, ...).
    Collective under torchrun; rank 0 returns the Calibration once every cell is complete, else None.
    """
    grid = dict(grid) if grid is not None else dict(DEFAULT_GRID)
    cells = grid_cells(grid)
    common = dict(sample_kwargs)
    for name in grid:
        common.pop(name, None)
    if sample_kwargs.get("n_beta") is None and "n_beta" not in grid:
        common["n_beta"] = default_nbeta(
            int(sample_kwargs.get("batch_size", 32)), int(sample_kwargs.get("gradient_accumulation_steps", 1))
        )  # devinterp's b / log(b) for the effective batch b
    runs = []
    for cell in cells:
        kwargs: dict[str, Any] = dict(cell)
        if run_settings is not None:  # the CLI: what `distinterp sample` of this cell records
            recorded = dict(run_settings)
            recorded["sampler"] = {**recorded["sampler"], **cell, "n_beta": {**common, **cell}["n_beta"]}
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
        extra={"grid": [[k, list(v)] for k, v in grid.items()]},  # a list: JSON keeps its order
    )
    if not runtime().is_coordinator or not stores_complete(root, [r.label for r in runs]):
        return None
    return choose_cell(root, tolerance=tolerance, common=common)


def choose_cell(
    root: str | Location,
    *,
    storage_options: dict[str, Any] | None = None,
    tolerance: float = TOLERANCE,
    common: Mapping[str, Any] | None = None,
    allow_partial: bool = False,
) -> Calibration:
    """The table of a calibration root and the rule's choice (also for a root another job filled)."""
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
    picked: Choice = choose(
        [c["lr"] for c in cells],
        [order[k] for k in keys],
        table.llc_mean.values,
        table.llc_sem.values,
        healthy,
        tolerance=tolerance,
    )
    best = None
    if picked.lr is not None:
        settings = dict(record.get("settings", {}) if common is None else common)
        best = {**_sample_kwargs(settings), **cells[picked.cells[0]], "lr": picked.lr}
    between = [str(table.cell.values[i]) for i in picked.cells]
    table.attrs.update(
        estimate=picked.estimate,
        chosen_lr=picked.lr or float("nan"),
        between=between,
        reason=picked.reason,
        confirmed=int(picked.confirmed),
    )
    return Calibration(
        table=table,
        best=best,
        between=between,
        reason=picked.reason,
        confirmed=picked.confirmed,
        estimate=picked.estimate,
    )


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

    sampler: CalibrationSampler = Field(default_factory=CalibrationSampler)  # type: ignore[assignment]
    grid: dict[str, list[float]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRID.items()},
        description="sampler setting -> values; default lr x localization (DEFAULT_GRID)",
    )
    tolerance: float = Field(TOLERANCE, gt=0, description="how flat in lr counts as flat (relative)")

    @model_validator(mode="after")
    def _calibration_only(self) -> CalibrateSettings:
        if self.chains is not None:
            raise ValueError("chains: a calibration splits its work by array_task, not chains; remove chains")
        if self.weight_restriction is not None:
            raise ValueError("weight_restriction: not supported for calibration yet; remove it")
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
    recorded = recorded_settings(settings, frozenset({"grid", "tolerance"}))
    return calibrate(
        model,
        data,
        observables,
        output_path=settings.output_path,
        grid=settings.grid,
        tolerance=settings.tolerance,
        storage_options=settings.storage_options,
        array_task=settings.array_task.resolved(),
        run_settings=recorded,
        **common,
    )
