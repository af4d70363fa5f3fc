"""Forward pass -> logits -> per-token next-token loss, for HF, TransformerLens and plain models."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, cast

import torch

from distinterp.errors import NonFiniteLogitsError as NonFiniteLogitsError  # re-exported: its old home

LossFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""(model, input_ids (batch, seq)) -> per-token loss (batch, seq - 1)."""


_DEFER_FINITE_CHECK: ContextVar[bool] = ContextVar("defer_finite_check", default=False)


@contextlib.contextmanager
def deferred_finite_check() -> Iterator[None]:
    """Inside the chain loop, compute_per_token_loss marks rows whose logits are non-finite as NaN instead
    of raising: no host synchronisation per forward (and it works under vmap). The recorder finds the NaN
    loss at its next flush and stops the chain at that step, as the raise did."""
    token = _DEFER_FINITE_CHECK.set(True)
    try:
        yield
    finally:
        _DEFER_FINITE_CHECK.reset(token)


def is_transformer_lens_model(model: torch.nn.Module) -> bool:
    """TransformerLens HookedTransformer models carry a `cfg` with `n_heads`."""
    return hasattr(model, "cfg") and hasattr(model.cfg, "n_heads")


def to_device(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`model.to(device)`; a HookedTransformer's own `to` without the line it prints on every move."""
    if is_transformer_lens_model(model):
        moved: torch.nn.Module = cast(Any, model).to(device, print_details=False)
        return moved
    return model.to(device)


CONTEXT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len")
"""Config attributes that give a model's longest input (HF configs; TransformerLens cfg.n_ctx)."""


def context_limit(model: torch.nn.Module) -> tuple[int, str] | None:
    """(the longest input the model takes, the config attribute saying so), or None when it does not say."""
    for cfg_name in ("config", "cfg"):
        cfg = getattr(model, cfg_name, None)
        for attr in CONTEXT_ATTRS:
            v = getattr(cfg, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v, f"{cfg_name}.{attr}"
    return None


def lm_forward_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Run a forward pass and return logits (batch, seq, vocab)."""
    if is_transformer_lens_model(model):
        return cast(torch.Tensor, model(input_ids, return_type="logits"))
    from transformers import PreTrainedModel  # a core dependency; imported on first use (slow to import)

    if isinstance(model, PreTrainedModel):
        return cast(torch.Tensor, model(input_ids, return_dict=False, use_cache=False)[0])
    output = model(input_ids)
    return cast(torch.Tensor, output.logits if hasattr(output, "logits") else output)


def lm_cross_entropy_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy of predicting input_ids[:, 1:] from logits[:, :-1]; (batch, seq-1)."""
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    return -log_probs[..., :-1, :].gather(dim=-1, index=input_ids[..., 1:, None])[..., 0]


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """Whether every element is finite, as a 0-d bool tensor (no host sync): the min and the max are finite
    exactly then (both propagate NaN), and one aminmax pass is ~10x cheaper than isfinite(t).all()."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    return torch.isfinite(torch.stack(torch.aminmax(t))).all()


def compute_per_token_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy loss, (batch, seq-1); raises NonFiniteLogitsError on NaN/Inf logits
    (inside `deferred_finite_check`, the whole loss is NaN then instead; finite logits give the same bits).
    Under torch.compile always the NaN form: dynamo traces neither ContextVar.get nor a raise on a value,
    and a graph break inside functional_call (the batched engine) would leave the whole step uncompiled."""
    logits = lm_forward_logits(model, input_ids)
    loss = lm_cross_entropy_loss(logits, input_ids)
    finite = all_finite(logits)
    if torch.compiler.is_compiling() or _DEFER_FINITE_CHECK.get():
        return torch.where(finite, loss, torch.nan)
    if not finite:
        raise NonFiniteLogitsError("Non-finite values detected in model logits.")
    return loss


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_loss(fn: LossFn, dtype: str) -> LossFn:
    """`fn` under torch.autocast(dtype) on the input's device, its loss returned as float32.

    Numerics: the model's matmuls run in `dtype` (bfloat16: 8 mantissa bits, so losses and gradients move
    by ~1e-2 relative), while softmax/log-softmax, the per-token loss and everything downstream (gradient
    accumulation, the SGLD update, the recorded losses) stay float32. Chains are no longer bitwise devinterp.
    """
    torch_dtype = AUTOCAST_DTYPES[dtype]

    def loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=input_ids.device.type, dtype=torch_dtype):
            out = fn(model, input_ids)
        return out.float()

    loss.__qualname__ = f"autocast_{dtype}({getattr(fn, '__qualname__', repr(fn))})"
    return loss


def resolve_loss_fn(loss_fn: LossFn | None) -> LossFn:
    """The user's loss_fn, or next-token cross-entropy."""
    return loss_fn if loss_fn is not None else compute_per_token_loss
