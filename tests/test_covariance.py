"""Covariance kernels against float64 NumPy: devinterp's batched shapes, streaming blocks, running moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from distinterp.analyses.covariance import (
    Moments,
    batch_corrcoef,
    batch_cov,
    cross_products,
    normalise_block,
    xr_corrcoef_with_torch_backend,
)

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def series_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two random (n, series, observations) float64 arrays with a shared observation count."""
    n_a, n_b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s_a, s_b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    obs = draw(st.integers(3, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.floats(1e-2, 1e2))
    return rng.normal(size=(n_a, s_a, obs)) * scale, rng.normal(size=(n_b, s_b, obs)) * scale + 3.0


def numpy_stacked(a: np.ndarray, b: np.ndarray, corr: bool) -> np.ndarray:
    out = np.empty((a.shape[0], b.shape[0], a.shape[1] + b.shape[1], a.shape[1] + b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            stacked = np.concatenate([a[i], b[j]])
            out[i, j] = np.corrcoef(stacked) if corr else np.cov(stacked)
    return out


@SETTINGS
@given(series_pair(), st.booleans())
def test_batch_functions_match_numpy(pair: tuple[np.ndarray, np.ndarray], corr: bool) -> None:
    a, b = pair
    fn = batch_corrcoef if corr else batch_cov
    got = fn(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(got, numpy_stacked(a, b, corr), rtol=1e-9, atol=1e-12)
    if corr:
        assert np.all(np.diagonal(got, axis1=-2, axis2=-1) == 1.0)
        assert np.all(np.abs(got) <= 1 + 1e-12)


@SETTINGS
@given(series_pair(), st.booleans())
def test_streamed_block_equals_the_cross_block_of_batch_corrcoef(
    pair: tuple[np.ndarray, np.ndarray], corr: bool
) -> None:
    """Cross products summed over observation chunks, normalised once = batch_cov/corrcoef[:, :, :s_a, s_a:]."""
    a, b = pair
    s_a = a.shape[1]
    ta = torch.as_tensor(a - a.mean(-1, keepdims=True))
    tb = torch.as_tensor(b - b.mean(-1, keepdims=True))
    n_obs = a.shape[-1]
    sums = sum(cross_products(ta[..., k : k + 2], tb[..., k : k + 2]) for k in range(0, n_obs, 2))
    std_a, std_b = (torch.as_tensor(x.std(-1, ddof=1)) for x in (a, b))
    got = normalise_block(sums, n_obs, *((std_a, std_b) if corr else (None, None))).numpy()
    full = (batch_corrcoef if corr else batch_cov)(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(got, full[:, :, :s_a, s_a:], rtol=1e-9, atol=1e-12)


@SETTINGS
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=5),
    st.floats(-1e6, 1e6),
    st.integers(0, 2**32 - 1),
)
def test_moments_do_not_depend_on_chunking(splits: list[int], offset: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(2, 3, sum(splits))) + offset
    m = Moments.empty((2, 3))
    start = 0
    for k in splits:
        m.update(x[..., start : start + k])
        start += k
    np.testing.assert_allclose(m.mean, x.mean(-1), rtol=1e-12, atol=1e-9)
    if x.shape[-1] > 1:
        np.testing.assert_allclose(m.std(), x.std(-1, ddof=1), rtol=1e-7, atol=1e-9)


def test_xr_corrcoef_with_torch_backend_shape_and_values() -> None:
    rng = np.random.default_rng(0)
    s1 = xr.DataArray(rng.normal(size=(3, 10)), dims=("batch", "chain_draw"), coords={"batch": [0, 1, 2]})
    s2 = xr.DataArray(rng.normal(size=(2, 10)), dims=("batch", "chain_draw"), coords={"batch": [5, 6]})
    for cov in (False, True):
        res = xr_corrcoef_with_torch_backend(s1, s2, device="cpu", compute_covariance=cov)
        assert res["correlation"].dims == ("batch", "batch_T")
        assert res["batch"].values.tolist() == [0, 1, 2, 5, 6] == res["batch_T"].values.tolist()
        stacked = np.concatenate([s1.values, s2.values])
        expected = np.cov(stacked) if cov else np.corrcoef(stacked)
        np.testing.assert_allclose(res["correlation"].values, expected, rtol=1e-10)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="3-d"):
        batch_cov(torch.zeros(2, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="observation counts"):
        batch_cov(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="float32 or float64"):
        batch_corrcoef(torch.zeros(1, 2, 3, dtype=torch.int64), torch.zeros(1, 2, 3))
    a = xr.DataArray(np.zeros((2, 3)), dims=("x", "y"))
    with pytest.raises(ValueError, match="same dims"):
        xr_corrcoef_with_torch_backend(a, a.T, device="cpu")
