"""One contract every engine passes (zarr-python's StoreTests pattern): resume, divergence, masks, metrics
with the MALA acceptance, and checkpoints. A case (CASES) writes its stores with one engine's options; the
EngineContract tests assert on them, the same assertions for every engine. Serial (chains_per_batch=1) and
batched (chains_per_batch=2) run here, in process; the sharded engine (fsdp_size=2) runs every case in the
one 2-rank torchrun job of tests/test_sharded.py (TestShardedEngine there)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import xarray as xr

import distinterp
from distinterp.data import BatchFeed, input_ids_tensor
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_batched import _clean_loss, _nan_on_row, _Preempt, assert_close

Stores = Callable[[str], Path]
"""case name -> the directory holding that case's stores, made with the engine under test."""


def run(path: Path, options: dict[str, Any], obs: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Sample the tiny GPT-2 into path with SMALL, the engine's options and the case's kwargs."""
    ds = token_dataset()
    opts = {**SMALL, **options, **kwargs}
    distinterp.sample(tiny_gpt2(), ds, obs or {"train": ds}, output_path=path, **opts)


def data(path: Path) -> xr.Dataset:
    return xr.open_datatree(path, engine="zarr", consolidated=False).dataset


def make_resume(out: Path, options: dict[str, Any]) -> None:
    run(out / "whole.zarr", options)
    run(out / "parts.zarr", options, chains=[1])
    run(out / "parts.zarr", options)


def make_divergence(out: Path, options: dict[str, Any]) -> None:
    """Chain 1 alone meets a row whose loss is NaN at step 3 (`hit`), beside the same runs without it."""
    ds = token_dataset()
    ids = input_ids_tensor(ds, "dataset")
    orders = [
        BatchFeed.build(ids, 4, shuffle=True, seed=100 + c, epoch_mode="cycle").order[:6] for c in range(3)
    ]
    seen = {int(r) for c in (0, 2) for r in orders[c].flatten()} | {int(r) for r in orders[1][:3].flatten()}
    bad = next(int(r) for r in orders[1][3] if int(r) not in seen)
    opts = {**options, "match_sampling_input_ids_across_chains": False}
    obs = {"probe": (token_dataset(seed=2), 2)}
    with pytest.warns(UserWarning, match="Chain 1 diverged at step 3"):
        run(out / "hit.zarr", opts, obs, loss_fn=_nan_on_row(ids[bad]))
    run(out / "clean.zarr", opts, obs, loss_fn=_clean_loss)


def make_masks(out: Path, options: dict[str, Any]) -> None:
    masks: dict[str, torch.Tensor | None] = {"transformer.h.0.mlp.c_fc.bias": None}
    run(out / "masked.zarr", options, param_masks=masks, save_metrics=True)
    run(out / "full.zarr", options, save_metrics=True)


def make_checkpoints(out: Path, options: dict[str, Any]) -> None:
    """A run preempted after step 51 (its checkpoint at 50), rerun; beside the uninterrupted run. One chain:
    a checkpoint needs a whole chunk (50 steps) behind it, so this is the contract's costly case (batched
    groups of two preempted together: tests/test_batched.py)."""
    opts = {**options, "num_chains": 1, "num_draws": 52, "checkpoint_every": 50, "save_metrics": True}
    run(out / "clean.zarr", opts, loss_fn=_Preempt(None))
    loss = _Preempt(51)
    with pytest.raises(RuntimeError, match="preempted"):
        run(out / "resumed.zarr", opts, loss_fn=loss)
    run(out / "resumed.zarr", opts, loss_fn=loss)


CASES: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "resume": make_resume,
    "divergence": make_divergence,
    "masks": make_masks,
    "checkpoints": make_checkpoints,
}


class EngineContract:
    """The contract. A subclass per engine provides the `contract` fixture (Stores)."""

    def test_resume_of_a_partial_store_equals_one_run(self, contract: Stores) -> None:
        out = contract("resume")
        parts = data(out / "parts.zarr")
        assert parts.attrs["completed"] == 1
        assert_close(parts, data(out / "whole.zarr"))

    def test_a_diverged_chain_is_recorded_and_the_others_finish(self, contract: Stores) -> None:
        """Chain 1 alone meets a row whose loss is NaN at step 3: it stops there, the others finish."""
        out = contract("divergence")
        hit = data(out / "hit.zarr")
        assert list(hit.chain_diverged_step.values) == [-1, 3, -1]
        assert hit.attrs["completed"] == 1
        assert_close(hit, data(out / "clean.zarr"), chains=[0, 2])

    def test_masks_freeze_the_rest_and_metrics_count_only_sampled_weights(self, contract: Stores) -> None:
        out = contract("masks")
        res, full = data(out / "masked.zarr"), data(out / "full.zarr")
        numel = tiny_gpt2().transformer.h[0].mlp.c_fc.bias.numel()
        assert res.attrs["distinterp"]["num_sampled_params"] == numel
        acc = res.metrics_mala_acceptance.values
        assert acc.shape == (res.sizes["chain"], res.sizes["step"])
        assert ((acc[:, 1:] >= 0) & (acc[:, 1:] <= 1)).all()
        assert not np.array_equal(res.sampling_loss.values, full.sampling_loss.values)

    def test_a_preempted_chain_continues_from_its_checkpoint(self, contract: Stores) -> None:
        out = contract("checkpoints")
        resumed = data(out / "resumed.zarr")
        assert np.isfinite(resumed.metrics_mala_acceptance.values[:, 50]).all()
        assert_close(resumed, data(out / "clean.zarr"))


class InProcess(EngineContract):
    """An engine that runs in this process: each case is made in the test's tmp_path."""

    options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def contract(self, tmp_path: Path) -> Stores:
        def make(case: str) -> Path:
            CASES[case](tmp_path / case, self.options)
            return tmp_path / case

        return make


class TestSerialEngine(InProcess):
    options: ClassVar[dict[str, Any]] = {}


class TestBatchedEngine(InProcess):
    options: ClassVar[dict[str, Any]] = {"chains_per_batch": 2}
