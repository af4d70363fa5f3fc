"""The one way a job writes an analysis result: distinterp.store.results.write_result (below the analyses,
so the grid analyses write through it too), under its old import path."""

from distinterp.store.results import write_result as write_result

__all__ = ["write_result"]
