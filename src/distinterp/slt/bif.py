"""devinterp.slt.bif: Bayesian influence functions (distinterp.analyses.bif)."""

from distinterp.analyses.bif import AnalysisInputError, bif, compute_bif

__all__ = ["AnalysisInputError", "bif", "compute_bif"]
