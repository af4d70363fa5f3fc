"""distinterp: distributed SGLD sampling for LLC, BIF and susceptibilities, with devinterp 2.x's API."""

from distinterp.analyses.bif import AnalysisInputError, compute_bif
from distinterp.analyses.covariance import batch_corrcoef, batch_cov, xr_corrcoef_with_torch_backend
from distinterp.analyses.diagnostics import Diagnosis, UnhealthyRunWarning, diagnose
from distinterp.analyses.llc import compute_llc
from distinterp.analyses.susceptibilities import compute_susceptibilities
from distinterp.api import bif, llc, susceptibilities
from distinterp.config import SamplerConfig
from distinterp.errors import DamagedStoreError
from distinterp.loss import (
    NonFiniteLogitsError,
    compute_per_token_loss,
    lm_cross_entropy_loss,
    lm_forward_logits,
)
from distinterp.masks import WeightRestrictionError, create_param_masks, preview_weight_restriction
from distinterp.optim import SGLD, SGMCMC
from distinterp.sampling import sample
from distinterp.store import IncompleteStoreError, StoreConfigMismatch, StoreError
from distinterp.update import SGLDHyper, sgld_step

__all__ = [
    "SGLD",
    "SGMCMC",
    "AnalysisInputError",
    "DamagedStoreError",
    "Diagnosis",
    "IncompleteStoreError",
    "NonFiniteLogitsError",
    "SGLDHyper",
    "SamplerConfig",
    "StoreConfigMismatch",
    "StoreError",
    "UnhealthyRunWarning",
    "WeightRestrictionError",
    "batch_corrcoef",
    "batch_cov",
    "bif",
    "calibrate",
    "compute_bif",
    "compute_llc",
    "compute_per_token_loss",
    "compute_susceptibilities",
    "create_param_masks",
    "diagnose",
    "llc",
    "lm_cross_entropy_loss",
    "lm_forward_logits",
    "preview_weight_restriction",
    "report",
    "sample",
    "sgld_step",
    "susceptibilities",
    "sweep",
    "trajectory",
    "xr_corrcoef_with_torch_backend",
]
from distinterp._version import __version__ as __version__


def __getattr__(name: str) -> object:
    """`distinterp.report`, `calibrate`, `trajectory` and `sweep` are imported on first use: report brings
    matplotlib, and the sweeps the job machinery, which sampling never needs."""
    if name == "report":
        from distinterp.jobs.report import report

        return report
    if name == "calibrate":
        from distinterp.jobs.calibrate import calibrate

        return calibrate
    if name == "trajectory":
        from distinterp.jobs.trajectory import trajectory

        return trajectory
    if name == "sweep":
        from distinterp.jobs.grid import sweep

        return sweep
    raise AttributeError(f"module 'distinterp' has no attribute {name!r}")
