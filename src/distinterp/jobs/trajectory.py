"""trajectory(): the same estimate at many training checkpoints, one normal store per checkpoint.

Developmental interpretability reads the LLC over training; this runs it as one sharded, resumable
job instead of a loop of sample() calls (layout and work split: `distinterp.jobs.sweep`).
"""

from __future__ import annotations

import functools
import glob
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from distinterp.identity import recorded_settings
from distinterp.jobs.route import sample_kwargs
from distinterp.jobs.runner import check_output_path
from distinterp.jobs.settings import ModelSettings, SampleSettings
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
    Run,
    aggregate_sweep,
    check_label,
    run_sweep,
    stores_complete,
    temporary_root,
)
from distinterp.parallel.distributed import runtime

ANALYSES = ("llc",)
REVISIONED = ("hf", "transformer_lens")
"""Model sources whose `revision` names a checkpoint."""


def trajectory(
    checkpoints: Mapping[int | str, ModelOrLoader],
    dataset: Any,
    observables: dict[str, Any],
    *,
    output_path: str | Path | None = None,
    analyses: Sequence[str] = ("llc",),
    storage_options: dict[str, Any] | None = None,
    array_task: tuple[int, int] | None = None,
    weight_restriction: str | list[str] | None = None,
    **sample_kwargs: Any,
) -> xr.Dataset | None:
    """Sample every checkpoint into `<output_path>/<label>.zarr` and return the LLC over a `checkpoint` dim.

    `checkpoints` maps a label (usually the training step) to a model or a zero-argument loader, called
    when that checkpoint's turn comes so that only one is in memory. Each store equals a standalone
    `sample(model, dataset, observables, **sample_kwargs)`. `array_task=(i, n)`: this job runs block i
    of n of the (checkpoint, chain) list. Collective under torchrun; rank 0 returns the aggregate once
    every store is complete, other ranks and unfinished trajectories None. output_path None: a new
    temporary directory, logged (for interactive use). weight_restriction: a create_param_masks pattern
    resolved on each checkpoint (the refined LLC over training). A trajectory is a one-axis sweep (the
    same run_sweep / aggregate_sweep as `distinterp.sweep`), keeping its `<label>.zarr` names.
    """
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise ValueError(f"analyses: {unknown} are not trajectory analyses; choose from {list(ANALYSES)}")
    if not isinstance(checkpoints, Mapping) or not checkpoints:
        raise ValueError("checkpoints: expected a non-empty mapping of label -> model or loader")
    runs = [
        Run(check_label(label, "checkpoint label"), model, restriction=weight_restriction)
        for label, model in checkpoints.items()
    ]
    if output_path is None:
        output_path = temporary_root("trajectory")
    root = run_sweep(
        "trajectory",
        runs,
        dataset,
        observables,
        output_path=str(output_path),
        storage_options=storage_options,
        array_task=array_task,
        common=sample_kwargs,
    )
    if not runtime().is_coordinator or not stores_complete(root, [r.label for r in runs]):
        return None
    return aggregate_sweep(root)


# ─── The runner: `distinterp trajectory CONFIG` ──────────────────────────────


class CheckpointSettings(BaseModel):
    """Which checkpoints a trajectory samples: exactly one of revisions, paths or state_dicts.

    Globs expand in natural order (step200 before step1000); labels default to the revision, the
    directory's name or the file's stem.
    """

    model_config = ConfigDict(extra="forbid")

    revisions: list[str] | None = Field(
        None, description="revisions of model.name (HF hub or a local repo), e.g. Pythia's step1000"
    )
    paths: str | list[str] | None = Field(None, description="HF model directories: a glob or a list")
    state_dicts: str | list[str] | None = Field(
        None, description="state-dict files (a glob or a list) loaded into `model`'s architecture"
    )
    labels: list[str] | None = Field(None, description="one label per checkpoint, in order")

    @model_validator(mode="after")
    def _one_source(self) -> CheckpointSettings:
        given = [n for n in ("revisions", "paths", "state_dicts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of revisions, paths, state_dicts (got {given or 'none'})")
        return self

    def models(self, base: ModelSettings) -> dict[str, ModelSettings]:
        """label -> the ModelSettings of that checkpoint (base with its revision, directory or weights)."""
        if self.revisions is not None:
            names, specs = self.revisions, [base.model_copy(update={"revision": r}) for r in self.revisions]
        else:
            files = _expand(self.paths if self.paths is not None else self.state_dicts)
            if self.paths is not None:
                names = [Path(f).name for f in files]
                specs = [base.model_copy(update={"source": "hf", "name": f}) for f in files]
            else:
                names = [Path(f).stem for f in files]
                specs = [base.model_copy(update={"state_dict": f}) for f in files]
        labels = self.labels if self.labels is not None else names
        if len(labels) != len(specs):
            raise ValueError(f"checkpoints.labels: {len(labels)} labels for {len(specs)} checkpoints")
        return {check_label(label, "checkpoints label"): spec for label, spec in zip(labels, specs)}


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _expand(pattern: str | list[str] | None) -> list[str]:
    """A glob (natural order) or an explicit list of paths, each checked to exist."""
    if isinstance(pattern, list):
        missing = [p for p in pattern if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"checkpoints: {missing} do not exist")
        return pattern
    found = sorted(glob.glob(str(pattern)), key=_natural)
    if not found:
        raise FileNotFoundError(f"checkpoints: the glob {pattern!r} matches nothing")
    return found


class TrajectorySettings(SampleSettings):
    """A trajectory job: SampleSettings (model = the base/architecture, output_path = the root) plus the
    checkpoints. Array tasks take blocks of the (checkpoint, chain) list."""

    checkpoints: CheckpointSettings

    @model_validator(mode="after")
    def _trajectory_only(self) -> TrajectorySettings:
        if self.chains is not None:
            raise ValueError("chains: a trajectory splits its work by array_task, not chains; remove chains")
        if self.checkpoints.revisions is not None and self.model.source not in REVISIONED:
            raise ValueError(
                f"checkpoints.revisions: model.source={self.model.source!r} has no revisions (every checkpoint "
                f"would be the same model); use model.source hf or transformer_lens, or checkpoints.paths / "
                "checkpoints.state_dicts"
            )
        return self


def run_trajectory(settings: TrajectorySettings) -> xr.Dataset | None:
    """The plain function behind `distinterp trajectory`: data once, each checkpoint loaded in its turn."""
    common = sample_kwargs(settings, "trajectory")  # the one route: refuses before any work
    check_output_path(settings.output_path, storage_options=settings.storage_options)
    tokenizer = tokenizer_name(settings.model)  # text data: tokenized once, with the model's tokenizer
    data = load_dataset(settings.dataset, "dataset", tokenizer)
    observables = load_observables(settings, data, tokenizer)
    specs = settings.checkpoints.models(settings.model)
    arch = architecture(settings.model, data, settings.dataset) if settings.checkpoints.state_dicts else None
    for label, spec in specs.items():  # every checkpoint, before any work (not one failure per rerun)
        check_checkpoint(spec, arch, f"checkpoints {label!r}")
    del arch
    shared = recorded_settings(settings, frozenset({"checkpoints"}))
    runs = [
        Run(
            label,
            functools.partial(load_model, spec, data, settings.dataset),
            # what `distinterp sample` of this checkpoint records (same keys, same order): --from-store works
            {"run_settings": {**shared, "model": spec.model_dump(mode="json")}},
            checkpoint=label,
            restriction=settings.weight_restriction,  # resolved on each checkpoint as it is loaded
        )
        for label, spec in specs.items()
    ]
    root = run_sweep(
        "trajectory",
        runs,
        data,
        observables,
        output_path=settings.output_path,
        storage_options=settings.storage_options,
        array_task=settings.array_task.resolved(),
        common=common,
        extra={"checkpoints": {label: spec.model_dump(mode="json") for label, spec in specs.items()}},
    )
    if not runtime().is_coordinator or not stores_complete(root, list(specs)):
        return None
    return aggregate_sweep(root)
