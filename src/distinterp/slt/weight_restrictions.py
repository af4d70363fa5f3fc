"""devinterp.slt.weight_restrictions: parameter masks from restriction strings (distinterp.masks)."""

from distinterp.loss import is_transformer_lens_model
from distinterp.masks import WeightRestrictionError, create_param_masks, preview_weight_restriction
from distinterp.model_structures import STRUCTURES

HEAD_STRUCTURES = STRUCTURES
"""devinterp's name for the table of model layouts; ours maps a family to ModelStructure(s), not dicts."""

__all__ = [
    "HEAD_STRUCTURES",
    "WeightRestrictionError",
    "create_param_masks",
    "is_transformer_lens_model",
    "preview_weight_restriction",
]
