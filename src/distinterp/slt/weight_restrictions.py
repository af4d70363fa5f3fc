"""devinterp.slt.weight_restrictions: parameter masks from restriction strings (distinterp.masks)."""

from distinterp.masks import WeightRestrictionError, create_param_masks, preview_weight_restriction

__all__ = ["WeightRestrictionError", "create_param_masks", "preview_weight_restriction"]
