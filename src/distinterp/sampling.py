"""sample(): settings -> plan -> chains -> store. The devinterp 2.x signature, plus `chains` and
`storage_options`; the same call runs as one process or under torchrun (chains sharded over ranks)."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from distinterp.chain import ChainSetup, resume_points, run_chains, snapshot
from distinterp.checkpoint import CheckpointStore
from distinterp.config import (
    SamplerConfig,
    SamplingMethodLiteral,
    merge_rmsprop_aliases,
    sampling_method_name,
)
from distinterp.data import ProbeRows, build_observables, input_ids_tensor
from distinterp.identity import masks_fingerprint, model_fingerprint, store_identity  # noqa: F401 - re-exported
from distinterp.loss import (
    AUTOCAST_DTYPES,
    LossFn,
    NonFiniteLogitsError,
    autocast_loss,
    compute_per_token_loss,
    context_limit,
    lm_forward_logits,
    resolve_loss_fn,
)
from distinterp.masks import ParamMasks
from distinterp.noise import DEFAULT_BLOCK, NoiseStream, resolve_noise
from distinterp.parallel.distributed import Runtime, runtime
from distinterp.parallel.engine import EngineFactory
from distinterp.parallel.plan import Plan
from distinterp.parallel.registry import engine_for
from distinterp.progress import ProgressReporter
from distinterp.provenance import note_environment, numeric_environment
from distinterp.rerun import check_rerun_chains, damaged_chains, reset_chains
from distinterp.store import (
    ChainRecorder,
    Location,
    SampleStore,
    Schema,
    build_schema,
)
from distinterp.update import DISTANCE_ONLY, RECORDED_METRICS

logger = logging.getLogger(__name__)

_OPEN_RESULT: contextvars.ContextVar[bool] = contextvars.ContextVar("distinterp_open_result", default=True)


@contextlib.contextmanager
def result_unused() -> Iterator[None]:
    """Inside, sample() returns an empty DataTree instead of opening the store it wrote: a sweep drops
    each cell's tree, and on an object store opening one costs a request per array."""
    token = _OPEN_RESULT.set(False)
    try:
        yield
    finally:
        _OPEN_RESULT.reset(token)


def _result(store: SampleStore) -> xr.DataTree:
    """What sample() returns: the store as a lazy DataTree (an empty one inside result_unused())."""
    return store.open() if _OPEN_RESULT.get() else xr.DataTree()


ObservableSpec = Any  # Dataset | tuple[Dataset, int]


def sample(
    model: torch.nn.Module,
    dataset: Any,
    observables: dict[str, ObservableSpec],
    *,
    lr: float,
    n_beta: float,
    param_masks: dict[str, torch.Tensor | None] | None = None,
    num_chains: int = 4,
    num_draws: int = 200,
    batch_size: int = 32,
    num_burnin_steps: int = 0,
    num_steps_bw_draws: int = 1,
    num_init_loss_batches: int = 32,
    init_seed: int = 100,
    batches_per_draw: int = 3,
    obs_seed: int = 1337,
    gradient_accumulation_steps: int = 1,
    localization: float = 0.0,
    noise_level: float = 1.0,
    llc_weight_decay: float = 0.0,
    bounding_box_size: float | None = None,
    sampling_method: SamplingMethodLiteral = "sgmcmc_sgld",
    sampling_method_kwargs: dict[str, Any] | None = None,
    rmsprop_eps: float | None = None,
    rmsprop_alpha: float | None = None,
    shuffle: bool = True,
    match_sampling_input_ids_across_chains: bool = True,
    init_noise: float | None = None,
    device: str | torch.device | None = None,
    save_metrics: bool | Literal["distance"] = False,
    output_path: str | Path | None = None,
    loss_fn: LossFn | None = None,
    chains: Sequence[int] | None = None,
    storage_options: dict[str, Any] | None = None,
    epoch_mode: Literal["once", "cycle"] = "cycle",
    checkpoint_every: int | None = None,
    run_settings: dict[str, Any] | None = None,
    fsdp_size: int = 1,
    chains_per_batch: int = 1,
    noise: NoiseStream | None = None,
    compile: bool | str = False,
    autocast_dtype: str | None = None,
    rerun_chains: Sequence[int] | None = None,
) -> xr.DataTree:
    """Run SGLD chains and stream per-token losses into a zarr store; return it as a lazy DataTree.

    devinterp 2.x's signature and defaults, plus the arguments marked (ours). Under torchrun every rank
    calls this with the same arguments; chains are sharded over ranks and every rank gets the tree.

    Args:
        model: The model to sample around (its parameters are the chains' start, w*); never modified.
        dataset: Token rows ('input_ids', equal length) the SGLD gradient is computed on.
        observables: Name -> dataset, or name -> (dataset, batches_per_draw): probes evaluated at every
            draw on fixed rows (chosen by obs_seed).
        lr: SGLD learning rate (step size).
        n_beta: Inverse temperature n*beta; higher stays closer to w*.
        param_masks: Parameter name -> mask tensor (or None for the whole parameter); only these are
            sampled, the rest are frozen. None: every parameter.
        num_chains: Independent chains.
        num_draws: Draws per chain (observables are evaluated at each).
        batch_size: Rows per SGLD gradient (per micro-batch with gradient accumulation).
        num_burnin_steps: Steps before the first draw.
        num_steps_bw_draws: Steps between draws.
        num_init_loss_batches: Batches averaged for the init loss L_n(w*).
        init_seed: Seed of the chains' noise and batches (a chain depends only on it and its index).
        batches_per_draw: Default batches per observable per draw.
        obs_seed: Seed that picks the observables' fixed rows.
        gradient_accumulation_steps: Micro-batches per SGLD step.
        localization: Strength gamma of the pull toward w* (Lau et al. 2023); 0 disables.
        noise_level: SGLD noise std sigma (1.0 keeps the posterior-sampling guarantee).
        llc_weight_decay: Gaussian prior (L2) lambda centred at zero.
        bounding_box_size: Keep the chain within this radius of w*; None disables.
        sampling_method: "sgmcmc_sgld" (plain SGLD with localization) or "rmsprop_sgld" (preconditioned).
        sampling_method_kwargs: Extra arguments of the method (e.g. rmsprop's alpha, eps).
        rmsprop_eps: Alias of sampling_method_kwargs["eps"] (rmsprop_sgld only).
        rmsprop_alpha: Alias of sampling_method_kwargs["alpha"] (rmsprop_sgld only).
        shuffle: Shuffle the sampling data (per epoch, seeded).
        match_sampling_input_ids_across_chains: Every chain sees the same batches at the same step.
        init_noise: Gaussian noise std added to the start once before sampling; None: none.
        device: Where chains run; None: cuda:LOCAL_RANK when CUDA is available, else cpu.
        save_metrics: Also record metrics_* (gradient, noise, distance to w*) per chain and step;
            "distance": only metrics_distance (cheap; what calibrate()'s localization check reads).
        output_path: The store: a local path or an fsspec URL (s3://bucket/run.zarr); None: a temp
            directory (lost at exit). A rerun with the same arguments continues it.
        loss_fn: (model, input_ids) -> per-token loss (batch, seq-1); None: next-token cross-entropy.
        chains: (ours) The chain indices this call runs (default all); Slurm array tasks each pass a slice.
        storage_options: (ours) fsspec options for an output_path URL; never written to the store.
        epoch_mode: (ours) "cycle" replays the first epoch when data runs out; "once" raises instead.
        checkpoint_every: (ours) Save each chain's state every this many steps (rounded up to the store's
            chunk of 50) so a preempted chain continues mid-way; None restarts unfinished chains.
        run_settings: (ours) JSON provenance recorded in the store's attrs (the CLI's settings, so
            `distinterp sample --from-store` reruns it); not part of the identity.
        fsdp_size: (ours) Ranks that shard one chain's model (world size = chain groups x fsdp_size).
        chains_per_batch: (ours) Chains a rank advances together as one batched computation (vmap; equal
            to one at a time to float rounding without dropout).
        noise: (ours) "devinterp" (its global-RNG stream, bitwise devinterp; the default for fsdp_size=1)
            or "blocked" (layout-invariant, noise.py; the default and required for fsdp_size > 1).
        compile: (ours) torch.compile the step's forward (True, or a backend name; float rounding only).
        autocast_dtype: (ours) "bfloat16" or "float16" matmuls with float32 losses and updates (~1e-2
            relative; part of the store's identity).
        rerun_chains: (ours) Chains to rewrite from their start (those a damaged chunk belongs to, as
            `distinterp inspect --verify` names them); every other chunk stays untouched.

    Returns:
        The store as an xr.DataTree (lazy, zarr-backed): init_loss, sampling_loss, loss_<obs>,
        input_ids_<obs>, n_beta, metrics_* (with save_metrics), and chain_steps_done / chain_diverged_step.
    """
    start = time.perf_counter()
    sampling_method = sampling_method_name(sampling_method)
    config = SamplerConfig(
        lr=lr,
        n_beta=n_beta,
        num_chains=num_chains,
        num_draws=num_draws,
        batch_size=batch_size,
        num_burnin_steps=num_burnin_steps,
        num_steps_bw_draws=num_steps_bw_draws,
        num_init_loss_batches=num_init_loss_batches,
        init_seed=init_seed,
        gradient_accumulation_steps=gradient_accumulation_steps,
        localization=localization,
        noise_level=noise_level,
        llc_weight_decay=llc_weight_decay,
        bounding_box_size=bounding_box_size,
        sampling_method=sampling_method,
        sampling_method_kwargs=merge_rmsprop_aliases(
            sampling_method, sampling_method_kwargs, rmsprop_eps, rmsprop_alpha
        ),
        shuffle=shuffle,
        match_sampling_input_ids_across_chains=match_sampling_input_ids_across_chains,
        init_noise=init_noise,
        save_metrics=save_metrics,
        epoch_mode=epoch_mode,
    )
    _check_int("batches_per_draw", batches_per_draw, 1)
    _check_int("obs_seed", obs_seed, None)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, 1)
    rerun = check_rerun_chains(rerun_chains, config.num_chains, chains)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"loss_fn: expected a callable (model, input_ids) -> (batch, seq-1), got {type(loss_fn).__name__}"
        )

    rt = runtime()
    dev = resolve_device(device, rt)
    plan = Plan.build(rt, config.num_chains, chains, fsdp_size=fsdp_size, chains_per_batch=chains_per_batch)
    engine = engine_for(plan)
    stream = resolve_noise(noise, plan.fsdp_size, plan.chains_per_batch)
    vocab = vocab_size(model)
    ids = input_ids_tensor(dataset, "dataset", vocab)
    obs_list = build_observables(
        observables,
        batch_size=config.batch_size,
        default_batches_per_draw=batches_per_draw,
        obs_seed=obs_seed,
        seq_len=ids.shape[1],
        vocab_size=vocab,
    )
    masks = resolve_param_masks(model, param_masks)
    fn = _with_speed_options(resolve_loss_fn(loss_fn), compile, autocast_dtype)

    working = engine.working_model(model, masks, config, dev, plan)
    _probe(working, fn, ids[: min(config.batch_size, len(ids))].to(dev))
    engine.preflight(working, fn, masks, ids[: min(config.batch_size, len(ids))].to(dev))

    layout = {"noise": stream, "noise_block": DEFAULT_BLOCK, "fsdp_size": plan.fsdp_size}
    schema = _schema(
        config, model, ids, obs_list, masks, loss_fn, batches_per_draw, obs_seed, layout, autocast_dtype
    )
    schema.attrs["distinterp"]["numerics"] = numeric_environment(working, dev, plan.way, compile)
    if run_settings is not None:
        schema.attrs["distinterp"]["run_settings"] = json.loads(json.dumps(run_settings))
    store = SampleStore(_location(output_path, storage_options, config, rt), schema)

    # Rank 0 validates or creates the store; every rank raises the same error if it cannot.
    state = None
    initial = None  # the store's progress before any rank samples (for rank 0's progress display)
    error: BaseException | None = None
    if rt.is_coordinator:
        try:
            if rerun:
                reset_chains(store, schema, rerun)
            state = _prepare_store(store, obs_list, config)
            if state != "complete":  # a complete store may be devinterp's, which records no progress
                initial = store.progress()[0]
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    state, error = rt.broadcast((state, error))
    if error is not None:
        raise error
    if state == "complete":
        logger.info("sample(): %s is already complete; returning it without sampling", store)
        return _result(store)

    setup = ChainSetup(
        model=working,
        start_state=snapshot(working),
        masks=masks,
        config=config,
        sampling_ids=ids,
        observables=obs_list,
        loss_fn=fn,
        device=dev,
        noise=stream,
        compile=compile,
    )
    reporter = _run_my_chains(plan, engine, setup, store, checkpoint_every, initial)
    rt.barrier()  # every rank's last chunk is durable: the closing line counts them all
    if reporter is not None:
        reporter.stop(summary=True)
    if rt.is_coordinator:
        steps_done, _ = store.progress()
        if (steps_done >= schema.num_steps).all():
            store.mark_completed()
            if checkpoint_every:
                CheckpointStore(store).clear()
    rt.barrier()
    logger.info("sample() took %.2f s on rank %d", time.perf_counter() - start, rt.rank)
    return _result(store)


def _run_my_chains(
    plan: Plan,
    engine: EngineFactory,
    setup: ChainSetup,
    store: SampleStore,
    checkpoint_every: int | None,
    initial: np.ndarray | None = None,
) -> ProgressReporter | None:
    """Run this rank's unfinished chains, group by group, through the plan's engine, into the store.
    Returns rank 0's progress display, for its closing line once every rank is done."""
    c = setup.config
    schema = store.schema_for("sampling")
    steps_done, _ = store.progress()
    todo = [ch for ch in plan.my_chains if steps_done[ch] < schema.num_steps]
    for ch in damaged_chains(store, [ch for ch in todo if steps_done[ch] > 0]):
        steps_done[ch] = 0  # its stored rows fail their checksum: rewrite it from its start
    checkpoints = CheckpointStore(store, plan.shard) if checkpoint_every else None
    every = -(-checkpoint_every // schema.step_chunk) * schema.step_chunk if checkpoint_every else None
    resume = resume_points(checkpoints, todo, {ch: int(steps_done[ch]) for ch in todo})
    starts = {ch: r.step if r is not None else 0 for ch, r in resume.items()}
    if plan.is_writer:
        created_under = (store.root_attrs() or {}).get("distinterp", {}).get("numerics")
        note_environment(
            store,
            created_under,
            schema.attrs["distinterp"]["numerics"],
            todo,
            starts,
            plan.runtime.rank,
        )
    reporter = (
        ProgressReporter(store, plan, initial=initial, resumable=bool(checkpoint_every))
        if plan.runtime.shows_progress
        else None
    )
    writer = store.writer() if plan.is_writer else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for group in plan.groups(todo, starts):
                recorders = [
                    ChainRecorder(
                        schema,
                        writer,
                        ch,
                        num_burnin_steps=c.num_burnin_steps,
                        num_steps_bw_draws=c.num_steps_bw_draws,
                    )
                    for ch in group
                ]
                diverged = run_chains(
                    engine(setup, group), c, recorders, [resume[ch] for ch in group], checkpoints, every
                )
                for ch, step in diverged.items():
                    warnings.warn(f"Chain {ch} diverged at step {step} (non-finite loss)", stacklevel=4)
    except BaseException:
        if reporter is not None:
            reporter.stop(summary=False)
        raise
    finally:
        if writer is not None:
            writer.close()
    return reporter


def _schema(
    config: SamplerConfig,
    model: torch.nn.Module,
    ids: torch.Tensor,
    obs_list: list[ProbeRows],
    masks: ParamMasks,
    loss_fn: LossFn | None,
    batches_per_draw: int,
    obs_seed: int,
    layout: dict[str, Any],
    autocast_dtype: str | None = None,
) -> Schema:
    """The store's schema and identity: everything that makes two runs the same run. A run off devinterp's
    noise stream records it and its fsdp_size (`layout`): stores of another stream or layout are refused."""
    named = dict(model.named_parameters())
    numel = sum(int(m.count_nonzero()) if m is not None else named[n].numel() for n, m in masks.items())
    identity = store_identity(
        config, model, ids, obs_list, masks, loss_fn, batches_per_draw, obs_seed, layout, autocast_dtype
    )
    schema = build_schema(
        sampler=config.reference_dump(),
        num_chains=config.num_chains,
        num_draws=config.num_draws,
        num_steps=config.num_sgld_steps,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        context_length=ids.shape[1] - 1,
        observables=[(o.obs_id, o.n_samples, o.batches_per_draw) for o in obs_list],
        metric_fields=(
            RECORDED_METRICS
            if config.save_metrics is True
            else (DISTANCE_ONLY,)
            if config.save_metrics == DISTANCE_ONLY
            else ()
        ),
        metrics_numel=numel if config.save_metrics else None,
        identity=identity,
    )
    schema.attrs["distinterp"]["num_sampled_params"] = numel  # d, for diagnose's bound LLC <= d/2
    return schema


def _with_speed_options(fn: LossFn, compile: Any, autocast_dtype: Any) -> LossFn:
    """Check `compile` and `autocast_dtype`; the loss function under autocast when asked."""
    if not isinstance(compile, (bool, str)):
        raise TypeError(f"compile: expected a bool or a torch.compile backend name, got {compile!r}")
    if autocast_dtype is None:
        return fn
    if autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast_dtype: expected None or one of {sorted(AUTOCAST_DTYPES)}, got {autocast_dtype!r}"
        )
    return autocast_loss(fn, autocast_dtype)


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name}: expected an int{bound}, got {value!r}")


def resolve_device(device: str | torch.device | None, rt: Runtime) -> torch.device:
    """The compute device: the given one, checked to exist, or cuda:LOCAL_RANK / CPU."""
    if device is None:
        return rt.default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a torch device ({e})") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: {device!r} requested but CUDA is not available; use device='cpu' or None"
            )
        if dev.index is None:
            dev = torch.device("cuda", rt.local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA devices exist")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device: {device!r} is not supported; use 'cpu', 'cuda' or None")
    return dev


def vocab_size(model: torch.nn.Module) -> int | None:
    """The model's vocabulary size when it says (HF config / TransformerLens cfg / embedding), else None."""
    for cfg_name in ("config", "cfg"):
        cfg = getattr(model, cfg_name, None)
        for attr in ("vocab_size", "d_vocab"):
            v = getattr(cfg, attr, None)
            if isinstance(v, int) and v > 0:
                return v
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        emb = get_emb()
        if isinstance(emb, torch.nn.Embedding):
            return emb.num_embeddings
    return None


def resolve_param_masks(
    model: torch.nn.Module, param_masks: dict[str, torch.Tensor | None] | None
) -> dict[str, torch.Tensor | None]:
    """Validate masks against the model: known names, matching shapes, boolean/0-1 values."""
    named = dict(model.named_parameters())
    if param_masks is None:
        return dict.fromkeys(named)
    if not isinstance(param_masks, dict):
        raise TypeError(
            f"param_masks: expected a dict of parameter name -> mask or None, got {type(param_masks).__name__}"
        )
    if not param_masks:
        raise ValueError("param_masks: is empty, so nothing would be sampled; pass None for the full model")
    out: dict[str, torch.Tensor | None] = {}
    for name, mask in param_masks.items():
        if name not in named:
            close = difflib.get_close_matches(name, list(named), n=3)
            raise ValueError(
                f"param_masks: {name!r} is not a parameter of the model"
                + (
                    f"; did you mean one of {close}?"
                    if close
                    else f"; parameters look like {list(named)[:3]}"
                )
            )
        if mask is None:
            out[name] = None
            continue
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"param_masks[{name!r}]: expected a tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(named[name].shape):
            raise ValueError(
                f"param_masks[{name!r}]: mask shape {tuple(mask.shape)} != parameter shape {tuple(named[name].shape)}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"param_masks[{name!r}]: mask must be boolean or 0/1")
        out[name] = mask
    return out


def _probe(model: torch.nn.Module, fn: LossFn, input_ids: torch.Tensor) -> None:
    """One no-grad forward before anything is written: rows within the model's context, logits (batch,
    seq, vocab) for the default loss, per-token loss of the right shape, finite."""
    limit = context_limit(model)
    if limit is not None and input_ids.shape[1] > limit[0]:
        raise ValueError(
            f"dataset: rows have {input_ids.shape[1]} tokens but the model takes at most {limit[0]} "
            f"({limit[1]}); cut the rows to at most {limit[0]} tokens, e.g. "
            f"tokenize_and_concatenate(..., max_length={limit[0]})"
        )
    with torch.no_grad():
        if fn is compute_per_token_loss:
            shape = tuple(lm_forward_logits(model, input_ids).shape)
            if len(shape) != 3 or shape[:2] != tuple(input_ids.shape):
                raise ValueError(
                    f"model: its forward returned logits of shape {shape} for input_ids of shape "
                    f"{tuple(input_ids.shape)}; the default loss needs logits (batch, seq, vocab) = "
                    f"({input_ids.shape[0]}, {input_ids.shape[1]}, vocab). Return per-position logits from forward, or pass "
                    "loss_fn(model, input_ids) -> per-token loss (batch, seq-1)"
                )
        try:
            loss = fn(model, input_ids)
        except NonFiniteLogitsError as e:
            raise NonFiniteLogitsError(
                f"{e} The model's logits at the starting point are not finite; check the checkpoint."
            ) from e
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn: must return a tensor, got {type(loss).__name__}")
    expected = (input_ids.shape[0], input_ids.shape[1] - 1)
    if tuple(loss.shape) != expected:
        raise ValueError(
            f"loss_fn: must return per-token loss of shape (batch, seq-1) = {expected}, got {tuple(loss.shape)} "
            "(for the default loss: the model must return logits (batch, seq, vocab))"
        )
    if not torch.isfinite(loss).all():
        raise NonFiniteLogitsError("loss_fn: returned non-finite losses at the starting point")


def _location(
    output_path: str | Path | None, storage_options: dict[str, Any] | None, config: SamplerConfig, rt: Runtime
) -> Location:
    if output_path is None and rt.spans_nodes:
        raise ValueError(
            "output_path: required when the ranks span several nodes (a temp directory on rank 0's node is "
            "not visible to the others); pass a path on a shared file system or an s3:// URL"
        )
    if output_path is None:
        total = config.num_chains * config.num_sgld_steps * config.batch_size
        if total > 1000 and rt.is_coordinator:
            warnings.warn(
                f"Sampling without output_path set -- {total} effective samples will be written to a temp "
                "directory and lost when the process exits. Pass output_path='/path/to/samples.zarr' to save them.",
                stacklevel=3,
            )
        path = str(Path(tempfile.mkdtemp()) / "samples.zarr") if rt.is_coordinator else None
        output_path = rt.broadcast(path)
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options: expected a dict, got {type(storage_options).__name__}")
    return Location(str(output_path), dict(storage_options or {}))


def _prepare_store(store: SampleStore, obs_list: list[ProbeRows], config: SamplerConfig) -> str:
    """Rank 0: create the store or check the existing one; returns 'complete' or 'continue'."""
    state = store.state()
    if state.completed:
        return "complete"
    store.create()
    for obs in obs_list:  # rewritten (same bytes) on every start, in case a creator died before writing them
        store.write_once(f"input_ids_{obs.obs_id}", obs.input_ids.numpy())
    store.write_once("n_beta", np.asarray(config.n_beta, dtype=np.float64))
    return "continue"
