"""devinterp.slt.susceptibilities: per-token susceptibilities (distinterp.analyses.susceptibilities)."""

from distinterp.analyses.susceptibilities import compute_susceptibilities, susceptibilities

__all__ = ["compute_susceptibilities", "susceptibilities"]
