"""compute_susceptibilities / susceptibilities(): the appendix C.4 formula in float64, the flattened layout,
devinterp 2.0.1 equality, one store per restriction, bad input before sampling, incomplete stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from distinterp.analyses.bif import AnalysisInputError
from distinterp.analyses.susceptibilities import compute_susceptibilities, restriction_path, susceptibilities
from distinterp.store import IncompleteStoreError
from tests.conftest import SMALL, tiny_gpt2, token_dataset
from tests.test_bif import make_store, random_losses

SIZES = {"pile": 3, "probe": 2, "other_x": 1}


def wr_stores(
    seed: int,
    names: list[str],
    chains: int = 2,
    draws: int = 5,
    T: int = 3,
    directory: Path | None = None,
    **kw: Any,
) -> dict[str, xr.DataTree]:
    """Random stores of the reference schema, one per restriction name (zarr ones under `directory`)."""
    rng = np.random.default_rng(seed)
    return {
        name: make_store(
            random_losses(seed + i, chains, draws, SIZES, T),
            init_loss=2.5 + rng.normal(size=(chains, T)),
            path=None if directory is None else directory / f"{name}.zarr",
            **kw,
        )
        for i, name in enumerate(names)
    }


def numpy_sus(wr_map: dict[str, xr.DataTree], task: str, obs: str) -> dict[str, np.ndarray]:
    """chi_w = E_w[phi (Pbar - l)] - E_w[phi] E_full[Pbar - l], phi = Pbar - L0, in float64."""
    full = wr_map["full"].dataset
    L0 = full["init_loss"].values.astype(np.float64).mean()
    e_full = full[f"loss_{task}"].values.astype(np.float64).mean() - full[f"loss_{obs}"].values.astype(
        np.float64
    ).mean((0, 1))
    out = {}
    for name, tree in wr_map.items():
        if name == "full":
            continue
        pbar = tree.dataset[f"loss_{task}"].values.astype(np.float64).mean((2, 3))
        phi = (pbar - L0)[..., None, None]
        probe = tree.dataset[f"loss_{obs}"].values.astype(np.float64)
        out[name] = (phi * (pbar[..., None, None] - probe)).mean((0, 1)) - phi.mean() * e_full
    return out


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 3), st.integers(2, 6), st.integers(1, 4))
def test_matches_float64_formula_and_layout(seed: int, chains: int, draws: int, T: int) -> None:
    wr_map = wr_stores(seed, ["full", "l0", "l1 mlp"], chains, draws, T, draw_chunk=max(1, draws // 2))
    res = compute_susceptibilities(wr_map, "pile")
    sus = res["susceptibilities"].to_dataset()
    assert sus.attrs["dataset_id_to_name"] == ["other_x", "probe"]
    assert sus["wr"].values.tolist() == ["l0", "l1 mlp"]
    assert sus["sus"].dims == ("sus_flat", "wr") and sus["sus"].dtype == np.float32
    for i, obs in enumerate(["other_x", "probe"]):
        sel = sus["dataset_id"].values == i
        b, t = sus["batch"].values[sel], sus["target_position"].values[sel]
        assert t.min() == 1 and t.max() == T
        expected = numpy_sus(wr_map, "pile", obs)
        for w in ["l0", "l1 mlp"]:
            got = sus["sus"].sel(wr=w).values[sel]
            np.testing.assert_allclose(got, expected[w][b, t - 1], rtol=1e-4, atol=1e-5)
    ctx = res["context"].to_dataset()
    assert ctx["input_ids"].shape == (SIZES["other_x"] * (T + 1) + SIZES["probe"] * (T + 1),)
    assert ctx["position"].values.min() == 0


def test_sampling_task_included_on_request() -> None:
    wr_map = wr_stores(0, ["full", "l0"])
    res = compute_susceptibilities(wr_map, "pile", include_sampling_task=True)
    assert res["susceptibilities"].attrs["dataset_id_to_name"] == ["other_x", "pile", "probe"]
    res = compute_susceptibilities(wr_map, "pile", observable_names=["probe"])
    assert res["susceptibilities"].attrs["dataset_id_to_name"] == ["probe"]


@pytest.mark.reference
def test_equal_to_devinterp(tmp_path: Path) -> None:
    ref = pytest.importorskip("devinterp.slt.susceptibilities")
    wr_map = wr_stores(7, ["full", "l0h1", "embed"], chains=3, draws=7, T=4, directory=tmp_path, draw_chunk=3)
    for opts in ({}, {"include_sampling_task": True}, {"observable_names": ["probe"]}):
        expected = ref.compute_susceptibilities(wr_map, "pile", **opts)
        got = compute_susceptibilities(wr_map, "pile", **opts)
        for node in ("susceptibilities", "context"):
            xr.testing.assert_allclose(
                got[node].to_dataset(), expected[node].to_dataset(), rtol=1e-4, atol=1e-6
            )
            assert got[node].attrs == expected[node].attrs


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.pop("full"), "'full'"),
        (lambda m: m.pop("l0"), "besides 'full'"),
        (
            lambda m: m.update(l0=make_store(random_losses(0, 2, 5, {**SIZES, "probe": 4}, 3))),
            "differ from 'full'",
        ),
        (
            lambda m: m.update(l0=make_store(random_losses(0, 2, 5, SIZES, 3), ids_seed=9)),
            "store field input_ids_",
        ),
    ],
)
def test_bad_maps_name_the_field(change: Any, match: str) -> None:
    wr_map = wr_stores(0, ["full", "l0"])
    change(wr_map)
    with pytest.raises(AnalysisInputError, match=match):
        compute_susceptibilities(wr_map, "pile")


def test_bad_task_and_observables_name_the_field() -> None:
    wr_map = wr_stores(0, ["full", "l0"])
    with pytest.raises(AnalysisInputError, match="sampling_task"):
        compute_susceptibilities(wr_map, "pile10k")
    with pytest.raises(AnalysisInputError, match="observable_names"):
        compute_susceptibilities(wr_map, "pile", observable_names=["nope"])
    with pytest.raises(AnalysisInputError, match="observable_names"):
        compute_susceptibilities(wr_map, "pile", observable_names=[])


def test_incomplete_restriction_store(tmp_path: Path) -> None:
    wr_map = wr_stores(1, ["full", "l0"], chains=3, draws=4, steps_done=[4, 4, 1])
    with pytest.raises(IncompleteStoreError, match=r"chain 2 \(1/4 steps\)"):
        compute_susceptibilities(wr_map, "pile")
    with pytest.warns(UserWarning, match="incomplete chains"):
        res = compute_susceptibilities(wr_map, "pile", allow_partial=True)
    sub = {k: xr.DataTree(dataset=v.to_dataset().isel(chain=[0, 1])) for k, v in wr_map.items()}
    expected = numpy_sus(sub, "pile", "probe")["l0"]
    got = res["susceptibilities"]["sus"].values[res["susceptibilities"]["dataset_id"].values == 1, 0]
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-4, atol=1e-5)


def test_restriction_paths() -> None:
    assert restriction_path(Path("/a/samples.zarr"), "l0h1") == Path("/a/samples_l0h1.zarr")
    assert restriction_path("s3://b/run/samples.zarr", "full") == "s3://b/run/samples_full.zarr"


def test_susceptibilities_samples_one_store_per_restriction(tmp_path: Path) -> None:
    model, ds = tiny_gpt2(), token_dataset()
    observables = {"train": (ds, 1), "probe": (token_dataset(seed=2), 1)}
    kwargs = {**SMALL, "num_chains": 2, "num_draws": 4}
    restrictions = {"full": None, "l0 attn": {"transformer.h.0.attn.c_attn.weight": None}}
    with pytest.raises(AnalysisInputError, match="sampling_task"):
        susceptibilities(
            model,
            ds,
            observables,
            restrictions,
            sampling_task="pile",
            output_path=tmp_path / "s.zarr",
            **kwargs,
        )
    with pytest.raises(AnalysisInputError, match="'full'"):
        susceptibilities(
            model,
            ds,
            observables,
            {"l0": None},
            sampling_task="train",
            output_path=tmp_path / "s.zarr",
            **kwargs,
        )
    assert not list(tmp_path.iterdir()), "nothing is sampled or written before the checks"
    res = susceptibilities(
        model, ds, observables, restrictions, sampling_task="train", output_path=tmp_path / "s.zarr", **kwargs
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_full.zarr", "s_l0 attn.zarr"]
    trees = {
        w: xr.open_datatree(tmp_path / f"s_{w}.zarr", engine="zarr", consolidated=False) for w in restrictions
    }
    assert res is not None
    xr.testing.assert_equal(
        res["susceptibilities"].to_dataset(),
        compute_susceptibilities(trees, "train")["susceptibilities"].to_dataset(),
    )
