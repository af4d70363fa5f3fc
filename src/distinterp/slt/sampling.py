"""devinterp.slt.sampling: `sample()`, SGLD chains streamed to a zarr store (distinterp.sampling)."""

from distinterp.sampling import ObservableSpec, sample

__all__ = ["ObservableSpec", "sample"]
