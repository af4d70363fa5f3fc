"""devinterp.utils: `default_nbeta` (distinterp.config) and `tokenize_and_concatenate` (distinterp.data)."""

from distinterp.config import default_nbeta
from distinterp.data import tokenize_and_concatenate

__all__ = ["default_nbeta", "tokenize_and_concatenate"]
