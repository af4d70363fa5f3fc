"""compute_bif / bif(): float64 NumPy reference and properties on random stores of the reference schema,
known +1/-1 answers, devinterp 2.0.1 equality, lazy zarr results, bad input, incomplete stores, 2 ranks
splitting the token-wise blocks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from distinterp.analyses.bif import AnalysisInputError, bif, compute_bif
from distinterp.store import IncompleteStoreError
from tests.test_distributed import finish, run_single, torchrun

SETTINGS = settings(max_examples=15, deadline=None)


def make_store(
    losses: dict[str, np.ndarray],
    *,
    path: Path | None = None,
    draw_chunk: int | None = None,
    steps_done: list[int] | None = None,
    init_loss: np.ndarray | None = None,
    ids_seed: int = 0,
) -> xr.DataTree:
    """A sampling store of the reference schema holding the given (chain, draw, batch, token_pos) losses."""
    first = next(iter(losses.values()))
    C, D, _, T = first.shape
    rng = np.random.default_rng(ids_seed)
    data: dict[str, Any] = {
        "init_loss": (("chain", "token_pos"), init_loss if init_loss is not None else np.full((C, T), 3.0)),
        "sampling_loss_micro": (("chain", "step", "batch_sampling", "token_pos"), np.full((C, D, 1, T), 3.0)),
    }
    for key, x in losses.items():
        data[f"loss_{key}"] = (("chain", "draw", f"batch_{key}", "token_pos"), x)
        data[f"input_ids_{key}"] = ((f"batch_{key}", "token"), rng.integers(0, 32, (x.shape[2], T + 1)))
    if steps_done is not None:
        data["chain_steps_done"] = (("chain",), np.asarray(steps_done, np.int64))
        data["chain_diverged_step"] = (("chain",), np.full(C, -1, np.int64))
    ds = xr.Dataset(
        {
            k: (d, np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else v)
            for k, (d, v) in data.items()
        }
    )
    ds.attrs["metadata"] = {"config": {"sampler": {"n_beta": 10.0}}}
    chunk = draw_chunk or min(50, D)
    for key, x in losses.items():
        ds[f"loss_{key}"].encoding["chunks"] = (1, chunk, x.shape[2], T)
    if path is None:
        return xr.DataTree(dataset=ds)
    ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return xr.open_datatree(path, engine="zarr", consolidated=False)


def random_losses(
    seed: int, chains: int, draws: int, sizes: dict[str, int], T: int, loc: float = 3.0
) -> dict[str, np.ndarray]:
    """Per-token losses with a shared per-draw component, so correlations are not all near zero."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(chains, draws, 1, T))
    return {
        k: (
            loc + common * rng.uniform(0.2, 1.0, (1, 1, n, 1)) + rng.normal(size=(chains, draws, n, T))
        ).astype(np.float32)
        for k, n in sizes.items()
    }


def numpy_bif(
    losses: dict[str, np.ndarray],
    *,
    token: bool = True,
    mean: bool = False,
    covariance: bool = False,
    rows_1: Any = "all",
    rows_2: Any = "all",
) -> np.ndarray:
    """The BIF in float64 straight from its definition: Pearson correlation over pooled observations."""
    x = np.concatenate([losses[k] for k in sorted(losses)], axis=2).astype(np.float64)  # (C, D, n, T)
    if not token:
        x = x.mean(axis=-1, keepdims=True)
    if mean:
        x = x.mean(axis=0, keepdims=True)
    obs = x.reshape(-1, *x.shape[2:])
    n = obs.shape[1]
    r1 = np.arange(n) if rows_1 == "all" else np.asarray(rows_1)
    r2 = np.arange(n) if rows_2 == "all" else np.asarray(rows_2)
    xc = obs - obs.mean(axis=0)
    out = np.einsum("kis,kjt->ijst", xc[:, r1], xc[:, r2]) / (len(obs) - 1)
    if not covariance:
        sd = np.sqrt((xc**2).sum(axis=0) / (len(obs) - 1))
        out /= sd[r1][:, None, :, None] * sd[r2][None, :, None, :]
    return out if token else out[..., 0, 0]


@st.composite
def stores(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], int, int]:
    """Random losses (1-3 chains, 3-7 draws, 1-2 observables of 1-4 rows, 1-4 tokens), a draw chunk, a block."""
    chains, draws, T = draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(1, 4))
    sizes = {k: draw(st.integers(1, 4)) for k in draw(st.sets(st.sampled_from(["a", "b_x"]), min_size=1))}
    loc = draw(st.floats(-50, 50))
    losses = random_losses(draw(st.integers(0, 2**32 - 1)), chains, draws, sizes, T, loc)
    return losses, draw(st.integers(1, draws)), draw(st.integers(1, 5))


@SETTINGS
@given(stores(), st.sampled_from(["token", "sequence"]), st.booleans(), st.booleans())
def test_matches_float64_reference(
    case: tuple[dict[str, np.ndarray], int, int], method: str, mean: bool, covariance: bool
) -> None:
    losses, draw_chunk, block = case
    if mean and next(iter(losses.values())).shape[1] < 2:
        return
    res = compute_bif(
        make_store(losses, draw_chunk=draw_chunk),
        correlation_method=method,  # type: ignore[arg-type]
        reduce_chain_dimension_method="mean" if mean else "stack",
        compute_covariance=covariance,
        batch_size=block,
        device="cpu",
    )
    expected = numpy_bif(losses, token=method == "token", mean=mean, covariance=covariance)
    np.testing.assert_allclose(res["influences"].values, expected, rtol=2e-4, atol=2e-4)
    assert res["influences"].dtype == np.float32


@SETTINGS
@given(stores(), st.integers(0, 2**32 - 1))
def test_correlation_properties(case: tuple[dict[str, np.ndarray], int, int], seed: int) -> None:
    """Symmetric, unit diagonal, within [-1, 1], and unchanged by per-sequence affine maps a*x + b (a > 0)."""
    losses, draw_chunk, block = case
    res = compute_bif(make_store(losses, draw_chunk=draw_chunk), batch_size=block, device="cpu")
    r = res["influences"].values.astype(np.float64)
    np.testing.assert_allclose(r, r.transpose(1, 0, 3, 2), atol=1e-5)
    n, T = r.shape[0], r.shape[2]
    np.testing.assert_allclose(r[np.arange(n), np.arange(n)][:, np.arange(T), np.arange(T)], 1.0, atol=1e-5)
    assert np.all(np.abs(r) <= 1 + 1e-5)
    rng = np.random.default_rng(seed)
    shifted = {
        k: (
            x * rng.uniform(0.5, 2.0, (1, 1, x.shape[2], 1)) + rng.uniform(-20, 20, (1, 1, x.shape[2], 1))
        ).astype(np.float32)
        for k, x in losses.items()
    }
    res2 = compute_bif(make_store(shifted, draw_chunk=draw_chunk), batch_size=block, device="cpu")
    np.testing.assert_allclose(res2["influences"].values, r, atol=5e-4)


def test_perfectly_correlated_and_anticorrelated_observables() -> None:
    """loss_b = 2 loss_a + 1 and loss_c = 3 - loss_a, row by row: +1 and -1 at matching rows and tokens."""
    a = random_losses(0, 2, 6, {"a": 3}, 4)["a"]
    losses = {"a": a, "b": 2 * a + 1, "c": 3 - a}
    for method in ("token", "sequence"):
        res = compute_bif(make_store(losses), correlation_method=method, batch_size=2, device="cpu")  # type: ignore[arg-type]
        r = res["influences"].values
        for i in range(3):
            ab, ac = r[i, 3 + i], r[i, 6 + i]
            if method == "token":
                ab, ac = np.diagonal(ab), np.diagonal(ac)
            np.testing.assert_allclose(ab, 1.0, atol=1e-5)
            np.testing.assert_allclose(ac, -1.0, atol=1e-5)


def test_output_layout_ranges_and_average() -> None:
    losses = random_losses(1, 2, 5, {"a": 3, "b": 2}, 4)
    tree = make_store(losses)
    res = compute_bif(
        tree, batch_index_range_1=[4, 0], batch_index_range_2=range(1, 4), batch_size=1, device="cpu"
    )
    assert res["influences"].dims == ("batch_1", "batch_2", "target_position", "target_position_T")
    assert res["batch_1"].values.tolist() == [4, 0] and res["batch_2"].values.tolist() == [1, 2, 3]
    assert res["target_position"].values.tolist() == [1, 2, 3, 4]
    assert res["input_ids"].dims == ("batch", "position") and res["input_ids"].shape == (5, 5)
    np.testing.assert_allclose(
        res["influences"].values, numpy_bif(losses, rows_1=[4, 0], rows_2=[1, 2, 3]), rtol=1e-4, atol=1e-5
    )
    avg = compute_bif(tree, average_tokenwise_bif=True, loss_keys=["b"], device="cpu")
    assert avg["influences"].dims == ("batch_1", "batch_2")
    full = numpy_bif({"b": losses["b"]})
    np.testing.assert_allclose(avg["influences"].values, full.mean(axis=(-1, -2)), rtol=1e-4, atol=1e-5)


def test_large_token_result_goes_to_zarr_beside_the_store(tmp_path: Path) -> None:
    losses = random_losses(2, 2, 7, {"a": 5}, 3)
    tree = make_store(losses, path=tmp_path / "s.zarr", draw_chunk=3)
    in_memory = compute_bif(tree, batch_size=2, device="cpu")
    lazy = compute_bif(tree, batch_size=2, device="cpu", max_result_bytes=0)
    assert (tmp_path / "s.bif.zarr").is_dir()
    assert not isinstance(lazy["influences"].variable._data, np.ndarray)  # backed by the zarr group
    xr.testing.assert_allclose(lazy, in_memory)
    chosen = compute_bif(tree, batch_size=3, device="cpu", output_path=tmp_path / "mine.zarr")
    xr.testing.assert_allclose(chosen, in_memory)
    assert (tmp_path / "mine.zarr" / "influences").is_dir()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(loss_keys=["a", "nope"]), "loss_keys"),
        (dict(loss_keys="a"), "loss_keys"),
        (dict(batch_index_range_1=[0, 9]), "batch_index_range_1"),
        (dict(batch_index_range_2=[-1]), "batch_index_range_2"),
        (dict(batch_index_range_2=[]), "batch_index_range_2"),
        (dict(batch_index_range_1=[0.5]), "batch_index_range_1"),
        (dict(correlation_method="tokens"), "correlation_method"),
        (dict(reduce_chain_dimension_method="median"), "reduce_chain_dimension_method"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    tree = make_store(random_losses(0, 1, 3, {"a": 2, "b": 2}, 2))
    with pytest.raises(AnalysisInputError, match=field):
        compute_bif(tree, device="cpu", **kwargs)


def test_mismatched_schema_names_the_field() -> None:
    tree = make_store(random_losses(0, 1, 3, {"a": 2}, 2))
    ds = tree.to_dataset().rename({"batch_a": "rows"})
    with pytest.raises(AnalysisInputError, match="loss_a has dims"):
        compute_bif(ds, device="cpu")
    ds = tree.to_dataset().drop_vars("input_ids_a")
    with pytest.raises(AnalysisInputError, match="input_ids_a"):
        compute_bif(ds, device="cpu")


def test_incomplete_store_refused_unless_allow_partial(tmp_path: Path) -> None:
    losses = random_losses(3, 3, 4, {"a": 2}, 3)
    tree = make_store(losses, path=tmp_path / "s.zarr", steps_done=[4, 2, 4])
    with pytest.raises(IncompleteStoreError, match=r"chain 1 \(2/4 steps\)"):
        compute_bif(tree, device="cpu")
    with pytest.warns(UserWarning, match="skipping incomplete chains"):
        res = compute_bif(tree, device="cpu", allow_partial=True)
    assert res.attrs["excluded_chains"] == [1]
    expected = numpy_bif({"a": losses["a"][[0, 2]]})
    np.testing.assert_allclose(res["influences"].values, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.reference
def test_equal_to_devinterp(tmp_path: Path) -> None:
    ref = pytest.importorskip("devinterp.slt.bif")
    losses = random_losses(4, 3, 8, {"train": 5, "probe_1": 3}, 4)
    tree = make_store(losses, path=tmp_path / "s.zarr", draw_chunk=3)
    options: list[dict[str, Any]] = [
        {},
        dict(reduce_chain_dimension_method="mean", compute_covariance=True),
        dict(correlation_method="sequence"),
        dict(correlation_method="sequence", reduce_chain_dimension_method="mean", compute_covariance=True),
        dict(average_tokenwise_bif=True, batch_size=3),
        dict(loss_keys=["probe_1"], batch_index_range_1=[2, 0], batch_index_range_2=[1], batch_size=2),
    ]
    for opts in options:
        expected = ref.compute_bif(tree, device="cpu", **opts)
        got = compute_bif(tree, device="cpu", **opts)
        xr.testing.assert_allclose(got.drop_attrs(), expected, rtol=1e-4, atol=1e-5)


# ─── bif() under torchrun ────────────────────────────────────────────────────

JOB = dict(lr=1e-3, n_beta=10.0, num_chains=3, num_draws=5, batch_size=4, num_init_loss_batches=2)
BIF_BLOCK = 3
"""8 sequences in blocks of 3: 3 x 3 = 9 pairs of blocks, 5 on rank 0 and 4 on rank 1 (in memory: 3 row
blocks, 2 and 1); the last blocks are short."""


def bif_job(out: Path) -> None:
    """bif() of the tiny GPT-2 (the same calls on every rank): in memory, then to zarr at `<out>.lazy.zarr`
    (the store is complete by then, so not sampled again). Each rank records what it got; rank 0 saves the
    in-memory result beside the store."""
    from tests.conftest import tiny_gpt2, token_dataset

    ds = token_dataset()
    observables = {"train": (ds, 1), "probe": (token_dataset(seed=2), 1)}
    res = bif(tiny_gpt2(), ds, observables, output_path=out, bif_batch_size=BIF_BLOCK, **JOB)
    lazy = bif(
        tiny_gpt2(),
        ds,
        observables,
        output_path=out,
        bif_batch_size=BIF_BLOCK,
        bif_output_path=f"{out}.lazy.zarr",
        **JOB,
    )
    record: dict[str, Any] = {"memory": None, "zarr": None}
    if res is not None and lazy is not None:
        res.to_zarr(f"{out}.result.zarr", zarr_format=3, consolidated=False)
        record = {
            "memory": res.attrs.get("blocks_per_rank", "single"),
            "zarr": lazy.attrs.get("blocks_per_rank", "single"),
            "lazy": not isinstance(lazy["influences"].variable._data, np.ndarray),
        }
    Path(f"{out}.rank{os.environ.get('RANK', '0')}").write_text(json.dumps(record))


@pytest.mark.distributed
def test_two_ranks_return_the_single_process_result_on_rank_0(tmp_path: Path) -> None:
    out = tmp_path / "two.zarr"
    finish(torchrun(2, out, module="tests.test_bif"))
    # both ranks computed blocks, in memory and into the shared zarr group; only rank 0 got the result
    # (an in-memory result is computed a whole row block at a time: 3 blocks, 2 on rank 0)
    split = {"memory": [2, 1], "zarr": [5, 4], "lazy": True}
    assert json.loads(Path(f"{out}.rank0").read_text()) == split
    assert json.loads(Path(f"{out}.rank1").read_text()) == {"memory": None, "zarr": None}
    one = tmp_path / "one.zarr"
    run_single(one, module="tests.test_bif")
    assert json.loads(Path(f"{one}.rank0").read_text()) == {
        "memory": "single",
        "zarr": "single",
        "lazy": True,
    }
    opened = [
        xr.open_dataset(p, engine="zarr", consolidated=False)
        for p in (f"{one}.result.zarr", f"{out}.result.zarr", f"{out}.lazy.zarr", f"{one}.lazy.zarr")
    ]
    single, *others = [d.load() for d in opened]
    for d in opened:
        d.close()
    assert single.sizes["batch_1"] == 8 and not np.isnan(single["influences"].values).any()
    for other in others:  # bitwise: each block is the same computation whichever rank runs it
        xr.testing.assert_equal(other.drop_attrs(), single.drop_attrs())


if __name__ == "__main__":
    bif_job(Path(sys.argv[1]))
