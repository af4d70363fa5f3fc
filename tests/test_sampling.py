"""sample(): equality with devinterp 2.0.1, store reuse and refusal, chain subsets, divergence, bad input."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
import xarray as xr

import distinterp
from distinterp.data import DatasetError
from distinterp.parallel.plan import PlanError
from tests.conftest import SMALL, devinterp_sample, tiny_gpt2, token_dataset


def tree_hash(path: Path) -> str:
    """Hash of every file's name and bytes under a store."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_same_data(a: xr.Dataset, b: xr.Dataset, names: list[str] | None = None) -> None:
    for name in names or list(b.data_vars):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name, strict=True)
        assert a[name].dims == b[name].dims, name


REFERENCE_CASES = {
    "defaults": {},
    "everything": dict(
        dropout=0.1,
        gradient_accumulation_steps=2,
        num_burnin_steps=2,
        num_steps_bw_draws=2,
        localization=1.0,
        llc_weight_decay=0.1,
        bounding_box_size=0.5,
        init_noise=0.01,
        save_metrics=True,
    ),
    "rmsprop_masked": dict(
        sampling_method="rmsprop_sgld", rmsprop_eps=0.2, masks=True, save_metrics=True, localization=2.0
    ),
    "unmatched_unshuffled": dict(match_sampling_input_ids_across_chains=False, shuffle=False),
    "independent_orders": dict(
        match_sampling_input_ids_across_chains=False, num_draws=4, num_init_loss_batches=5
    ),
    "custom_loss": dict(loss_fn=True, noise_level=0.5),
}


def _custom_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return distinterp.compute_per_token_loss(model, input_ids) ** 2


@pytest.mark.reference
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_bitwise_equal_to_devinterp(case: str, tmp_path: Path) -> None:
    dv = pytest.importorskip("devinterp.slt.sampling")
    opts = dict(REFERENCE_CASES[case])
    model = tiny_gpt2(dropout=opts.pop("dropout", 0.0))
    if opts.pop("masks", False):
        opts["param_masks"] = {
            "transformer.h.0.attn.c_attn.weight": torch.rand(
                16, 48, generator=torch.Generator().manual_seed(3)
            )
            > 0.5,
            "transformer.h.0.mlp.c_fc.bias": None,
        }
    if opts.pop("loss_fn", False):
        opts["loss_fn"] = _custom_loss
    ds = token_dataset()
    ds_t = ds.with_format("torch")
    kwargs = {**SMALL, **opts}
    ours = distinterp.sample(
        model, ds, {"train": ds, "code-x": (ds, 2)}, output_path=tmp_path / "a.zarr", **kwargs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dv.sample(
            model,
            ds_t,
            {"train": ds_t, "code-x": (ds_t, 2)},
            output_path=tmp_path / "b.zarr",
            device="cpu",
            **kwargs,
        )
    assert_same_data(ours.dataset, ref.dataset)
    assert ours.dataset.attrs["metadata"] == ref.dataset.attrs["metadata"]


@pytest.mark.reference
def test_stores_interoperate_with_devinterp(tmp_path: Path) -> None:
    """A distinterp store analyses identically in devinterp and the other way round."""
    model, ds = tiny_gpt2(), token_dataset()
    ours = distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / "a.zarr", **SMALL)
    theirs = devinterp_sample(model, ds, tmp_path / "b.zarr", **SMALL)
    reopened = devinterp_sample(model, ds, tmp_path / "a.zarr", **SMALL)  # devinterp reuses our store
    from devinterp.slt.llc import compute_llc as dv_compute_llc

    for a, b in [
        (distinterp.compute_llc(ours), dv_compute_llc(theirs)),
        (distinterp.compute_llc(theirs), dv_compute_llc(ours)),
    ]:
        for v in ["llc_mean", "llc_std", "llc_per_chain", "llc_scalar", "loss_trace", "init_loss"]:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert reopened.dataset.attrs["completed"] == 1
    # and distinterp returns devinterp's completed store as it is
    again = distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / "b.zarr", **SMALL)
    assert_same_data(again.dataset, theirs.dataset)


def test_complete_store_is_returned_untouched(model, dataset, tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    before = tree_hash(out)
    tree = distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    assert tree_hash(out) == before
    assert tree.dataset.attrs["completed"] == 1


@pytest.mark.parametrize(
    "change",
    [dict(lr=2e-3), dict(num_draws=7), dict(obs_seed=1), dict(batches_per_draw=2), "model", "data", "masks"],
    ids=str,
)
def test_other_config_is_refused_and_store_untouched(change, model, dataset, tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    before = tree_hash(out)
    kwargs: dict = dict(SMALL)
    m, ds = model, dataset
    if change == "model":
        m = tiny_gpt2(seed=5)
    elif change == "data":
        ds = token_dataset(seed=9)
    elif change == "masks":
        kwargs["param_masks"] = {"transformer.wte.weight": None}
    else:
        kwargs.update(change)
    with pytest.raises(distinterp.StoreConfigMismatch, match="has a different sampler config"):
        distinterp.sample(m, ds, {"train": ds}, output_path=out, **kwargs)
    assert tree_hash(out) == before


def test_chain_subsets_compose_into_the_full_run(model, dataset, tmp_path: Path) -> None:
    full = distinterp.sample(model, dataset, {"train": dataset}, output_path=tmp_path / "full.zarr", **SMALL)
    out = tmp_path / "parts.zarr"
    part = distinterp.sample(model, dataset, {"train": dataset}, output_path=out, chains=[0, 2], **SMALL)
    assert list(part.dataset.chain_steps_done.values) == [6, 0, 6]
    assert "completed" not in part.dataset.attrs
    with pytest.raises(distinterp.IncompleteStoreError, match=r"chain 1 \(0/6 steps\)"):
        distinterp.compute_llc(part)
    with pytest.warns(UserWarning, match="incomplete chains \\[1\\]"):
        partial = distinterp.compute_llc(part, allow_partial=True)
    assert partial.attrs["chains"] == [0, 2]
    done = distinterp.sample(model, dataset, {"train": dataset}, output_path=out, chains=[1], **SMALL)
    assert done.dataset.attrs["completed"] == 1
    assert_same_data(done.dataset, full.dataset)


def test_diverged_chain_is_recorded_and_excluded(model, dataset, tmp_path: Path) -> None:
    calls: dict[int, int] = {}

    def flaky_loss(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        loss = distinterp.compute_per_token_loss(m, ids)
        if torch.is_grad_enabled():  # sampling steps of the chain seeded init_seed + 1
            seed = torch.initial_seed()
            calls[seed] = calls.get(seed, 0) + 1
            if seed == 101 and calls[seed] > 3:
                return loss * float("nan")
        return loss

    with pytest.warns(UserWarning, match="Chain 1 diverged at step 3"):
        tree = distinterp.sample(
            model, dataset, {"train": dataset}, output_path=tmp_path / "d.zarr", loss_fn=flaky_loss, **SMALL
        )
    ds = tree.dataset
    assert list(ds.chain_diverged_step.values) == [-1, 3, -1]
    assert ds.attrs["completed"] == 1
    assert np.isnan(ds.sampling_loss_micro.values[1, 4:]).all()
    assert not np.isnan(ds.sampling_loss_micro.values[[0, 2]]).any()
    with pytest.warns(UserWarning, match=r"excluding diverged chains 1 \(at step 3\)"):
        res = distinterp.compute_llc(tree)
    assert res.attrs["excluded_chains"] == [1]
    assert np.isfinite(res.llc_mean.item())


def _ragged():
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [[1, 2, 3], [1, 2]] * 10})


BAD_INPUTS = {
    "negative lr": (dict(lr=-1.0), pydantic.ValidationError, "lr"),
    "zero chains": (dict(num_chains=0), pydantic.ValidationError, "num_chains"),
    "bad sampling_method": (dict(sampling_method="hmc"), pydantic.ValidationError, "sampling_method"),
    "unknown keyword": (dict(num_chainz=2), TypeError, "num_chainz"),
    "rmsprop alias on sgld": (dict(rmsprop_eps=0.1), ValueError, "rmsprop_eps"),
    "unknown method kwarg": (dict(sampling_method_kwargs={"beta": 1}), pydantic.ValidationError, "beta"),
    "no input_ids": (dict(dataset="no_ids"), DatasetError, "no 'input_ids' column"),
    "ragged rows": (dict(dataset="ragged"), DatasetError, "different lengths"),
    "out of vocabulary": (dict(dataset="oov"), DatasetError, "vocabulary"),
    "observables not a dict": (dict(observables=["train"]), DatasetError, "observables"),
    "observable tuple": (dict(observables="tuple3"), DatasetError, "batches_per_draw"),
    "observable too small": (dict(observables="small"), DatasetError, "batches_per_draw"),
    "unknown mask name": (dict(param_masks={"nope.weight": None}), ValueError, "nope.weight"),
    "mask shape": (
        dict(param_masks={"transformer.wte.weight": torch.ones(3, dtype=torch.bool)}),
        ValueError,
        "mask shape",
    ),
    "loss shape": (dict(loss_fn=lambda m, x: torch.zeros(x.shape[0])), ValueError, "loss_fn"),
    "cuda unavailable": (dict(device="cuda:0"), ValueError, "device"),
    "chains out of range": (dict(chains=[0, 7]), PlanError, "chains"),
    "batch larger than data": (dict(batch_size=100), DatasetError, "batch"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_any_write(case: str, model, dataset, tmp_path: Path) -> None:
    from datasets import Dataset

    if case == "cuda unavailable" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    change, exc, match = BAD_INPUTS[case]
    kwargs: dict = {**SMALL, "dataset": dataset, "observables": {"train": dataset}}
    kwargs.update(change)
    special = {
        "no_ids": Dataset.from_dict({"text": ["a", "b"]}),
        "ragged": _ragged(),
        "oov": token_dataset(vocab_size=64),
    }
    if isinstance(kwargs["dataset"], str):
        kwargs["dataset"] = special[kwargs["dataset"]]
    if kwargs["observables"] == "tuple3":
        kwargs["observables"] = {"train": (dataset, 2, 3)}
    if kwargs["observables"] == "small":
        kwargs["observables"] = {"train": (token_dataset(rows=5), 2)}
    out = tmp_path / "never.zarr"
    with pytest.raises(exc, match=match):
        distinterp.sample(model, output_path=out, **kwargs)
    assert not out.exists()


def test_non_finite_logits_at_start_raise(dataset, tmp_path: Path) -> None:
    model = tiny_gpt2()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(distinterp.NonFiniteLogitsError, match="starting point"):
        distinterp.sample(model, dataset, {"train": dataset}, output_path=tmp_path / "x.zarr", **SMALL)
    assert not (tmp_path / "x.zarr").exists()


def test_plain_tensor_model_and_masks_freeze_other_parameters(dataset, tmp_path: Path) -> None:
    """A plain nn.Module returning logits; a partial mask leaves unmasked elements bitwise fixed (metrics: distance)."""

    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
            self.bias = torch.nn.Parameter(torch.zeros(32))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.table[ids] + self.bias

    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:4] = True
    tree = distinterp.sample(
        Bigram(),
        dataset,
        {"train": dataset},
        output_path=tmp_path / "b.zarr",
        param_masks={"table": mask},
        save_metrics=True,
        **SMALL,
    )
    ds = tree.dataset
    assert ds.attrs["metrics_numel"] == 4 * 32
    assert (ds.metrics_distance.values[:, 1:] > 0).all()


GOLDEN = Path(__file__).parent / "assets" / "golden_tiny.json"


def test_golden_loss_trace(tmp_path: Path) -> None:
    """The tiny model's losses (tests.jobs' config: dropout, 2 observables) match the checked-in trace, so a
    change that moves the numbers shows up here even where distinterp and devinterp would move together.
    Regenerate deliberately with DISTINTERP_REGENERATE_GOLDEN=1."""
    import json
    import os

    from tests.jobs import run

    run(str(tmp_path / "g.zarr"), dropout=0.1, num_draws=8, gradient_accumulation_steps=2)
    ds = xr.open_datatree(tmp_path / "g.zarr", engine="zarr", consolidated=False).dataset
    got = {
        "init_loss": ds.init_loss.mean("token_pos").values.tolist(),
        "sampling_loss": ds.sampling_loss.mean(["batch", "token_pos"]).values.tolist(),
        "loss_probe": ds.loss_probe.mean(["batch_probe", "token_pos"]).values.tolist(),
        "llc_per_chain": distinterp.compute_llc(ds).llc_per_chain.values.tolist(),
    }
    if os.environ.get("DISTINTERP_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    for name, values in expected.items():  # float tolerance: other CPUs may sum in another order
        np.testing.assert_allclose(got[name], values, rtol=2e-5, atol=1e-6, err_msg=name)


class _PooledLogits(torch.nn.Module):
    """A model whose forward returns (batch, vocab): one logit vector per sequence, not per position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 32)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids).mean(dim=1)


def test_logits_of_the_wrong_rank_are_named_before_sampling(tmp_path):
    """Defect 12: the start-up probe names the logits' shape and the fix, instead of a raw RuntimeError."""
    ds = token_dataset()
    with pytest.raises(ValueError, match=r"logits of shape \(4, 32\).*\(batch, seq, vocab\).*loss_fn"):
        distinterp.sample(_PooledLogits(), ds, {"train": ds}, output_path=tmp_path / "r.zarr", **SMALL)
    assert not (tmp_path / "r.zarr").exists()


def test_rows_longer_than_the_models_context_are_named(tmp_path):
    """Rows of 40 tokens for a GPT-2 of context 32: one message naming both and the fix (was an IndexError)."""
    ds = token_dataset(seq=40)
    with pytest.raises(
        ValueError, match=r"rows have 40 tokens but the model takes at most 32 \(config.n_positions\)"
    ):
        distinterp.sample(tiny_gpt2(), ds, {"train": ds}, output_path=tmp_path / "r.zarr", **SMALL)
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("chains_per_batch", [1, 2])
def test_save_metrics_distance_records_only_the_distance_and_leaves_the_samples_alone(
    tmp_path: Path, chains_per_batch: int
) -> None:
    """save_metrics="distance" (calibrate's localization check): the losses are those of save_metrics=False
    (the same update) and metrics_distance that of save_metrics=True, bit for bit, one chain at a time
    or batched; no other metrics_* array."""
    dataset = token_dataset()
    runs = {}
    for metrics in (False, True, "distance"):
        tree = distinterp.sample(
            tiny_gpt2(),
            dataset,
            {},
            output_path=tmp_path / f"{metrics}.zarr",
            save_metrics=metrics,
            chains_per_batch=chains_per_batch,
            **{**SMALL, "localization": 0.0},
        )
        runs[metrics] = tree.dataset
    only = runs["distance"]
    assert [v for v in only.data_vars if str(v).startswith("metrics_")] == ["metrics_distance"]
    np.testing.assert_array_equal(only.sampling_loss_micro.values, runs[False].sampling_loss_micro.values)
    np.testing.assert_array_equal(only.metrics_distance.values, runs[True].metrics_distance.values)
    assert (only.metrics_distance.values[:, 1:] > 0).all()
