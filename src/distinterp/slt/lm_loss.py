"""devinterp.slt.lm_loss: logits and per-token loss for language models (distinterp.loss), and the
`(loss, extras)` evaluate protocol of sample_single_chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from distinterp.loss import (
    LossFn,
    NonFiniteLogitsError,
    compute_per_token_loss,
    lm_cross_entropy_loss,
    lm_forward_logits,
    resolve_loss_fn,
)

EvaluateFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
"""(model, batch with "input_ids") -> (per-token loss (batch, seq-1), extras)."""

__all__ = [
    "EvaluateFn",
    "LossFn",
    "NonFiniteLogitsError",
    "compute_per_token_loss",
    "lm_cross_entropy_loss",
    "lm_forward_logits",
    "make_evaluate_fn",
]


def make_evaluate_fn(loss_fn: LossFn | None = None) -> EvaluateFn:
    """An evaluate callable for sample_single_chain: (loss_fn(model, batch["input_ids"]), {}).

    loss_fn defaults to compute_per_token_loss (cross-entropy on the model's logits).
    """
    fn = resolve_loss_fn(loss_fn)

    def evaluate(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return fn(model, batch["input_ids"]), {}

    return evaluate
