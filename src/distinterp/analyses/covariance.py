"""Covariance and Pearson correlation kernels: devinterp 2.x's batched functions, and the streaming pieces
(running moments, cross-covariance blocks) the BIF uses to work through a store block by block.

Pure tensor/array math: nothing here reads a store or knows about ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr


def batch_cov(batched_a: torch.Tensor, batched_b: torch.Tensor) -> torch.Tensor:
    """Covariance of every pair (a_i, b_j) of series sets: (n_a, s_a, obs), (n_b, s_b, obs) ->
    (n_a, n_b, s_a + s_b, s_a + s_b), the covariance matrix of the stacked series (devinterp's shape)."""
    if batched_a.dim() != 3 or batched_b.dim() != 3:
        raise ValueError(
            f"batch_cov: expected 3-d tensors (n, series, observations), got shapes "
            f"{tuple(batched_a.shape)} and {tuple(batched_b.shape)}"
        )
    if batched_a.shape[2] != batched_b.shape[2]:
        raise ValueError(
            f"batch_cov: observation counts differ: {batched_a.shape[2]} != {batched_b.shape[2]}"
        )
    n_a, s_a, n_obs = batched_a.shape
    n_b, s_b, _ = batched_b.shape
    a = batched_a - batched_a.mean(dim=2, keepdim=True)
    b = batched_b - batched_b.mean(dim=2, keepdim=True)
    combined = torch.cat(
        [a[:, None].expand(n_a, n_b, s_a, n_obs), b[None, :].expand(n_a, n_b, s_b, n_obs)], dim=2
    )
    return combined @ combined.transpose(-1, -2) / (n_obs - 1)


def batch_corrcoef(batched_a: torch.Tensor, batched_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every pair (a_i, b_j), shaped as `batch_cov`; the diagonal is exactly 1."""
    for name, t in (("batched_a", batched_a), ("batched_b", batched_b)):
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"batch_corrcoef: {name} must be float32 or float64, got {t.dtype}")
    cov = batch_cov(batched_a, batched_b)
    std = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))
    cov /= std.unsqueeze(-1) * std.unsqueeze(-2)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return cov * (1 - eye) + eye


def xr_corrcoef_with_torch_backend(
    seq1: xr.DataArray,
    seq2: xr.DataArray,
    *,
    device: str | torch.device,
    compute_covariance: bool = False,
) -> xr.Dataset:
    """Correlation (or covariance) matrix of the rows of seq1 and seq2 stacked: dims (dim_1, dim_1_T)."""
    if seq1.ndim != 2 or seq2.ndim != 2 or seq1.dims != seq2.dims:
        raise ValueError(
            f"xr_corrcoef_with_torch_backend: expected two 2-d arrays with the same dims, got {seq1.dims} "
            f"and {seq2.dims}"
        )
    dim_1 = str(seq1.dims[0])
    stacked = xr.concat([seq1, seq2], dim=dim_1)
    data = torch.as_tensor(np.asarray(stacked.values), device=device)
    matrix = (torch.cov(data) if compute_covariance else torch.corrcoef(data)).cpu().numpy()
    coord = np.asarray(stacked[dim_1])
    dim_2 = f"{dim_1}_T"
    return xr.Dataset({"correlation": ((dim_1, dim_2), matrix)}, coords={dim_1: coord, dim_2: coord})


# ─── Streaming pieces ────────────────────────────────────────────────────────


@dataclass
class Moments:
    """Running count, mean and sum of squared deviations over the last axis, merged chunk by chunk.

    Chan, Golub & LeVeque (1979) pairwise update, in float64, so the result does not depend on how the
    observations were split into chunks and stays exact under large per-series offsets.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Moments:
        return cls(0, np.zeros(shape), np.zeros(shape))

    def update(self, chunk: np.ndarray) -> None:
        """Fold in `chunk` of shape (*shape, k): k more observations of every series."""
        x = np.asarray(chunk, dtype=np.float64)
        k = x.shape[-1]
        if k == 0:
            return
        mean_k = x.mean(axis=-1)
        m2_k = ((x - mean_k[..., None]) ** 2).sum(axis=-1)
        n = self.count + k
        delta = mean_k - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2_k + delta**2 * (self.count * k / n)
        self.count = n

    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof 1), as torch.corrcoef and devinterp's batch_cov use."""
        return np.sqrt(self.m2 / (self.count - 1))


def cross_products(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over observations of a[i, s, k] * b[j, t, k]: (n_a, s_a, k), (n_b, s_b, k) -> (n_a, n_b, s_a, s_b).

    One matmul; with centred inputs this is (n_obs - 1) times the off-diagonal block [:s_a, s_a:] of
    `batch_cov`, the only block the token-wise BIF keeps, at a quarter of the work and no concatenation.
    The result is a permuted view of the matmul's (n_a, s_a, n_b, s_b) output, written into `out` if given.
    """
    n_a, s_a, k = a.shape
    n_b, s_b, _ = b.shape
    flat = None if out is None else out.view(n_a * s_a, n_b * s_b)
    res = torch.matmul(a.reshape(n_a * s_a, k), b.reshape(n_b * s_b, k).T, out=flat)
    return res.view(n_a, s_a, n_b, s_b).permute(0, 2, 1, 3)


def standardise(x: np.ndarray, covariance: bool = False) -> np.ndarray:
    """Series (..., obs) as float32 z such that sum_k z_a[k] z_b[k] is their Pearson correlation, or with
    `covariance` their covariance: z = (x - mean) / sqrt(sum (x - mean)^2), or / sqrt(n_obs - 1). Moments
    in float64, so the only float32 rounding left is in the products' sum."""
    xc = x.astype(np.float64)
    xc -= xc.mean(axis=-1, keepdims=True)
    if covariance:
        xc /= np.sqrt(x.shape[-1] - 1)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            xc /= np.sqrt(np.einsum("...k,...k->...", xc, xc))[..., None]
    return xc.astype(np.float32)


def normalise_block(
    sums: torch.Tensor,
    n_obs: int,
    std_a: torch.Tensor | None = None,
    std_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Covariance from centred cross-product sums, or Pearson correlation when both stds are given:

    cov(a_is, b_jt) = sum_k a~_isk b~_jtk / (n_obs - 1),  corr = cov / (std(a_is) std(b_jt)).
    """
    cov = sums / (n_obs - 1)
    if std_a is None or std_b is None:
        return cov
    return cov / (std_a[:, None, :, None] * std_b[None, :, None, :])
