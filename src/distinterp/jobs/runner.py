"""run_sample(settings): the plain function behind `distinterp sample`: load model and data, sample, analyse."""

from __future__ import annotations

import logging
from typing import Any

import torch
import xarray as xr

from distinterp.analyses.llc import chain_status, compute_llc
from distinterp.jobs.settings import DatasetSettings, ModelSettings, SampleSettings
from distinterp.parallel.distributed import runtime
from distinterp.parallel.plan import array_task_chains
from distinterp.sampling import sample

logger = logging.getLogger(__name__)


def load_dataset(spec: DatasetSettings) -> Any:
    """A tokenized HF Dataset from the spec (built-in generator, hub/local dataset, or load_from_disk)."""
    import datasets

    if spec.source == "builtin":
        if spec.name != "markov":
            raise ValueError(f"dataset.name={spec.name!r}: the built-in datasets are ['markov']")
        from distinterp import toy

        transition = toy.markov_chain(spec.vocab_size, seed=spec.seed)
        ds = toy.markov_dataset(
            transition, seq_len=spec.seq_len, n_rows=spec.num_rows or 512, seed=spec.seed + 1
        )
    elif spec.source == "disk":
        ds = datasets.load_from_disk(spec.name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[spec.split]
    else:
        ds = datasets.load_dataset(spec.name, split=spec.split)
    if spec.num_rows is not None and spec.source != "builtin":
        ds = ds.select(range(min(spec.num_rows, len(ds))))
    return ds


def load_model(spec: ModelSettings, sampling_data: Any, data_spec: DatasetSettings) -> torch.nn.Module:
    """The model to sample around: a built-in toy, or a transformers causal LM (weights or random init),
    with `spec.state_dict`'s weights loaded into it when given."""
    model = _architecture(spec, sampling_data, data_spec)
    if spec.state_dict:
        load_weights(model, spec.state_dict)
    return model


def _architecture(spec: ModelSettings, sampling_data: Any, data_spec: DatasetSettings) -> torch.nn.Module:
    dtype = getattr(torch, spec.dtype)
    if spec.source == "builtin":
        from distinterp import toy

        if spec.name == "bigram":
            return toy.bigram_mle(sampling_data, data_spec.vocab_size).to(dtype)
        if spec.name == "tiny-gpt2":
            return toy.tiny_gpt2(vocab_size=data_spec.vocab_size, **spec.config).to(dtype)
        raise ValueError(f"model.name={spec.name!r}: the built-in models are ['bigram', 'tiny-gpt2']")
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.random_init or spec.state_dict:
        config = AutoConfig.from_pretrained(spec.name, revision=spec.revision, **spec.config)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(spec.name, revision=spec.revision, dtype=dtype)


def load_weights(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load a state-dict file (.safetensors, or torch's .pt/.bin) into the model; mismatches name the keys."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"model.state_dict={path!r}: does not fit the model architecture: {e}") from None
    return model


def load_observables(settings: SampleSettings, data: Any) -> dict[str, Any]:
    """The observables the settings name (each with its batches_per_draw), or the sampling data as 'train'."""
    if settings.observables is None:
        return {"train": data}
    observables: dict[str, Any] = {}
    for name, spec in settings.observables.items():
        ds = load_dataset(spec)
        observables[name] = (ds, spec.batches_per_draw) if spec.batches_per_draw else ds
    return observables


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


RUN_SPECIFIC = frozenset({"output_path", "storage_options", "chains", "array_task"})
"""Settings that say where and which part of a run this job is, not what the run is: never recorded."""


def recorded_settings(settings: SampleSettings) -> dict[str, Any]:
    """What a store records of the job that created it, so `distinterp sample --from-store` can rerun it.
    storage_options (credentials) and this job's chain slice are left out."""
    return settings.model_dump(mode="json", exclude=set(RUN_SPECIFIC))


def run_sample(settings: SampleSettings) -> tuple[xr.DataTree, dict[str, xr.Dataset]]:
    """Sample as the settings say; analyses run on rank 0 once the store is complete."""
    data = load_dataset(settings.dataset)
    model = load_model(settings.model, data, settings.dataset)
    observables = load_observables(settings, data)
    chains = job_chains(settings)
    if chains == []:
        raise ValueError(
            f"this array task has no chains: {settings.sampler.num_chains} chains over more array tasks; "
            "submit at most num_chains tasks"
        )
    sampler = settings.sampler.model_dump()
    masks = None
    if settings.weight_restriction is not None:
        from distinterp.masks import WeightRestrictionError, create_param_masks

        try:
            masks = create_param_masks(model, settings.weight_restriction)
        except WeightRestrictionError as e:
            raise WeightRestrictionError(f"weight_restriction={settings.weight_restriction!r}: {e}") from None
    tree = sample(
        model,
        data,
        observables,
        batches_per_draw=settings.batches_per_draw,
        obs_seed=settings.obs_seed,
        device=settings.device,
        output_path=settings.output_path,
        storage_options=settings.storage_options,
        chains=chains,
        checkpoint_every=settings.checkpoint_every,
        run_settings=recorded_settings(settings),
        param_masks=masks,
        chains_per_batch=settings.parallel.chains_per_batch,
        fsdp_size=settings.parallel.fsdp_size,
        noise=settings.parallel.noise,
        **sampler,
    )
    results: dict[str, xr.Dataset] = {}
    finished = runtime().is_coordinator and tree.dataset.attrs.get("completed") == 1
    complete, _, diverged = chain_status(tree.dataset)
    if finished and "llc" in settings.analyses and set(complete) - set(diverged):
        results["llc"] = compute_llc(tree)  # (with no finite chain, the CLI prints the diagnosis instead)
    return tree, results
