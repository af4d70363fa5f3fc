"""devinterp.slt.llc: the local learning coefficient from a sampling store (distinterp.analyses.llc)."""

from distinterp.analyses.llc import compute_llc, llc
from distinterp.sampling import sample

__all__ = ["compute_llc", "llc", "sample"]
