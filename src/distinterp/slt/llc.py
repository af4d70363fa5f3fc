"""devinterp.slt.llc: the local learning coefficient from a sampling store (distinterp.analyses.llc)."""

from distinterp.analyses.llc import compute_llc, llc

__all__ = ["compute_llc", "llc"]
