"""devinterp 2.x's `SGMCMC` torch optimizer (`SGMCMC.sgld`, `SGMCMC.rmsprop_sgld`), stepping with sgld_step.

A thin adapter for custom loops (`sample_single_chain`, or a hand-written one): each param group's
parameters become `ParamSlot`s and `step()` applies distinterp.update.sgld_step, the one implementation
of the update, so it is the update `sample()` runs (bitwise devinterp's, noise drawn in the same order).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from distinterp.update import (
    DOT_FIELDS,
    NORM_FIELDS,
    ParamSlot,
    SGLDHyper,
    StepMetrics,
    make_slots,
    sgld_step,
)

SGMCMCMethod = Literal["sgld", "rmsprop_sgld", "sgnht"]
"""The update rules SGMCMC.get_method builds (sample()'s `sampling_method` values are another set:
distinterp.config.SamplingMethodLiteral)."""
SamplingMethodLiteral = SGMCMCMethod
"""devinterp.optim's name for SGMCMCMethod, kept so its imports work."""


def _zero() -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float32)


@dataclass
class Metrics:
    """One step's L2 norms and dot products of the update's components (devinterp's `Metrics` fields)."""

    NORM_FIELDS: ClassVar[tuple[str, ...]] = NORM_FIELDS
    DOT_FIELDS: ClassVar[tuple[str, ...]] = DOT_FIELDS

    scaled_grad: torch.Tensor = field(default_factory=_zero)
    unscaled_grad: torch.Tensor = field(default_factory=_zero)
    localization: torch.Tensor = field(default_factory=_zero)
    weight_decay: torch.Tensor = field(default_factory=_zero)
    noise: torch.Tensor = field(default_factory=_zero)
    distance: torch.Tensor = field(default_factory=_zero)
    dot_grad_prior: torch.Tensor = field(default_factory=_zero)
    dot_grad_noise: torch.Tensor = field(default_factory=_zero)
    dot_prior_noise: torch.Tensor = field(default_factory=_zero)
    numel: int = 0

    @property
    def prior(self) -> torch.Tensor:
        """Combined prior norm ||[localization; weight_decay]||."""
        return (self.localization.square() + self.weight_decay.square()).sqrt()

    @classmethod
    def aggregate(cls, parts: Iterable[tuple[StepMetrics, int]]) -> Metrics:
        """Combine per-group metrics: norms as sqrt of summed squares, dot products summed (as devinterp)."""
        out = cls()
        for step_metrics, numel in parts:
            for k, v in step_metrics.values.items():
                v = v.to("cpu")
                setattr(out, k, getattr(out, k) + (v.square() if k in NORM_FIELDS else v))
            out.numel += numel
        for k in NORM_FIELDS:
            setattr(out, k, getattr(out, k).sqrt())
        return out


class SGMCMC(torch.optim.Optimizer):
    """SGLD / RMSprop-SGLD as a torch optimizer with devinterp 2.x's constructor and factories.

    Per group: lr, nbeta, noise_level, weight_decay (prior at 0), localization (prior at the initial
    parameters), bounding_box_size, mask (a tensor, or one per parameter), preconditioner "identity" or
    "rmsprop" (preconditioner_kwargs alpha, eps). devinterp's Prior/Preconditioner objects, tensor prior
    centres, SGNHT and sketches are not supported and raise.
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float = 0.01,
        noise_level: float = 1.0,
        nbeta: float = 1.0,
        prior: str | float | None = None,
        preconditioner: Literal["identity", "rmsprop"] | None = "identity",
        preconditioner_kwargs: dict[str, Any] | None = None,
        bounding_box_size: float | None = None,
        mask: torch.Tensor | None = None,
        save_metrics: bool = False,
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
        weight_decay: float = 0.0,
        localization: float = 0.0,
    ):
        if sketch_dim is not None:
            raise NotImplementedError(
                "SGMCMC: sketch_dim (count sketches) is not supported by distinterp; remove it"
            )
        if isinstance(params, (torch.Tensor, dict)):
            params = [params]
        defaults = dict(
            lr=lr,
            noise_level=noise_level,
            nbeta=nbeta,
            prior=prior,
            preconditioner=preconditioner,
            preconditioner_kwargs=dict(preconditioner_kwargs or {}),
            bounding_box_size=bounding_box_size,
            mask=mask,
            weight_decay=weight_decay,
            localization=localization,
        )
        super().__init__(params, defaults)
        self.save_metrics = save_metrics
        self._slots: list[list[ParamSlot]] = []
        for i, group in enumerate(self.param_groups):
            self._slots.append(self._make_group_slots(i, group))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group; a group added after construction gets its slots too."""
        super().add_param_group(param_group)
        if hasattr(self, "_slots"):
            index = len(self.param_groups) - 1
            self._slots.append(self._make_group_slots(index, self.param_groups[index]))

    def _resolve_prior(self, group: dict[str, Any]) -> None:
        """Fold devinterp's `prior` argument ("initial" or a float strength) into localization."""
        prior = group.pop("prior", None)
        if prior is None:
            return
        if isinstance(prior, str) and prior == "initial":
            group["localization"] = group["localization"] or 1.0
        elif isinstance(prior, (int, float)) and not isinstance(prior, bool):
            group["localization"] = float(prior)
        else:
            raise NotImplementedError(
                f"SGMCMC: prior={prior!r} is not supported by distinterp; use localization= and weight_decay= "
                "(a Gaussian prior at the initial parameters / at zero), or prior='initial' or a float"
            )

    def _make_group_slots(self, index: int, group: dict[str, Any]) -> list[ParamSlot]:
        self._resolve_prior(group)
        kind = group["preconditioner"] or "identity"
        if kind not in ("identity", "rmsprop"):
            raise NotImplementedError(
                f"SGMCMC: preconditioner={kind!r} is not supported by distinterp; use 'identity' or 'rmsprop'"
            )
        kwargs = group["preconditioner_kwargs"]
        unknown = sorted(set(kwargs) - {"alpha", "eps", "add_grad_correction"})
        if unknown or (kind == "identity" and kwargs):
            raise ValueError(
                f"SGMCMC: preconditioner_kwargs {sorted(kwargs)} do not apply to preconditioner={kind!r}"
            )
        if kwargs.get("add_grad_correction"):
            raise NotImplementedError("Gradient correction not yet implemented for RMSprop")
        params = list(group["params"])
        masks = group["mask"]
        if masks is None or isinstance(masks, torch.Tensor):
            masks = [masks] * len(params) if masks is None else [masks]
        if len(masks) != len(params):
            raise ValueError(f"SGMCMC: {len(masks)} masks for a group of {len(params)} parameters")
        names = [f"{index}.{j}" for j in range(len(params))]
        for m, p in zip(masks, params, strict=True):
            if m is not None and tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"Mask shape {m.shape} does not match parameter shape {p.shape}. ")
        hyper = self._hyper(group)
        keep_center = group["bounding_box_size"] is not None or self.save_metrics
        return make_slots(dict(zip(names, params)), dict(zip(names, masks)), hyper, keep_center)

    def _hyper(self, group: dict[str, Any]) -> SGLDHyper:
        kwargs = group["preconditioner_kwargs"]
        return SGLDHyper(
            lr=group["lr"],
            n_beta=group["nbeta"],
            noise_level=group["noise_level"],
            localization=group["localization"],
            weight_decay=group["weight_decay"],
            bounding_box_size=group["bounding_box_size"],
            rmsprop=(group["preconditioner"] or "identity") == "rmsprop",
            alpha=float(kwargs.get("alpha", 0.99)),
            eps=float(kwargs.get("eps", 0.1)),
        )

    @torch.no_grad()
    def step(
        self, closure: Callable[[], Any] | None = None, noise_generator: torch.Generator | None = None
    ) -> Any:
        """One sgld_step per param group, in group order (so noise is drawn in devinterp's order)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        parts = []
        for group, slots in zip(self.param_groups, self._slots, strict=True):
            metrics = sgld_step(
                slots, self._hyper(group), generator=noise_generator, with_metrics=self.save_metrics
            )
            if metrics is not None:
                numel = sum(s.param.numel() if s.mask is None else int(s.mask.count_nonzero()) for s in slots)
                parts.append((metrics, numel))
        self._metrics = Metrics.aggregate(parts) if self.save_metrics else None
        return loss

    def get_metrics(self) -> Metrics:
        """The last step's metrics over every group, on CPU (needs save_metrics=True)."""
        if not self.save_metrics:
            raise RuntimeError("Metrics not enabled. Set save_metrics=True.")
        return getattr(self, "_metrics", None) or Metrics()

    @classmethod
    def sgld(
        cls,
        params: Any,
        lr: float = 0.01,
        noise_level: float = 1.0,
        weight_decay: float = 0.0,
        localization: float = 0.0,
        nbeta: float = 1.0,
        bounding_box_size: float | None = None,
        mask: torch.Tensor | None = None,
        save_metrics: bool = False,
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
    ) -> SGMCMC:
        """SGLD with localization (Lau et al. 2023): devinterp's `SGMCMC.sgld`, "sgmcmc_sgld" in sample()."""
        _warn_settings("SGLD", noise_level, nbeta)
        return cls(
            params,
            lr=lr,
            noise_level=noise_level,
            nbeta=nbeta,
            weight_decay=weight_decay,
            localization=localization,
            bounding_box_size=bounding_box_size,
            mask=mask,
            save_metrics=save_metrics,
            sketch_dim=sketch_dim,
            sketch_seed=sketch_seed,
        )

    @classmethod
    def rmsprop_sgld(
        cls,
        params: Any,
        lr: float = 0.01,
        noise_level: float = 1.0,
        weight_decay: float = 0.0,
        localization: float = 0.0,
        nbeta: float = 1.0,
        alpha: float = 0.99,
        eps: float = 0.1,
        add_grad_correction: bool = False,
        bounding_box_size: float | None = None,
        mask: torch.Tensor | None = None,
        save_metrics: bool = False,
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
    ) -> SGMCMC:
        """RMSprop-preconditioned SGLD (Li et al. 2015): devinterp's `SGMCMC.rmsprop_sgld`, "rmsprop_sgld"."""
        _warn_settings("RMSProp-SGLD", noise_level, nbeta)
        return cls(
            params,
            lr=lr,
            noise_level=noise_level,
            nbeta=nbeta,
            weight_decay=weight_decay,
            localization=localization,
            preconditioner="rmsprop",
            preconditioner_kwargs={"alpha": alpha, "eps": eps, "add_grad_correction": add_grad_correction},
            bounding_box_size=bounding_box_size,
            mask=mask,
            save_metrics=save_metrics,
            sketch_dim=sketch_dim,
            sketch_seed=sketch_seed,
        )

    @classmethod
    def sgnht(cls, params: Any, **kwargs: Any) -> SGMCMC:
        """devinterp's SGNHT factory: not supported by distinterp."""
        raise NotImplementedError(
            "SGMCMC.sgnht: SGNHT is not supported by distinterp; use sgld or rmsprop_sgld"
        )

    @classmethod
    def get_method(cls, method: SGMCMCMethod) -> Callable[..., SGMCMC]:
        factories: dict[str, Callable[..., SGMCMC]] = {
            "sgld": cls.sgld,
            "rmsprop_sgld": cls.rmsprop_sgld,
            "sgnht": cls.sgnht,
        }
        if method not in factories:
            raise ValueError(f"`method` should be one of 'sgld', 'rmsprop_sgld', or 'sgnht'. Got {method}")
        return factories[method]


def _warn_settings(name: str, noise_level: float, nbeta: float) -> None:
    """devinterp's warnings for settings that void the sampling guarantee or the LLC's scale."""
    if noise_level != 1.0:
        warnings.warn(
            f"noise_level in {name} is unequal to one, this removes SGLD posterior sampling guarantees.",
            stacklevel=3,
        )
    if nbeta == 1.0:
        warnings.warn(
            "nbeta set to 1, LLC estimates will be off unless you know what you're doing. "
            "Use utils.default_nbeta(dataloader) instead",
            stacklevel=3,
        )


class SGNHT(torch.optim.Optimizer):
    """devinterp's SGNHT (Nosé-Hoover thermostat): importable, so scripts that only import it run, but not
    supported by distinterp."""

    def __init__(self, params: Any, **kwargs: Any):
        raise NotImplementedError(
            "SGNHT is not supported by distinterp; use SGMCMC.sgld or SGMCMC.rmsprop_sgld"
        )
