"""On a GPU: sample() equals its CPU run to float rounding, batched chains equal serial ones (per-chain CUDA
generators), the chain loop never waits for the host between chunk flushes, bf16 and inductor compile stay
within their documented tolerances, and the token BIF (dense and streamed) matches float64.

Skipped where CUDA is missing, so CI on CPU skips the module at once. `DISTINTERP_TEST_DEVICE=cpu` runs the
same tests on the CPU instead, to check the tests' own logic where no GPU is (there the sync check skips and
compile uses the aot_eager backend in place of inductor, which needs no C++ compiler):

    DISTINTERP_TEST_DEVICE=cpu python -m pytest -q tests/test_cuda.py

On a lent GPU machine, scripts/device_check.sh runs this module and benchmarks/gpu.sh in one go.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sysconfig
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

import distinterp
from distinterp import sampling
from distinterp.analyses import bif as bif_module
from distinterp.parallel.batched import BatchedEngine
from distinterp.parallel.serial import SerialEngine
from distinterp.store import ChainRecorder
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_batched import CASES, _opts, assert_same_layout
from tests.test_bif import make_store, numpy_bif, random_losses

DEVICE = os.environ.get("DISTINTERP_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
ON_GPU = DEVICE is not None and DEVICE.startswith("cuda")
pytestmark = pytest.mark.skipif(
    DEVICE is None, reason="needs CUDA (DISTINTERP_TEST_DEVICE=cpu runs these tests on the CPU)"
)

TOL = dict(rtol=1e-4, atol=1e-5)
"""Float32 on two devices, or batched against serial kernels: the same maths summed in another order."""


def assert_close(a: xr.Dataset, b: xr.Dataset, names: list[str] | None = None, **tol: float) -> None:
    """Float variables within `tol` (default TOL), integer ones (input ids, steps done) exactly."""
    for name in names or list(a.data_vars):
        x, y = a[name].values, b[name].values
        assert x.shape == y.shape, name
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, err_msg=name, **(tol or TOL))
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def run(model: torch.nn.Module, path: Path, device: str | None = DEVICE, **kwargs: Any) -> xr.Dataset:
    """sample() of `model` on the tests' token data, observables "train" (1 batch) and "probe" (2 batches)."""
    ds = token_dataset()
    obs = {"train": ds, "probe": (token_dataset(seed=2), 2)}
    opts = {**SMALL, **kwargs}
    return distinterp.sample(model, ds, obs, output_path=path, device=device, **opts).dataset


# ── (a) the same run on the GPU and on the CPU ──

NOISELESS = dict(
    noise_level=0.0,  # the two devices' RNGs differ: without noise the whole trajectory is comparable
    sampling_method="rmsprop_sgld",
    localization=1.0,
    gradient_accumulation_steps=2,
    num_burnin_steps=1,
    num_steps_bw_draws=2,
    save_metrics=True,
)


def test_sample_on_the_device_equals_the_cpu_run_without_noise(tmp_path: Path) -> None:
    """Noise off, every recorded number (losses, observables, metrics) within float rounding of the CPU's."""
    model = tiny_gpt2()
    gpu = run(model, tmp_path / "gpu.zarr", **NOISELESS)
    cpu = run(model, tmp_path / "cpu.zarr", device="cpu", **NOISELESS)
    assert_same_layout(gpu, cpu)
    assert_close(gpu, cpu, [v for v in cpu.data_vars if v != "metrics_mala_acceptance"])
    # the acceptance is exp(n_beta * a loss difference): compared where both are defined, to its own scale
    np.testing.assert_allclose(
        gpu.metrics_mala_acceptance.values[:, 1:], cpu.metrics_mala_acceptance.values[:, 1:], atol=1e-3
    )
    assert np.isfinite(gpu.sampling_loss_micro.values).all()


def test_sample_on_the_device_with_noise_starts_where_the_cpu_does(tmp_path: Path) -> None:
    """Default noise: the init loss and the first step's losses (before any noise) equal the CPU's; the
    rest runs on the device's own RNG stream, finite."""
    model = tiny_gpt2()
    gpu = run(model, tmp_path / "gpu.zarr")
    cpu = run(model, tmp_path / "cpu.zarr", device="cpu")
    np.testing.assert_allclose(gpu.init_loss.values, cpu.init_loss.values, **TOL)
    np.testing.assert_allclose(
        gpu.sampling_loss_micro.values[:, 0], cpu.sampling_loss_micro.values[:, 0], **TOL
    )
    np.testing.assert_array_equal(gpu.sampling_input_ids_micro.values, cpu.sampling_input_ids_micro.values)
    assert np.isfinite(gpu.sampling_loss_micro.values).all() and np.isfinite(gpu.loss_probe.values).all()


# ── (b) batched chains on the device: per-chain generators give the serial stream ──


@pytest.mark.parametrize("case", list(CASES))
def test_batched_chains_equal_serial_chains_on_the_device(case: str, tmp_path: Path) -> None:
    """3 chains at chains_per_batch=3 against the same 3 one at a time, both on the device."""
    model, ds = tiny_gpt2(), token_dataset()
    obs = {"train": ds, "code-x": (ds, 2)}
    serial, batched = (
        distinterp.sample(
            model,
            ds,
            obs,
            output_path=tmp_path / f"{k}.zarr",
            device=DEVICE,
            chains_per_batch=k,
            **_opts(case),
        ).dataset
        for k in (1, 3)
    )
    assert_same_layout(serial, batched)
    assert_close(serial, batched)


# ── (c) no host synchronisation between chunk flushes ──

SYNC_MESSAGE = "called a synchronizing CUDA operation"
_TORCH = os.path.dirname(torch.__file__) + os.sep
_OURS = os.path.dirname(distinterp.__file__) + os.sep
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_PACKAGES = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})  # may lie in stdlib


class TinyCausalLM(torch.nn.Module):
    """One causal self-attention block in plain torch (embedding, attention, unembedding): a model whose
    forward never synchronises, so every sync in its sampling run is the chain loop's own."""

    def __init__(self, vocab: int = 32, width: int = 16, ctx: int = 32, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = torch.nn.Embedding(vocab, width)
            self.pos = torch.nn.Parameter(0.02 * torch.randn(ctx, width))
            self.qkv = torch.nn.Linear(width, 3 * width)
            self.out = torch.nn.Linear(width, width)
            self.unembed = torch.nn.Linear(width, vocab)
        self.register_buffer("causal", torch.ones(ctx, ctx, dtype=torch.bool).tril(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[-1]
        x = self.embed(input_ids) + self.pos[:T]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(dim=-1)
        return self.unembed(x + self.out(att @ v))


@contextlib.contextmanager
def sync_debug_mode(mode: str | int) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _may_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with syncs allowed: the loop's set-up (init loss, begin) and the recorder's chunk flushes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sync_debug_mode(0):
            return fn(*args, **kwargs)

    return wrapper


def watch_syncs(monkeypatch: pytest.MonkeyPatch) -> list[list[traceback.FrameSummary]]:
    """Collects the Python stack of every host sync that the chain loop's steps make (torch's sync debug
    mode 'warn' around chain.run_chains, turned off in its set-up and in the recorder's flushes)."""
    syncs: list[list[traceback.FrameSummary]] = []
    for cls in (SerialEngine, BatchedEngine):
        for name in ("init_loss", "begin"):
            monkeypatch.setattr(cls, name, _may_sync(getattr(cls, name)))
    for name in ("init_loss", "flush"):
        monkeypatch.setattr(ChainRecorder, name, _may_sync(getattr(ChainRecorder, name)))
    run_chains = sampling.run_chains

    def watched(*args: Any, **kwargs: Any) -> Any:
        def show(message: Any, *rest: Any, **kw: Any) -> None:
            if SYNC_MESSAGE in str(message):
                syncs.append(traceback.extract_stack()[:-1])

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            with sync_debug_mode("warn"):
                return run_chains(*args, **kwargs)

    monkeypatch.setattr(sampling, "run_chains", watched)
    return syncs


def sync_site(stack: list[traceback.FrameSummary]) -> traceback.FrameSummary:
    """The innermost frame outside torch and the standard library: the code that asked for the sync."""

    def library(path: str) -> bool:
        return path.startswith(_TORCH) or (path.startswith(_STDLIB) and not path.startswith(_PACKAGES))

    return [f for f in stack if not library(f.filename)][-1]


def is_ours(stack: list[traceback.FrameSummary]) -> bool:
    """A sync asked for by distinterp's code. Autograd replays the warnings of the model's backward ops at
    the `.backward()` call, so a sync seen there is the model's (its own ops), not the loop's."""
    site = sync_site(stack)
    return site.filename.startswith(_OURS) and ".backward(" not in (site.line or "")


def describe(stacks: list[list[traceback.FrameSummary]]) -> str:
    sites = sorted({f"{s.filename}:{s.lineno} ({s.name}: {s.line})" for s in map(sync_site, stacks)})
    return f"{len(stacks)} syncs at:\n  " + "\n  ".join(sites)


@pytest.mark.skipif(not ON_GPU, reason="torch's sync debug mode needs CUDA")
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("model_name", ["plain", "gpt2"])
def test_the_chain_loop_does_not_wait_for_the_host_between_flushes(
    model_name: str, k: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps, updates, metrics and draws of 8 steps (one chunk, flushed at the end) make no host sync of
    distinterp's own; with a model that never syncs, none at all. (HF models sync inside their forward,
    e.g. transformers' mask creation; those are the model's, reported on failure.)"""
    syncs = watch_syncs(monkeypatch)
    model = TinyCausalLM() if model_name == "plain" else tiny_gpt2()
    opts = dict(num_draws=8, chains_per_batch=k, save_metrics=True, localization=1.0)
    run(model, tmp_path / "s.zarr", **opts)
    ours = [s for s in syncs if is_ours(s)]
    assert not ours, "distinterp synchronises inside the chain loop: " + describe(ours)
    if model_name == "plain":
        assert not syncs, describe(syncs)


# ── (d) bfloat16 autocast ──


@pytest.mark.parametrize("k", [1, 3])
def test_bfloat16_autocast_stays_near_float32(k: int, tmp_path: Path) -> None:
    """autocast_dtype='bfloat16' runs on the device; its losses are float32 and within 1e-1 relative of the
    float32 run (8 mantissa bits), on average within 2e-2."""
    model = tiny_gpt2()
    ref = run(model, tmp_path / "f32.zarr", chains_per_batch=k)
    bf16 = run(model, tmp_path / "bf16.zarr", chains_per_batch=k, autocast_dtype="bfloat16")
    for name in ["sampling_loss_micro", "loss_train", "loss_probe", "init_loss"]:
        x, y = bf16[name].values, ref[name].values
        assert x.dtype == np.float32, name
        np.testing.assert_allclose(x, y, rtol=1e-1, err_msg=name)
        assert np.mean(np.abs(x - y) / np.abs(y)) < 2e-2, name


# ── (e) token-wise BIF on the device against float64 ──


@pytest.mark.parametrize("path", ["dense", "streamed"])
@pytest.mark.parametrize("method", ["token", "sequence"])
def test_bif_on_the_device_matches_float64(path: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """compute_bif(device=...) on a random store (3 chains x 40 draws, 2 observables of 12 and 20 rows, 16
    tokens), in-memory standardised (dense) and through the scratch copy (streamed), against NumPy float64."""
    if path == "streamed":
        if method == "sequence":
            pytest.skip("the sequence BIF has one path")
        monkeypatch.setattr(bif_module, "MAX_DENSE_BYTES", 0)
    losses = random_losses(7, chains=3, draws=40, sizes={"a": 12, "b_x": 20}, T=16)
    for mean in (False, True):
        res = distinterp.compute_bif(
            make_store(losses, draw_chunk=15),
            correlation_method=method,  # type: ignore[arg-type]
            reduce_chain_dimension_method="mean" if mean else "stack",
            batch_size=8,
            device=DEVICE,
        )
        expected = numpy_bif(losses, token=method == "token", mean=mean)
        np.testing.assert_allclose(res["influences"].values, expected, rtol=2e-4, atol=2e-4)
        assert res["influences"].dtype == np.float32


# ── (f) torch.compile (last: its first compilation is the slowest test) ──


@pytest.mark.parametrize("k", [1, 3])
def test_compile_matches_eager(k: int, tmp_path: Path) -> None:
    """compile=True (inductor; aot_eager on the CPU) of the serial and the batched step: float rounding."""
    torch._dynamo.reset()  # each test compiles afresh: no recompile limit carried over
    model = tiny_gpt2()
    setting: bool | str = True if ON_GPU else "aot_eager"
    opts = dict(num_draws=4, chains_per_batch=k)
    eager = run(model, tmp_path / "eager.zarr", **opts)
    comp = run(model, tmp_path / "comp.zarr", compile=setting, **opts)
    assert_close(comp, eager)
