"""SamplerConfig: the devinterp-compatible sampler settings, validated once."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

EpochMode = Literal["once", "cycle"]
SamplingMethodLiteral = Literal["sgmcmc_sgld", "rmsprop_sgld"]

RMSPROP_KWARGS = frozenset({"alpha", "eps", "add_grad_correction"})

_OPTIMIZER_NAMES = {
    "SGLD": "sgmcmc_sgld",
    "SGMCMC.sgld": "sgmcmc_sgld",
    "SGMCMC.rmsprop_sgld": "rmsprop_sgld",
}


def sampling_method_name(value: Any) -> Any:
    """A sampling_method name; devinterp's / distinterp's optimizers (SGLD, SGMCMC.sgld,
    SGMCMC.rmsprop_sgld) stand for theirs. Anything else is returned for the Literal to reject."""
    module = getattr(value, "__module__", None) or ""
    if not isinstance(value, str) and module.startswith(("distinterp.optim", "devinterp.optim")):
        return _OPTIMIZER_NAMES.get(getattr(value, "__qualname__", ""), value)
    return value


class SamplerConfig(BaseModel):
    """Configuration for SGLD sampling (field names, types and defaults of devinterp 2.x)."""

    model_config = ConfigDict(extra="forbid")

    lr: NonNegativeFloat
    n_beta: NonNegativeFloat

    batch_size: PositiveInt = 32
    num_chains: PositiveInt = 4
    num_draws: PositiveInt = 200
    num_burnin_steps: NonNegativeInt = 0
    num_steps_bw_draws: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    num_init_loss_batches: PositiveInt = 32

    init_seed: int = 100

    localization: NonNegativeFloat = 0.0
    noise_level: NonNegativeFloat = 1.0
    llc_weight_decay: NonNegativeFloat = 0.0
    bounding_box_size: NonNegativeFloat | None = None

    sampling_method: SamplingMethodLiteral = "sgmcmc_sgld"
    sampling_method_kwargs: dict[str, Any] = Field(default_factory=dict)

    init_noise: NonNegativeFloat | None = None
    save_metrics: bool | Literal["distance"] = False
    """True: every metrics_* array (devinterp's); "distance": only metrics_distance (distinterp's)."""
    shuffle: bool = True
    epoch_mode: EpochMode = "cycle"
    match_sampling_input_ids_across_chains: bool = True

    @field_validator("sampling_method", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return sampling_method_name(value)

    @model_validator(mode="after")
    def _check_method_kwargs(self) -> SamplerConfig:
        allowed = RMSPROP_KWARGS if self.sampling_method == "rmsprop_sgld" else frozenset()
        unknown = sorted(set(self.sampling_method_kwargs) - allowed)
        if unknown:
            raise ValueError(
                f"sampling_method_kwargs has keys {unknown} that sampling_method={self.sampling_method!r} "
                f"does not take; allowed: {sorted(allowed) or 'none'}"
            )
        if self.sampling_method_kwargs.get("add_grad_correction"):
            raise ValueError(
                "sampling_method_kwargs['add_grad_correction']=True is not implemented (as in devinterp); "
                "remove it"
            )
        alpha = self.sampling_method_kwargs.get("alpha", 0.99)
        eps = self.sampling_method_kwargs.get("eps", 0.1)
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"sampling_method_kwargs['alpha'] must be in [0, 1), got {alpha!r}")
        if not float(eps) > 0.0:
            raise ValueError(f"sampling_method_kwargs['eps'] must be > 0, got {eps!r}")
        return self

    @property
    def num_sgld_steps(self) -> int:
        """Total SGLD steps per chain: burn-in plus draws times steps between draws."""
        return self.num_draws * self.num_steps_bw_draws + self.num_burnin_steps

    def reference_dump(self) -> dict[str, Any]:
        """The `metadata.config.sampler` dict devinterp 2.x writes (and compares on reuse)."""
        return {
            **self.model_dump(),
            "scheduler_type": "constant",
            "scheduler_kwargs": None,
            "cores": 1,
            "online": False,
        }


def merge_rmsprop_aliases(
    sampling_method: str,
    sampling_method_kwargs: dict[str, Any] | None,
    rmsprop_eps: float | None,
    rmsprop_alpha: float | None,
) -> dict[str, Any]:
    """Fold the rmsprop_eps / rmsprop_alpha convenience arguments into sampling_method_kwargs."""
    kwargs = dict(sampling_method_kwargs or {})
    for name, value in (("eps", rmsprop_eps), ("alpha", rmsprop_alpha)):
        if value is None:
            continue
        if sampling_method != "rmsprop_sgld":
            raise ValueError(
                f"rmsprop_{name} can only be set when sampling_method='rmsprop_sgld', "
                f"got sampling_method={sampling_method!r}"
            )
        if name in kwargs:
            raise ValueError(
                f"rmsprop_{name} is set both as a top-level argument and in "
                f"sampling_method_kwargs[{name!r}]; specify only one."
            )
        kwargs[name] = value
    return kwargs


def default_nbeta(dataloader: Any, gradient_accumulation_steps: int = 1) -> float:
    """n_beta = m / log(m) for an effective batch of m = batch_size * gas samples (devinterp's default,
    Watanabe's optimal inverse temperature 1/log n at n = m); 1 (with a warning) when m <= 1.

    `dataloader` is a torch DataLoader (its batch_size is used) or the batch size as an int.
    """
    from torch.utils.data import DataLoader

    if isinstance(dataloader, DataLoader):
        batch = dataloader.batch_size
    elif isinstance(dataloader, int) and not isinstance(dataloader, bool):
        batch = dataloader
    else:
        raise NotImplementedError(
            f"N*beta for data type {type(dataloader)} not implemented, use DataLoader or int instead."
        )
    m = int(batch or 0) * gradient_accumulation_steps
    if m <= 1:
        warnings.warn(
            "default nbeta is undefined for batch_size * gradient_accumulation_steps == 1, "
            "falling back to default value of 1",
            stacklevel=2,
        )
        return 1
    return float(m / np.log(m))
