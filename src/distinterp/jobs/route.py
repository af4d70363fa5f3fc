"""The one route from job settings to sample() keyword arguments, for every runner (sample, llc, bif,
susceptibilities, trajectory, calibrate, sweep).

Every top-level setting is either ROUTED here into sample() arguments, used by the job's runner itself
(RUNNER, a job's OWN section), a section of another command (OTHER_COMMANDS: one YAML may serve several
commands), or REFUSED by name for a job that cannot honour it: a setting is never accepted and dropped.
tests/test_route.py feeds every field through every job.
"""

from __future__ import annotations

import logging
from typing import Any

from distinterp.errors import RouteError
from distinterp.identity import recorded_settings
from distinterp.jobs.settings import SampleSettings
from distinterp.parallel.plan import array_task_chains

logger = logging.getLogger(__name__)

JOBS = ("sample", "llc", "bif", "susceptibilities", "trajectory", "calibrate", "sweep")
SWEEPS = frozenset({"trajectory", "calibrate", "sweep"})
"""Jobs of many stores under one root: the sweep sets each store's output_path and chains."""

ROUTED = frozenset(
    {"sampler", "batches_per_draw", "obs_seed", "device", "checkpoint_every", "parallel"}
    | {"output_path", "storage_options", "chains", "array_task"}
)
"""Settings this module turns into sample() arguments (array_task: into `chains`, or the sweep's blocks)."""
RUNNER = frozenset({"model", "dataset", "observables", "weight_restriction", "logging", "analyses"})
"""Settings every runner uses itself: what to load, the mask, W&B, the analyses after sampling."""
OWN: dict[str, frozenset[str]] = {
    "bif": frozenset({"bif"}),
    "susceptibilities": frozenset({"susceptibilities"}),
    "trajectory": frozenset({"checkpoints"}),
    "calibrate": frozenset(
        {"grid", "tolerance", "scale_draws", "max_draws", "relaxations", "lr_ceiling", "draw_budget"}
    ),
    "sweep": frozenset({"checkpoints", "restrictions", "datasets", "grid"}),
}
"""Each job's own section."""
OTHER_COMMANDS = frozenset({"bif", "susceptibilities"})
"""Sections of one command, inert in the others (documented as '`distinterp bif` only')."""

_SWEEP_REFUSES = {
    "chains": "splits its work by array_task, not chains; remove chains",
    "logging.wandb": "is not logged to W&B yet; remove logging.wandb",
}
REFUSED: dict[str, dict[str, str]] = {
    "trajectory": _SWEEP_REFUSES,
    "calibrate": _SWEEP_REFUSES,
    "sweep": {
        **_SWEEP_REFUSES,
        "weight_restriction": "sets its own per cell; name restrictions under restrictions",
    },
    "susceptibilities": {
        "weight_restriction": "sets its own per run; name restrictions under susceptibilities.restrictions",
    },
}
"""job -> dotted setting -> why it cannot be honoured and the fix; refused when set (not None)."""


def _value(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def refuse_unhonoured(settings: SampleSettings, job: str) -> None:
    """Refuse, by name and before any work, every setting `job` would otherwise drop."""
    if job not in JOBS:
        raise ValueError(f"job: {job!r} is not one of {list(JOBS)}")
    for name, why in REFUSED.get(job, {}).items():
        if _value(settings, name) is not None:
            raise RouteError(f"{name}: a {job} job {why}")


def job_chains(settings: SampleSettings) -> list[int] | None:
    """Chains this job runs: explicit `chains`, the Slurm array task's block, or None (all)."""
    if settings.chains is not None:
        return settings.chains
    task = settings.array_task.resolved()
    if task is None:
        return None
    chains = list(array_task_chains(settings.sampler.num_chains, *task))
    logger.info("array task %d of %d runs chains %s", task[0], task[1], chains)
    return chains


def sample_kwargs(settings: SampleSettings, job: str) -> dict[str, Any]:
    """sample()'s keyword arguments as `job`'s settings say (all but model, data, observables, param_masks).

    A sweep (trajectory, calibrate, sweep) gets what every store shares: it sets each store's output_path,
    storage_options, chains and run_settings itself. Unset lr / n_beta (a calibration's) are left out.
    """
    refuse_unhonoured(settings, job)
    sampler = {
        k: v for k, v in settings.sampler.model_dump().items() if v is not None or k not in ("lr", "n_beta")
    }
    kwargs: dict[str, Any] = {
        **sampler,
        "batches_per_draw": settings.batches_per_draw,
        "obs_seed": settings.obs_seed,
        "device": settings.device,
        "checkpoint_every": settings.checkpoint_every,
        "fsdp_size": settings.parallel.fsdp_size,
        "chains_per_batch": settings.parallel.chains_per_batch,
        "noise": settings.parallel.noise,
    }
    if job in SWEEPS:
        return kwargs
    return {
        **kwargs,
        "output_path": settings.output_path,
        "storage_options": settings.storage_options,
        "chains": job_chains(settings),
        "run_settings": recorded_settings(settings),
    }
