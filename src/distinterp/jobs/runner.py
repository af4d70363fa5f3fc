"""The plain functions behind the job commands: run_sample (`distinterp sample` / `llc`), run_bif and
run_susceptibilities: load model and data (jobs.sources), sample, analyse."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xarray as xr

from distinterp.analyses.bif import compute_bif
from distinterp.analyses.chains import chain_status
from distinterp.analyses.llc import compute_llc
from distinterp.errors import JobError as JobError  # re-exported: its old home
from distinterp.identity import RUN_SPECIFIC  # noqa: F401 - its old home
from distinterp.identity import recorded_settings as _recorded
from distinterp.jobs import sources
from distinterp.jobs.results import write_result
from distinterp.jobs.route import job_chains, refuse_unhonoured, sample_kwargs  # noqa: F401 - job_chains: its old home
from distinterp.jobs.settings import SampleSettings
from distinterp.parallel.distributed import runtime
from distinterp.paths import local_sibling
from distinterp.sampling import sample
from distinterp.store import Location, check_reachable

logger = logging.getLogger(__name__)


def recorded_settings(settings: SampleSettings) -> dict[str, Any]:
    """What a store records of the job that created it, so `distinterp sample --from-store` can rerun it.
    storage_options (credentials) and this job's chain slice are left out (distinterp.identity)."""
    return _recorded(settings)


@dataclass(frozen=True)
class Inputs:
    """What a job samples: the model, the sampling data and the observables (name -> data or (data, n))."""

    model: torch.nn.Module
    data: Any
    observables: dict[str, Any]


def check_output_path(
    url: str, field: str = "output_path", storage_options: dict[str, Any] | None = None
) -> None:
    """Before any work: refuse a local output path that cannot be created (a file as a parent, /proc, no
    permission), or a remote one whose endpoint does not answer."""
    location = Location(url, storage_options or {})
    if not location.is_local:
        check_reachable(location)
        return
    path = location.local_path.expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise JobError(f"{field}={url!r}: is a file, not a store; choose another {field}")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise JobError(f"{field}={url!r}: {parent} is a file, not a directory; choose another {field}")
    try:  # creating (and removing) a directory where the store's top directory will go is the real test
        tempfile.TemporaryDirectory(dir=parent, prefix=".distinterp-check-").cleanup()
    except OSError as e:
        raise JobError(
            f"{field}={url!r}: cannot create it under {parent} ({e.strerror or e}); choose a writable {field}"
        ) from None


def load_inputs(settings: SampleSettings) -> Inputs:
    """Model, data and observables as the settings name them; rows checked against the model's context."""
    spec = settings.model
    model = None if sources.needs_data(spec) else sources.load_model(spec, None, settings.dataset)
    tokenizer = sources.tokenizer_name(spec)
    data = sources.load_dataset(settings.dataset, "dataset", tokenizer)
    if model is None:
        model = sources.load_model(spec, data, settings.dataset)
    sources.check_context(model, data, settings.dataset)
    return Inputs(model, data, sources.load_observables(settings, data, tokenizer, model))


def run_sample(
    settings: SampleSettings,
    inputs: Inputs | None = None,
    job: str = "sample",
    rerun_chains: Sequence[int] | None = None,
) -> tuple[xr.DataTree, dict[str, xr.Dataset]]:
    """Sample as the settings say; analyses (and W&B logging, when set) run on rank 0 once the store is
    complete. `inputs`: already loaded (one load for several restrictions' runs); `job`: whose settings
    these are (the route refuses what that job cannot honour)."""
    kwargs = sample_kwargs(settings, job)  # the one route: refuses before any work
    if settings.logging.wandb is not None:
        from distinterp.jobs.tracking import require_wandb

        require_wandb()  # before any work
    chains = kwargs["chains"]
    if chains == []:
        raise ValueError(
            f"this array task has no chains: {settings.sampler.num_chains} chains over more array tasks; "
            "submit at most num_chains tasks"
        )
    check_output_path(settings.output_path, storage_options=settings.storage_options)
    if inputs is None:
        inputs = load_inputs(settings)
    model = inputs.model
    masks = None
    if settings.weight_restriction is not None:
        from distinterp.masks import WeightRestrictionError, create_param_masks

        try:
            masks = create_param_masks(model, settings.weight_restriction)
        except WeightRestrictionError as e:
            raise WeightRestrictionError(f"weight_restriction={settings.weight_restriction!r}: {e}") from None
    try:
        tree = sample(
            model,
            inputs.data,
            inputs.observables,
            param_masks=masks,
            rerun_chains=rerun_chains,
            **kwargs,
        )
    except OSError as e:  # a full disk, a directory removed mid-run, permissions changed
        raise JobError(
            f"output_path={settings.output_path!r}: {e.strerror or e}"
            + (f" ({e.filename})" if e.filename else "")
            + "; free space or choose a writable output_path, then rerun the same command to continue"
        ) from e
    results: dict[str, xr.Dataset] = {}
    complete, _, diverged = chain_status(tree.dataset)
    if is_finished(tree) and "llc" in settings.analyses and set(complete) - set(diverged):
        results["llc"] = compute_llc(tree)  # (with no finite chain, the CLI prints the diagnosis instead)
    if settings.logging.wandb is not None and runtime().is_coordinator:
        from distinterp.jobs.tracking import log_to_wandb

        name = settings.output_path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
        log_to_wandb(settings.logging.wandb, tree, results, name=name, config=recorded_settings(settings))
    return tree, results


def is_finished(tree: xr.DataTree) -> bool:
    """This process analyses: rank 0 of a complete store (an array task's part leaves it to `aggregate`)."""
    return runtime().is_coordinator and tree.dataset.attrs.get("completed") == 1


def run_bif(settings: SampleSettings) -> tuple[xr.DataTree, xr.Dataset | None]:
    """Sample, then the BIF (token-wise blocks split over the ranks); rank 0 of a complete store gets it."""
    tree, _ = run_sample(settings.model_copy(update={"analyses": []}), job="bif")
    if tree.dataset.attrs.get("completed") != 1:
        return tree, None
    opts = settings.bif
    lazy = opts.correlation_method == "token" and not opts.average_tokenwise_bif  # written block by block
    result = compute_bif(
        tree,
        correlation_method=opts.correlation_method,
        reduce_chain_dimension_method=opts.reduce_chain_dimension_method,
        average_tokenwise_bif=opts.average_tokenwise_bif,
        compute_covariance=opts.compute_covariance,
        batch_size=opts.batch_size,
        output_path=bif_output_path(settings) if lazy else None,
        runtime=runtime(),
    )
    return tree, result


def bif_output_path(settings: SampleSettings) -> str:
    """Where `distinterp bif` writes its result: bif.output_path, else `<store>.bif.zarr` (see result_path)."""
    return settings.bif.output_path or result_path(settings.output_path, "bif")


def result_path(base: str, name: str) -> str:
    """`<stem>.<name>.zarr` beside a local store or output file; in the working directory for a URL (results
    are written locally)."""
    return local_sibling(base, name)  # distinterp.paths' table


def run_susceptibilities(settings: SampleSettings) -> tuple[dict[str, xr.DataTree], xr.DataTree | None]:
    """One store per weight restriction ('full' first, at `<output stem>_<name>.zarr`, as devinterp's
    susceptibilities() names them), then compute_susceptibilities on rank 0."""
    from distinterp.analyses.susceptibilities import compute_susceptibilities, restriction_path

    refuse_unhonoured(settings, "susceptibilities")  # each run below is a plain sample job
    opts = settings.susceptibilities
    if not opts.restrictions:
        raise JobError(
            "susceptibilities.restrictions: name at least one weight restriction, e.g. {l0h1: l0h1}"
        )
    names = ["train"] if settings.observables is None else list(settings.observables)
    if opts.sampling_task not in names:
        raise JobError(
            f"susceptibilities.sampling_task={opts.sampling_task!r}: not one of the observables {names}"
        )
    if not opts.include_sampling_task and names == [opts.sampling_task]:
        raise JobError(
            "observables: susceptibilities need a probe observable besides "
            f"susceptibilities.sampling_task={opts.sampling_task!r} (or include_sampling_task: true)"
        )
    runs = {"full": None, **opts.restrictions}
    paths = {name: str(restriction_path(settings.output_path, name)) for name in runs}
    for path in paths.values():
        check_output_path(path, storage_options=settings.storage_options)
    inputs = load_inputs(settings)
    from distinterp.masks import WeightRestrictionError, create_param_masks

    for name, pattern in opts.restrictions.items():  # every restriction, before any sampling
        try:
            create_param_masks(inputs.model, pattern)
        except WeightRestrictionError as e:
            raise WeightRestrictionError(f"susceptibilities.restrictions.{name}={pattern!r}: {e}") from None
    trees = {}
    for name, restriction in runs.items():
        update = {"weight_restriction": restriction, "output_path": paths[name], "analyses": []}
        trees[name], _ = run_sample(settings.model_copy(update=update), inputs)
    if not all(is_finished(t) for t in trees.values()):
        return trees, None
    result = compute_susceptibilities(
        trees, opts.sampling_task, include_sampling_task=opts.include_sampling_task
    )
    out = opts.output_path or result_path(settings.output_path, "susceptibilities")
    write_result(result, out)  # the one writer of results (CLI and runners)
    return trees, result
