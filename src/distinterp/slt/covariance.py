"""devinterp.slt.covariance: batched covariance and correlation (distinterp.analyses.covariance)."""

from distinterp.analyses.covariance import batch_corrcoef, batch_cov, xr_corrcoef_with_torch_backend

__all__ = ["batch_corrcoef", "batch_cov", "xr_corrcoef_with_torch_backend"]
