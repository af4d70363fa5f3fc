"""devinterp.slt.susceptibilities: per-token susceptibilities (distinterp.analyses.susceptibilities)."""

from distinterp.analyses.susceptibilities import compute_susceptibilities
from distinterp.api import susceptibilities
from distinterp.data import to_obs_id
from distinterp.sampling import sample

__all__ = ["compute_susceptibilities", "sample", "susceptibilities", "to_obs_id"]
