"""The one route from job settings to sample(): every settings field of every job is routed into sample()'s
arguments, used by the runner, or refused by name; run identity is defined once (distinterp.identity)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel

from distinterp.config import SamplerConfig
from distinterp.identity import HOW, INPUTS, NOT_IDENTITY, RUN_SPECIFIC, WHERE
from distinterp.jobs.calibrate import CalibrateSettings
from distinterp.jobs.grid import SweepSettings
from distinterp.jobs.route import (
    JOBS,
    OTHER_COMMANDS,
    OWN,
    REFUSED,
    ROUTED,
    RUNNER,
    SWEEPS,
    RouteError,
    sample_kwargs,
)
from distinterp.jobs.settings import ParallelSettings, SampleSettings
from distinterp.jobs.trajectory import TrajectorySettings
from distinterp.sampling import sample

BASE = {"sampler": {"lr": 1e-3, "n_beta": 10.0}, "output_path": "/tmp/route-test.zarr"}


def settings_of(job: str) -> SampleSettings:
    """The smallest valid settings of a job."""
    if job == "trajectory":
        return TrajectorySettings(**BASE, checkpoints={"state_dicts": ["a.pt"]})
    if job == "calibrate":
        return CalibrateSettings(output_path=BASE["output_path"], grid={"lr": [1e-4, 1e-3]})
    if job == "sweep":
        return SweepSettings(**BASE, restrictions={"l{L}h{H}": "l{L}h{H}"}, grid={"localization": [0.0, 1.0]})
    return SampleSettings(**BASE)


def other_value(field: str, value: Any) -> Any:
    """A valid value of a routed field that differs from `value`."""
    special = {
        "sampling_method": "sgmcmc_mala",
        "epoch_mode": "once",
        "noise": "blocked",
        "device": "cpu",
        "bounding_box_size": 2.0,
        "init_noise": 0.5,
        "sampling_method_kwargs": {"eps": 1e-5},
    }
    if field in special:
        return special[field]
    if isinstance(value, bool):
        return not value
    if value is None or isinstance(value, (int, float)):
        return (value or 0) + 2
    raise AssertionError(f"no test value for {field}={value!r}")


@pytest.mark.parametrize("job", JOBS)
def test_every_top_level_setting_has_one_road(job):
    """A new setting must be routed, used by the runner, a job's own section or another command's."""
    fields = set(type(settings_of(job)).model_fields)
    known = ROUTED | RUNNER | OWN.get(job, frozenset()) | OTHER_COMMANDS
    assert fields <= known, f"{job}: settings nobody honours: {sorted(fields - known)}"
    for name in REFUSED.get(job, {}):
        assert name.split(".")[0] in fields


ROUTED_LEAVES = [("sampler", f) for f in SamplerConfig.model_fields] + [
    ("parallel", f) for f in ParallelSettings.model_fields
]
ROUTED_LEAVES += [(None, f) for f in ("batches_per_draw", "obs_seed", "device", "checkpoint_every")]
KWARG = {"fsdp_size": "fsdp_size", "chains_per_batch": "chains_per_batch", "noise": "noise"}


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize(("section", "field"), ROUTED_LEAVES)
def test_every_routed_field_reaches_sample_in_every_job(job, section, field):
    """Set each routed field to another value: that value is sample()'s argument of the same name, for
    every job (a trajectory's parallel.fsdp_size included: never dropped)."""
    settings = settings_of(job)
    part: BaseModel = getattr(settings, section) if section else settings
    value = other_value(field, getattr(part, field))
    if section:
        settings = settings.model_copy(update={section: part.model_copy(update={field: value})})
    else:
        settings = settings.model_copy(update={field: value})
    kwargs = sample_kwargs(settings, job)
    assert kwargs[KWARG.get(field, field)] == value
    assert set(kwargs) <= set(inspect.signature(sample).parameters)


@pytest.mark.parametrize("job", JOBS)
def test_where_settings_reach_single_store_jobs_and_sweeps_set_their_own(job):
    settings = settings_of(job).model_copy(update={"storage_options": {"anon": True}})
    kwargs = sample_kwargs(settings, job)
    if job in SWEEPS:
        assert not set(kwargs) & (WHERE | {"run_settings"})  # the sweep sets them per store
    else:
        assert kwargs["output_path"] == settings.output_path
        assert kwargs["storage_options"] == {"anon": True}
        assert "storage_options" not in kwargs["run_settings"]  # credentials are never recorded


@pytest.mark.parametrize(
    ("job", "update", "name"),
    [
        (job, update, name)
        for job in JOBS
        for name, update in [
            ("chains", {"chains": [0]}),
            ("weight_restriction", {"weight_restriction": "l0h1"}),
            ("logging.wandb", {"logging": {"wandb": {"project": "p"}}}),
        ]
    ],
)
def test_a_setting_a_job_cannot_honour_is_refused_by_name(job, update, name):
    settings = settings_of(job)
    if name == "logging.wandb":
        update = {"logging": settings.logging.model_validate(update["logging"])}
    settings = settings.model_copy(update=update)
    if name in REFUSED.get(job, {}):
        with pytest.raises(RouteError, match=rf"^{name}: a {job} job"):
            sample_kwargs(settings, job)
    else:
        sample_kwargs(settings, job)


def test_run_identity_groups_cover_sample_signature():
    """Every sample() argument is an input, WHERE, HOW, or identity; WHERE settings are never recorded."""
    params = set(inspect.signature(sample).parameters)
    assert NOT_IDENTITY == INPUTS | WHERE | HOW and params >= NOT_IDENTITY
    identity = params - NOT_IDENTITY
    assert {"lr", "n_beta", "param_masks", "loss_fn", "fsdp_size", "noise", "autocast_dtype"} <= identity
    assert WHERE <= RUN_SPECIFIC


def test_sample_documents_every_argument_in_an_args_block():
    """devinterp documents each argument; so does sample() (issue 19)."""
    doc = sample.__doc__ or ""
    args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
    documented = {
        line.strip().split(":", 1)[0]
        for line in args.splitlines()
        if line.startswith(" " * 8 + line.strip()[:1]) and ":" in line and not line.startswith(" " * 12)
    }
    assert set(inspect.signature(sample).parameters) == documented
