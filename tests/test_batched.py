"""chains_per_batch=K: K chains advanced as one vmapped computation equal the same chains run one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import distinterp
from distinterp.data import BatchFeed, input_ids_tensor
from distinterp.provenance import NumericEnvironmentWarning
from distinterp.store import StoreConfigMismatch
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_sampling import assert_same_data

CASES = {
    "everything": dict(
        gradient_accumulation_steps=2,
        num_burnin_steps=2,
        num_steps_bw_draws=2,
        localization=1.0,
        llc_weight_decay=0.1,
        bounding_box_size=0.5,
        init_noise=0.01,
        save_metrics=True,
    ),
    "rmsprop_masked_unmatched": dict(
        sampling_method="rmsprop_sgld",
        rmsprop_eps=0.2,
        masks=True,
        save_metrics=True,
        match_sampling_input_ids_across_chains=False,
        init_noise=0.02,
    ),
}


def assert_same_layout(a: xr.Dataset, b: xr.Dataset) -> None:
    """Same variables, dims, shapes, dtypes and chunks: stores interchangeable for every reader."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        va, vb = a[name], b[name]
        assert (va.dims, va.shape, va.dtype) == (vb.dims, vb.shape, vb.dtype), name
        assert va.encoding.get("chunks") == vb.encoding.get("chunks"), name


def assert_close(a: xr.Dataset, b: xr.Dataset, chains: list[int] | None = None) -> None:
    """Float variables to float tolerance (batched kernels sum in another order), the rest exactly."""
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        if chains is not None and a[name].dims[:1] == ("chain",):
            x, y = x[chains], y[chains]
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def _opts(case: str) -> dict:
    opts = {**SMALL, **CASES[case]}
    if opts.pop("masks", False):
        opts["param_masks"] = {
            "transformer.h.0.attn.c_attn.weight": torch.rand(
                16, 48, generator=torch.Generator().manual_seed(3)
            )
            > 0.5,
            "transformer.h.0.mlp.c_fc.bias": None,
        }
    return opts


@pytest.mark.parametrize("case", list(CASES))
def test_batched_chains_equal_serial_chains(case: str, tmp_path: Path) -> None:
    """3 chains with K=2 (groups of 2 and 1) against K=1: same rows to float tolerance, same layout."""
    model, ds = tiny_gpt2(), token_dataset()
    obs = {"train": ds, "code-x": (ds, 2)}
    serial = distinterp.sample(model, ds, obs, output_path=tmp_path / "s.zarr", **_opts(case)).dataset
    batched = distinterp.sample(
        model, ds, obs, output_path=tmp_path / "b.zarr", chains_per_batch=2, **_opts(case)
    ).dataset
    assert_same_layout(serial, batched)
    assert_close(serial, batched)
    assert serial.attrs["metadata"] == batched.attrs["metadata"]


def _nan_on_row(row: torch.Tensor):
    """A loss that is NaN on any batch containing `row` (data-dependent without host control flow)."""

    def loss_fn(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        loss = distinterp.compute_per_token_loss(model, input_ids)
        hit = (input_ids == row).all(dim=-1).any()
        return torch.where(hit, torch.nan, loss)

    return loss_fn


def _clean_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return distinterp.compute_per_token_loss(model, input_ids)


def test_a_diverging_chain_stops_alone_and_the_others_keep_their_bits(tmp_path: Path) -> None:
    """Chain 1 alone sees a row whose loss is NaN at step 3: it stops there, as when run serially; the
    other chains of its batch are bitwise what they are without it."""
    model, ds = tiny_gpt2(), token_dataset()
    opts = {**SMALL, "match_sampling_input_ids_across_chains": False}
    ids = input_ids_tensor(ds, "dataset")
    orders = [
        BatchFeed.build(ids, 4, shuffle=True, seed=100 + c, epoch_mode="cycle").order[:6] for c in range(3)
    ]
    seen_elsewhere = {int(r) for c in (0, 2) for r in orders[c].flatten()} | {
        int(r) for r in orders[1][:3].flatten()
    }
    bad = next(int(r) for r in orders[1][3] if int(r) not in seen_elsewhere)
    flaky = _nan_on_row(ids[bad])
    obs = {"probe": (token_dataset(seed=2), 2)}
    with pytest.warns(UserWarning, match="Chain 1 diverged at step 3"):
        hit = distinterp.sample(
            model, ds, obs, output_path=tmp_path / "hit.zarr", loss_fn=flaky, chains_per_batch=3, **opts
        ).dataset
    clean = distinterp.sample(
        model, ds, obs, output_path=tmp_path / "clean.zarr", loss_fn=_clean_loss, chains_per_batch=3, **opts
    ).dataset
    with pytest.warns(UserWarning, match="Chain 1 diverged at step 3"):
        serial = distinterp.sample(
            model, ds, obs, output_path=tmp_path / "s.zarr", loss_fn=flaky, **opts
        ).dataset
    assert list(hit.chain_diverged_step.values) == list(serial.chain_diverged_step.values) == [-1, 3, -1]
    for name in ["sampling_loss_micro", "sampling_loss", "loss_probe", "init_loss"]:
        np.testing.assert_array_equal(hit[name].values[[0, 2]], clean[name].values[[0, 2]], err_msg=name)
    np.testing.assert_array_equal(
        hit.sampling_loss_micro.values[1, :3], clean.sampling_loss_micro.values[1, :3]
    )
    assert np.isnan(hit.sampling_loss_micro.values[1, 4:]).all()
    assert_same_layout(hit, serial)


PREFLIGHT = 2
"""Gradient calls of the loss before the batched engine's first step: its preflight runs the model as
itself and batched once each (`BatchedEngine.preflight`)."""


class _Preempt:
    """A loss that raises once after `after` gradient steps (a preempted job), then behaves."""

    def __init__(self, after: int | None):
        self.after = after
        self.calls = 0

    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.after is not None:
            self.calls += 1
            if self.calls > self.after:
                self.after = None
                raise RuntimeError("preempted")
        return distinterp.compute_per_token_loss(model, input_ids)

    def __repr__(self) -> str:  # the store's identity names the loss function
        return "preempt"


@pytest.mark.slow
def test_preempted_batched_chains_continue_from_their_checkpoints(tmp_path: Path) -> None:
    """Stopped at step 51 of 52 with checkpoints at 50, the rerun continues from step 50: with the same K,
    byte-identical to an uninterrupted run; a serial checkpoint continued batched matches serial."""
    model, ds = tiny_gpt2(), token_dataset()
    opts = {
        **SMALL,
        "num_chains": 2,
        "num_draws": 52,
        "sampling_method": "rmsprop_sgld",
        "checkpoint_every": 50,
    }
    obs = {"train": ds}

    def run(name: str, k: int, loss: _Preempt) -> xr.Dataset:
        out = tmp_path / name
        return distinterp.sample(
            model, ds, obs, output_path=out, loss_fn=loss, chains_per_batch=k, **opts
        ).dataset

    ref_b, ref_s = run("ref_b.zarr", 2, _Preempt(None)), run("ref_s.zarr", 1, _Preempt(None))
    # batched: +2 for the preflight's two gradient calls; serially, chain 0 runs its 52 steps first
    for name, k, stop, then in [("b.zarr", 2, PREFLIGHT + 51, 2), ("s.zarr", 1, 52 + 51, 2)]:
        loss = _Preempt(stop)
        with pytest.raises(RuntimeError, match="preempted"):
            run(name, k, loss)
        assert (tmp_path / f"{name}.checkpoints").exists()
        if k == then:
            resumed = run(name, then, loss)
        else:  # the store records that its rows come from two engines
            with pytest.warns(NumericEnvironmentWarning, match="engine 'serial' -> 'batched'"):
                resumed = run(name, then, loss)
        if k == then:
            assert_same_data(resumed, ref_b)
        else:  # chain 1: serial to step 50, then batched: float rounding only
            for v in ["sampling_loss_micro", "sampling_loss", "loss_train"]:
                np.testing.assert_allclose(resumed[v].values, ref_s[v].values, rtol=1e-4, err_msg=v)


@pytest.mark.parametrize("method", ["sgmcmc_sgld", "rmsprop_sgld"])
def test_preempted_batched_chains_record_the_uninterrupted_metrics(method: str, tmp_path: Path) -> None:
    """save_metrics, stopped at step 6 of 8 with checkpoints at 4: the rerun writes the uninterrupted bytes,
    MALA acceptance included (the checkpoints carry each chain's previous point, sliced from the stack)."""
    model, ds = tiny_gpt2(), token_dataset()
    opts = {
        **SMALL,
        "num_chains": 2,
        "num_burnin_steps": 4,
        "num_draws": 4,
        "localization": 1.0,
        "sampling_method": method,
        "save_metrics": True,
        "checkpoint_every": 4,
        "chains_per_batch": 2,
    }

    def run(name: str, loss: _Preempt) -> xr.Dataset:
        return distinterp.sample(
            model, ds, {"train": ds}, output_path=tmp_path / name, loss_fn=loss, **opts
        ).dataset

    clean = run("clean.zarr", _Preempt(None))
    loss = _Preempt(PREFLIGHT + 6)
    with pytest.raises(RuntimeError, match="preempted"):
        run("resumed.zarr", loss)
    assert (tmp_path / "resumed.zarr.checkpoints").exists()
    resumed = run("resumed.zarr", loss)
    assert np.isfinite(resumed.metrics_mala_acceptance.values[:, 4]).all()  # the first step after the resume
    assert_same_data(resumed, clean)


def test_batched_dropout_chains_are_independent_and_reproducible(tmp_path: Path) -> None:
    """With dropout, each chain of a batch draws its own masks (vmap randomness="different") from the
    global RNG seeded by the group's first chain: the same run reproduces bytes; chains differ even on
    one data order; serial runs are not reproduced (dropout draws interleave with the noise there)."""
    model, ds = tiny_gpt2(dropout=0.1), token_dataset()
    opts = {**SMALL, "chains_per_batch": 3, "num_draws": 3}
    a, b = (
        distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / f"{n}.zarr", **opts).dataset
        for n in "ab"
    )
    assert_same_data(a, b)
    micro = a.sampling_loss_micro.values
    assert np.isfinite(micro).all()
    assert not np.array_equal(micro[0], micro[1]) and not np.array_equal(micro[1], micro[2])
    np.testing.assert_array_equal(a.sampling_input_ids_micro.values[0], a.sampling_input_ids_micro.values[1])


@pytest.mark.distributed
@pytest.mark.slow
def test_world_size_does_not_change_batched_chains(tmp_path: Path) -> None:
    """K=2 fixed: 1 process (groups (0,1), (2,3)) and 2 ranks (groups (0,2) and (1,3)) write equal rows."""
    from tests.test_distributed import finish, run_single, torchrun

    opts = {"num_chains": 4, "chains_per_batch": 2, "save_metrics": True, "gradient_accumulation_steps": 2}
    run_single(tmp_path / "one.zarr", opts)
    finish(torchrun(2, tmp_path / "two.zarr", opts))
    one, two = (xr.open_zarr(tmp_path / f"{n}.zarr", consolidated=False) for n in ("one", "two"))
    assert_same_data(one, two)


def test_llc_and_the_runner_pass_chains_per_batch_on(tmp_path: Path) -> None:
    """llc(..., chains_per_batch=K) samples batched (kwargs go to sample); settings carry parallel.chains_per_batch."""
    from distinterp.jobs.settings import load_settings

    model, ds = tiny_gpt2(), token_dataset()
    opts = {**SMALL, "num_draws": 3}
    serial = distinterp.llc(model, ds, {"train": ds}, output_path=tmp_path / "s.zarr", **opts)
    batched = distinterp.llc(
        model, ds, {"train": ds}, output_path=tmp_path / "b.zarr", chains_per_batch=3, **opts
    )
    np.testing.assert_allclose(batched.llc_per_chain.values, serial.llc_per_chain.values, rtol=1e-4)
    overrides = ["output_path=x.zarr", "sampler.lr=1e-3", "sampler.n_beta=2", "parallel.chains_per_batch=4"]
    settings = load_settings(None, overrides)
    assert settings.parallel.chains_per_batch == 4


@pytest.mark.slow
def test_speed_options_change_numerics_only_as_documented(tmp_path: Path) -> None:
    """autocast_dtype='bfloat16': losses within ~1e-2 relative of float32, and a store of its own identity;
    compile (the aot_eager backend here: no C++ compiler needed) of the batched step: float rounding."""
    model, ds = tiny_gpt2(), token_dataset()
    opts = {**SMALL, "num_draws": 3, "chains_per_batch": 3}
    obs = {"train": ds}
    ref = distinterp.sample(model, ds, obs, output_path=tmp_path / "f32.zarr", **opts).dataset
    bf16 = distinterp.sample(
        model, ds, obs, output_path=tmp_path / "bf16.zarr", autocast_dtype="bfloat16", **opts
    )
    np.testing.assert_allclose(
        bf16.dataset.sampling_loss_micro.values, ref.sampling_loss_micro.values, rtol=3e-2
    )
    assert bf16.dataset.sampling_loss_micro.dtype == np.float32
    with pytest.raises(
        StoreConfigMismatch, match="autocast_dtype: stored=None"
    ):  # a float32 store is not continued in bfloat16
        distinterp.sample(
            model, ds, obs, output_path=tmp_path / "f32.zarr", autocast_dtype="bfloat16", **opts
        )
    comp = distinterp.sample(
        model, ds, obs, output_path=tmp_path / "c.zarr", compile="aot_eager", **opts
    ).dataset
    assert_close(comp, ref)
    with pytest.raises(ValueError, match="autocast_dtype: expected None or one of"):
        distinterp.sample(model, ds, obs, autocast_dtype="int8", **opts)
    with pytest.raises(TypeError, match="compile: expected a bool"):
        distinterp.sample(model, ds, obs, compile=1, **opts)


def test_compile_captures_the_batched_loss_in_one_graph(tmp_path: Path) -> None:
    """torch.compile sees the batched step's loss as one graph: compute_per_token_loss does not break it (a
    break inside functional_call left the step wholly uncompiled). A recording backend: no inductor cost."""
    from torch._dynamo import register_backend

    graphs: list[torch.fx.GraphModule] = []

    @register_backend(name="distinterp_test_record")
    def record(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    ds = token_dataset()
    opts = {**SMALL, "num_chains": 2, "num_draws": 2, "chains_per_batch": 2}
    out = tmp_path / "c.zarr"
    distinterp.sample(
        tiny_gpt2(), ds, {"train": ds}, output_path=out, compile="distinterp_test_record", **opts
    )
    whole = [g for g in graphs if "log_softmax" in g.code and "embedding" in g.code and "isfinite" in g.code]
    assert whole and len(graphs) == len(whole), [g.code[:200] for g in graphs]


class _SlicedList(torch.nn.Module):
    """x -> W_3 W_2 W_1 x through a sliced nn.ParameterList: a slice wraps each item in a new nn.Parameter."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(3, 3, generator=g)) for _ in range(3)]
        )

    def product(self) -> torch.Tensor:
        out = self.w[0]
        for w in self.w[1:]:
            out = w @ out
        return out


def _sliced_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    loss = (model.product() ** 2).sum()  # type: ignore[operator]
    return loss.expand(input_ids.shape[0], input_ids.shape[1] - 1)


def test_a_model_whose_parameters_lose_their_gradient_when_batched_is_refused_before_any_write(
    tmp_path: Path,
) -> None:
    """Slicing a ParameterList gives its items no gradient under functional_call: batched, they would get
    noise only. The preflight names them and the fix before the store exists; one at a time it samples."""
    ds = token_dataset()
    opts = {**SMALL, "num_chains": 2, "num_draws": 3, "loss_fn": _sliced_loss}
    with pytest.raises(
        ValueError, match=r"chains_per_batch: parameter\(s\) 'w.1', 'w.2' get a gradient"
    ) as e:
        distinterp.sample(_SlicedList(), ds, {}, output_path=tmp_path / "b.zarr", chains_per_batch=2, **opts)
    assert "Use chains_per_batch=1, or index the list" in str(e.value)
    assert not (tmp_path / "b.zarr").exists()
    res = distinterp.sample(_SlicedList(), ds, {}, output_path=tmp_path / "s.zarr", **opts).dataset
    assert np.isfinite(res.sampling_loss.values).all()


def test_the_deep_linear_network_samples_the_same_batched(tmp_path: Path) -> None:
    """toy.DeepLinearNetwork indexes its layers, so batched chains get every layer's gradient: the same rows
    as one chain at a time (it sliced them, and batched chains moved one layer of three by its gradient)."""
    from distinterp import toy

    model = toy.DeepLinearNetwork([4, 3, 3, 4], 1, point="deepest")
    ids = toy.dln_regression_data(model, 64, seed=0)
    opts = dict(
        lr=1e-3,
        n_beta=50.0,
        localization=1.0,
        num_chains=2,
        num_draws=20,
        batch_size=8,
        loss_fn=toy.dln_population_loss,
        save_metrics=True,
    )
    serial = distinterp.sample(model, ids, {}, output_path=tmp_path / "s.zarr", **opts).dataset
    batched = distinterp.sample(
        model, ids, {}, output_path=tmp_path / "b.zarr", chains_per_batch=2, **opts
    ).dataset
    assert_close(serial, batched)
