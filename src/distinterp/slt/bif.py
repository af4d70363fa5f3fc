"""devinterp.slt.bif: Bayesian influence functions (distinterp.analyses.bif)."""

from distinterp.analyses.bif import AnalysisInputError, compute_bif
from distinterp.analyses.covariance import batch_corrcoef, batch_cov, xr_corrcoef_with_torch_backend
from distinterp.api import bif
from distinterp.sampling import sample

__all__ = [
    "AnalysisInputError",
    "batch_corrcoef",
    "batch_cov",
    "bif",
    "compute_bif",
    "sample",
    "xr_corrcoef_with_torch_backend",
]
