"""One contract every in-process engine passes (zarr-python's StoreTests pattern): resume, divergence,
masks, metrics with the MALA acceptance, and checkpoints, each run through serial (chains_per_batch=1)
and batched (chains_per_batch=2) engines. The sharded engine needs torchrun ranks: tests/test_sharded.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import distinterp
from distinterp.data import BatchFeed, input_ids_tensor
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_batched import _clean_loss, _nan_on_row, _Preempt, assert_close

ENGINES: dict[str, dict[str, Any]] = {"serial": {}, "batched": {"chains_per_batch": 2}}
pytestmark = pytest.mark.parametrize("engine", list(ENGINES))


def run(path: Path, engine: str, **kwargs: Any) -> Any:
    ds = token_dataset()
    opts = {**SMALL, **ENGINES[engine], **kwargs}
    return distinterp.sample(tiny_gpt2(), ds, {"train": ds}, output_path=path, **opts).dataset


def test_resume_of_a_partial_store_equals_one_run(engine: str, tmp_path: Path) -> None:
    whole = run(tmp_path / "whole.zarr", engine)
    run(tmp_path / "parts.zarr", engine, chains=[1])
    parts = run(tmp_path / "parts.zarr", engine)
    assert parts.attrs["completed"] == 1
    assert_close(parts, whole)


def test_a_diverged_chain_is_recorded_and_the_others_finish(engine: str, tmp_path: Path) -> None:
    """Chain 1 alone meets a row whose loss is NaN at step 3: it stops there, the others finish."""
    model, ds = tiny_gpt2(), token_dataset()
    opts = {**SMALL, **ENGINES[engine], "match_sampling_input_ids_across_chains": False}
    ids = input_ids_tensor(ds, "dataset")
    orders = [
        BatchFeed.build(ids, 4, shuffle=True, seed=100 + c, epoch_mode="cycle").order[:6] for c in range(3)
    ]
    seen = {int(r) for c in (0, 2) for r in orders[c].flatten()} | {int(r) for r in orders[1][:3].flatten()}
    bad = next(int(r) for r in orders[1][3] if int(r) not in seen)
    obs = {"probe": (token_dataset(seed=2), 2)}
    with pytest.warns(UserWarning, match="Chain 1 diverged at step 3"):
        hit = distinterp.sample(
            model, ds, obs, output_path=tmp_path / "hit.zarr", loss_fn=_nan_on_row(ids[bad]), **opts
        ).dataset
    clean = distinterp.sample(
        model, ds, obs, output_path=tmp_path / "clean.zarr", loss_fn=_clean_loss, **opts
    ).dataset
    assert list(hit.chain_diverged_step.values) == [-1, 3, -1]
    assert hit.attrs["completed"] == 1
    assert_close(hit, clean, chains=[0, 2])


def test_masks_freeze_the_rest_and_metrics_count_only_sampled_weights(engine: str, tmp_path: Path) -> None:
    masks: dict[str, torch.Tensor | None] = {"transformer.h.0.mlp.c_fc.bias": None}
    res = run(tmp_path / "m.zarr", engine, param_masks=masks, save_metrics=True)
    numel = tiny_gpt2().transformer.h[0].mlp.c_fc.bias.numel()
    assert res.attrs["distinterp"]["num_sampled_params"] == numel
    acc = res.metrics_mala_acceptance.values
    assert acc.shape == (SMALL["num_chains"], res.sizes["step"])
    assert ((acc[:, 1:] >= 0) & (acc[:, 1:] <= 1)).all()
    full = run(tmp_path / "f.zarr", engine, save_metrics=True)
    assert not np.array_equal(res.sampling_loss.values, full.sampling_loss.values)


def test_a_preempted_chain_continues_from_its_checkpoint(engine: str, tmp_path: Path) -> None:
    opts = {"num_draws": 52, "checkpoint_every": 50, "save_metrics": True}
    clean = run(tmp_path / "clean.zarr", engine, loss_fn=_Preempt(None), **opts)
    loss = _Preempt(51)
    with pytest.raises(RuntimeError, match="preempted"):
        run(tmp_path / "resumed.zarr", engine, loss_fn=loss, **opts)
    resumed = run(tmp_path / "resumed.zarr", engine, loss_fn=loss, **opts)
    assert np.isfinite(resumed.metrics_mala_acceptance.values[:, 50]).all()
    assert_close(resumed, clean)
