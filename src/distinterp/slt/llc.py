"""devinterp.slt.llc: the local learning coefficient from a sampling store (distinterp.analyses.llc)."""

from distinterp.analyses.llc import compute_llc
from distinterp.api import llc
from distinterp.sampling import sample

__all__ = ["compute_llc", "llc", "sample"]
