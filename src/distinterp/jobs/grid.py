"""sweep(): a grid of experiments (checkpoints x weight restrictions x datasets x sampler settings) as one
sharded, resumable job; every cell is a normal store, equal to a standalone sample() of it.

The refined LLC of every head at every checkpoint (Wang et al. 2024) is
`sweep(checkpoints, data, restrictions={"l{L}h{H}": "l{L}h{H}"}, ...)`. The work (flattened (cell,
chain) pairs), the root's record, resume and aggregation are `distinterp.jobs.sweep`'s.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import xarray as xr
from pydantic import Field, model_validator

from distinterp.analyses.grid import bif_summaries, susceptibility_table
from distinterp.config import SamplerConfig
from distinterp.data import fingerprint, input_ids_tensor
from distinterp.identity import recorded_settings
from distinterp.jobs.route import OWN, sample_kwargs
from distinterp.jobs.runner import check_output_path
from distinterp.jobs.settings import DatasetSettings, ModelSettings, SampleSettings
from distinterp.jobs.sources import (
    architecture,
    check_checkpoint,
    load_dataset,
    load_model,
    load_observables,
    tokenizer_name,
)
from distinterp.jobs.sweep import (
    ModelOrLoader,
    Models,
    Run,
    aggregate_sweep,
    check_label,
    read_record,
    restriction_masks,
    run_sweep,
    sample_arguments,
    stores_complete,
    temporary_root,
)
from distinterp.jobs.trajectory import REVISIONED, CheckpointSettings
from distinterp.parallel.distributed import runtime
from distinterp.store import Location

KIND = "sweep"
AXES = ("checkpoint", "restriction", "dataset")
"""The axes every grid has (size 1 when not given), before the sampler-settings grid's fields."""
ALL = "all"
"""The restriction axis's one value when no restrictions are given: every weight."""
DEFAULT_DATASET = "default"
"""The dataset axis's one value when no datasets are given: `dataset`."""
PLACEHOLDERS = {"L": "layer", "H": "head", "G": "key/value group"}
"""Generator placeholders in a restriction's name and pattern: `{"l{L}h{H}": "l{L}h{H}"}` is every head."""

GridAnalysisName = Literal["llc", "bif", "susceptibilities"]
GridAnalysis = Callable[[Location, xr.Dataset], xr.Dataset]
"""An analysis of a finished grid: (root, the LLC table) -> variables to merge into the table."""
ANALYSES: dict[str, GridAnalysis | None] = {
    "llc": None,
    "bif": bif_summaries,
    "susceptibilities": susceptibility_table,
}
"""Per-cell analyses sweep() can be asked for: "llc" is the aggregate itself; the others are a GridAnalysis
run on the finished grid and merged into its table."""


def grid_analysis(name: str) -> GridAnalysis | None:
    """The GridAnalysis that `analyses=` entry names (None for "llc"); an unknown name is refused."""
    if name not in ANALYSES:
        raise ValueError(f"analyses: {name!r} is not a grid analysis; choose from {sorted(ANALYSES)}")
    return ANALYSES[name]


def value_text(value: Any) -> str:
    """A grid value as it appears in a store's name: floats compactly (0.001, 1e-05), others as str."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_label(coords: Mapping[str, Any]) -> str:
    """'checkpoint=100+restriction=l0h1+lr=0.001': the store name of one cell (its given axes)."""
    return check_label("+".join(f"{axis}={value_text(v)}" for axis, v in coords.items()), "cell")


def expand_restrictions(
    restrictions: Mapping[str, Any], model: Callable[[], torch.nn.Module]
) -> dict[str, str | list[str] | None]:
    """Name -> create_param_masks pattern, with every generator expanded: a name holding {L} (layer),
    {H} (head) or {G} (key/value group) becomes one entry per layer / head / group of the model (the
    pattern, with the same placeholders, is filled the same way). `model` is called only for a generator."""
    out: dict[str, str | list[str] | None] = {}
    for name, pattern in restrictions.items():
        if not isinstance(name, str):
            raise ValueError(f"restrictions: names must be str, got {name!r}")
        fields = set(re.findall(r"\{(\w+)\}", name))
        unknown = sorted(fields - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(
                f"restrictions[{name!r}]: unknown placeholder(s) {unknown}; use {{L}} (layer), {{H}} (head) "
                "or {G} (key/value group)"
            )
        if not fields:
            out[name] = _pattern(name, pattern)
            continue
        if "H" in fields and "G" in fields:
            raise ValueError(f"restrictions[{name!r}]: use {{H}} or {{G}}, not both")
        if not isinstance(pattern, str) or not fields <= set(re.findall(r"\{(\w+)\}", pattern)):
            raise ValueError(
                f"restrictions[{name!r}]: a generator's pattern must be a str with the same placeholders, "
                f"e.g. {{'l{{L}}h{{H}}': 'l{{L}}h{{H}}'}}; got {pattern!r}"
            )
        for values in _generate(model(), fields):
            out[name.format(**values)] = pattern.format(**values)
    return out


def _expand_once(
    restrictions: Mapping[str, Any], models: Models, first: Run, root: Location
) -> dict[str, Any]:
    """expand_restrictions on rank 0, every pattern checked on the first checkpoint (loaded once, for
    the generators' layout too), its answer or its error on every rank; not when the root already records
    these restrictions' expansion (a rerun of a finished grid loads nothing)."""
    rt = runtime()
    out: dict[str, Any] | None = None
    error: BaseException | None = None
    if rt.is_coordinator:
        try:
            stored = read_record(root) or {}
            if stored.get("generators") == _json(restrictions) and "restrictions" in stored:
                out = dict(stored["restrictions"])
            else:
                out = expand_restrictions(restrictions, lambda: models.get(first))
                for name, pattern in out.items():  # a bad pattern fails now, not after cells have run
                    if pattern is not None:
                        restriction_masks(models.get(first), pattern, f"restrictions[{name!r}]")
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    out, error = rt.broadcast((out, error))
    if error is not None:
        raise error
    assert out is not None
    return out


def _json(value: Any) -> Any:
    """The JSON form of a value (as the record holds it); repr for what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return repr(value)


def _pattern(name: str, pattern: Any) -> str | list[str] | None:
    """A plain restriction's pattern: None (every weight), a str or a list of str."""
    if pattern is None or isinstance(pattern, str):
        return pattern
    if isinstance(pattern, (list, tuple)) and pattern and all(isinstance(p, str) for p in pattern):
        return list(pattern)
    raise ValueError(
        f"restrictions[{name!r}]: expected a create_param_masks pattern (a str or a list of str) or None "
        f"(every weight), got {pattern!r}"
    )


def _generate(model: torch.nn.Module, fields: set[str]) -> list[dict[str, int]]:
    """Every (layer, head or group) of the model that the placeholders range over, layer slowest."""
    from distinterp.masks import count_layers, head_counts, structure_for

    structure = structure_for(model)
    layers = count_layers(dict(model.named_parameters()), structure)
    out: list[dict[str, int]] = []
    for layer in range(layers):
        if not fields & {"H", "G"}:
            out.append({"L": layer})
            continue
        n_heads, n_kv = head_counts(model, structure, layer)
        key, count = ("H", n_heads) if "H" in fields else ("G", n_kv)
        out += [{"L": layer, key: i} for i in range(count)]
    return out


def _checkpoints(checkpoints: Any) -> dict[str, ModelOrLoader]:
    """label -> model or loader; a bare model (or loader) is one checkpoint named 'model'."""
    if isinstance(checkpoints, torch.nn.Module) or (
        callable(checkpoints) and not isinstance(checkpoints, Mapping)
    ):
        return {"model": checkpoints}
    if not isinstance(checkpoints, Mapping) or not checkpoints:
        raise ValueError("checkpoints: expected a model, or a non-empty mapping of label -> model or loader")
    return {check_label(label, "checkpoint label"): m for label, m in checkpoints.items()}


def _grid(grid: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Any]]:
    """The sampler-settings grid, each field a sample() argument with distinct values."""
    if grid is None:
        return {}
    out: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if name in AXES or name in ("param_masks", "dataset", "observables"):
            raise ValueError(f"grid: {name!r} is an axis of its own; sweep it with {name}s=")
        sample_arguments({name: None}, "sweep grid")  # unknown or sweep-owned names fail, naming them
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid[{name!r}]: expected a non-empty list of values, got {values!r}")
        if len({value_text(v) for v in values}) != len(values):
            raise ValueError(f"grid[{name!r}]: has repeated values {list(values)}")
        out[name] = list(values)
    return out


def sweep(
    checkpoints: Mapping[int | str, ModelOrLoader] | ModelOrLoader,
    dataset: Any,
    observables: dict[str, Any] | None = None,
    *,
    output_path: str | Path | None = None,
    restrictions: Mapping[str, Any] | None = None,
    datasets: Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    analyses: Sequence[str] = ("llc",),
    storage_options: dict[str, Any] | None = None,
    array_task: tuple[int, int] | None = None,
    run_settings: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None,
    **sample_kwargs: Any,
) -> xr.Dataset | None:
    """Sample every cell of checkpoints x restrictions x datasets x grid into `<output_path>/<cell>.zarr`
    and return the aggregate with one dim per axis (`checkpoint`, `restriction`, `dataset`, grid fields).

    `checkpoints` maps a label to a model or a zero-argument loader (a bare model is one checkpoint,
    'model'); each is loaded once per rank, and never for cells that are complete. `restrictions` maps a
    name to a create_param_masks pattern (None: every weight) or is a generator such as
    `{"l{L}h{H}": "l{L}h{H}"}` (every head; the first checkpoint gives the layout). `datasets` maps a name
    to the data that cell samples on (default: `dataset`). `grid` maps sample() arguments to values.
    Other keyword arguments go to every sample(). A cell's store is named by the axes given, e.g.
    `checkpoint=100+restriction=l0h1+lr=0.001.zarr`, and equals the standalone sample() of that cell.
    Collective under torchrun (`array_task=(i, n)`: block i of n of the (cell, chain) list); rank 0
    returns the aggregate once every cell is complete, other ranks and unfinished grids None.
    `run_settings(coords, pattern)`: the provenance a cell's store records (the CLI's settings).
    """
    fns = {name: grid_analysis(name) for name in analyses}
    points = _checkpoints(checkpoints)
    if dataset is None:
        raise ValueError("dataset: is None; give the data the cells sample on")
    data = {DEFAULT_DATASET: dataset} if datasets is None else dict(datasets)
    if not data:
        raise ValueError("datasets: is empty; give None to sample every cell on `dataset`")
    for name in data:
        check_label(name, "dataset name")
    models = Models(KIND)
    first = next(iter(points.values()))
    first_run = Run(next(iter(points)), first)
    if output_path is None:
        output_path = temporary_root(KIND)
    root = Location(str(output_path), dict(storage_options or {}))
    restricted = {ALL: None} if restrictions is None else _expand_once(restrictions, models, first_run, root)
    if "susceptibilities" in analyses:  # its baseline checked before any work, not after the sampling
        from distinterp.analyses.grid import check_baseline

        check_baseline(None if restrictions is None else restricted)
    for name in restricted:
        check_label(name, "restriction name")
    fields = _grid(grid)
    common = {k: v for k, v in sample_kwargs.items() if k not in fields}
    axes: list[tuple[str, list[Any]]] = [
        ("checkpoint", list(points)),
        ("restriction", list(restricted)),
        ("dataset", list(data)),
        *fields.items(),
    ]
    named = {"checkpoint"} | ({"restriction"} if restrictions is not None else set())
    named |= ({"dataset"} if datasets is not None else set()) | set(fields)
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        coords = dict(zip((n for n, _ in axes), values))
        kwargs = {k: coords[k] for k in fields}
        if run_settings is not None:
            kwargs["run_settings"] = run_settings(coords, restricted[coords["restriction"]])
        runs.append(
            Run(
                cell_label({k: v for k, v in coords.items() if k in named}),
                points[coords["checkpoint"]],
                kwargs,
                checkpoint=coords["checkpoint"],
                restriction=restricted[coords["restriction"]],
                dataset=None if datasets is None else data[coords["dataset"]],
            )
        )
    extra = {
        "restrictions": restricted,
        "generators": None if restrictions is None else _json(restrictions),
        "datasets": {
            name: fingerprint(input_ids_tensor(d, f"datasets[{name!r}]")) for name, d in data.items()
        },
    }
    run_sweep(
        KIND,
        runs,
        dataset,
        observables or {},
        output_path=str(output_path),
        storage_options=root.storage_options,
        array_task=array_task,
        common=common,
        extra=extra,
        axes=axes,
        models=models,
    )
    if not runtime().is_coordinator or not stores_complete(root, [r.label for r in runs]):
        return None
    table = aggregate_sweep(root)
    for fn in fns.values():
        if fn is not None:
            table = table.merge(fn(root, table))
    return table


# ─── The runner: `distinterp sweep CONFIG` ───────────────────────────────────


class SweepSettings(SampleSettings):
    """A grid job: SampleSettings (model = the checkpoint, or the architecture of `checkpoints`;
    output_path = the root; sampler = every cell's settings, the grid's fields replaced per cell) plus
    the axes. Array tasks take blocks of the (cell, chain) list."""

    checkpoints: CheckpointSettings | None = Field(
        None, description="the checkpoints axis (as a trajectory takes them); None: `model` alone"
    )
    restrictions: dict[str, str | list[str] | None] | None = Field(
        None,
        description="name -> create_param_masks pattern (None: every weight); a name with {L}/{H}/{G} "
        "generates one per layer/head/group, e.g. {'l{L}h{H}': 'l{L}h{H}'}",
    )
    datasets: dict[str, DatasetSettings] | None = Field(
        None, description="name -> the data its cells sample on (default: `dataset`)"
    )
    grid: dict[str, list[Any]] | None = Field(
        None, description="sampler setting -> values, e.g. {lr: [1e-4, 1e-3]}: one axis each"
    )
    analyses: list[GridAnalysisName] = Field(  # type: ignore[assignment]
        default_factory=lambda: list[GridAnalysisName](["llc"]),
        description="per-cell analyses aggregated on rank 0",
    )

    @model_validator(mode="after")
    def _sweep_only(self) -> SweepSettings:
        for name in self.grid or {}:
            if name not in SamplerConfig.model_fields or name == "sampling_method_kwargs":
                raise ValueError(
                    f"grid: {name!r} is not a sampler setting; sweep e.g. lr, localization, n_beta"
                )
        _grid(self.grid)
        revisions = self.checkpoints is not None and self.checkpoints.revisions is not None
        if revisions and self.model.source not in REVISIONED:
            raise ValueError(
                f"checkpoints.revisions: model.source={self.model.source!r} has no revisions; use model.source "
                "hf or transformer_lens, or checkpoints.paths / checkpoints.state_dicts"
            )
        for name in self.datasets or {}:
            check_label(name, "datasets name")
        return self


def run_grid(settings: SweepSettings) -> xr.Dataset | None:
    """The plain function behind `distinterp sweep`: data once, each checkpoint loaded in its turn, once
    per rank; every cell's store records what `distinterp sample` of that cell would."""
    common = sample_kwargs(settings, "sweep")  # the one route: refuses before any work
    check_output_path(settings.output_path, storage_options=settings.storage_options)
    tokenizer = tokenizer_name(settings.model)
    data = load_dataset(settings.dataset, "dataset", tokenizer)
    observables = load_observables(settings, data, tokenizer)
    extra = {
        name: load_dataset(spec, f"datasets.{name}", tokenizer)
        for name, spec in (settings.datasets or {}).items()
    }
    if settings.checkpoints is None:
        specs = {"model": settings.model}
    else:
        specs = settings.checkpoints.models(settings.model)
        arch = (
            architecture(settings.model, data, settings.dataset) if settings.checkpoints.state_dicts else None
        )
        for label, spec in specs.items():  # every checkpoint, before any work
            check_checkpoint(spec, arch, f"checkpoints {label!r}")
        del arch
    shared = recorded_settings(settings, OWN["sweep"])

    def recorded(coords: Mapping[str, Any], pattern: Any) -> dict[str, Any]:
        """What `distinterp sample` of this cell records (so --from-store reruns the cell alone)."""
        out = {**shared, "model": specs[coords["checkpoint"]].model_dump(mode="json")}
        out["sampler"] = {
            **shared["sampler"],
            **{k: v for k, v in coords.items() if k in (settings.grid or {})},
        }
        out["weight_restriction"] = pattern
        if settings.datasets is not None:
            out["dataset"] = settings.datasets[coords["dataset"]].model_dump(mode="json")
        return out

    def loader(spec: ModelSettings) -> Callable[[], torch.nn.Module]:
        return lambda: load_model(spec, data, settings.dataset)

    return sweep(
        {label: loader(spec) for label, spec in specs.items()},
        data,
        observables,
        output_path=settings.output_path,
        restrictions=settings.restrictions,
        datasets=extra if settings.datasets is not None else None,
        grid=settings.grid,
        analyses=settings.analyses,
        storage_options=settings.storage_options,
        array_task=settings.array_task.resolved(),
        run_settings=recorded,
        **common,
    )
