"""devinterp 2.x's `SGLD` torch optimizer (the default `sampling_method` of `sample_single_chain`).

The same update as SGMCMC.sgld (distinterp.update.sgld_step), keeping what devinterp's older class does
differently: a parameter without a gradient still moves (prior and noise, zero gradient), a bounding
box of 0 means none, and its metrics are of the masked update (`unscaled_grad` equals `scaled_grad`,
`distance` counts only sampled elements). devinterp deprecates it for SGMCMC.sgld; here it is not.
"""

from __future__ import annotations

from typing import Any

import torch

from distinterp.optim.sgmcmc import SGMCMC, _warn_settings


class SGLD(SGMCMC):
    """Stochastic Gradient Langevin Dynamics with localization (Welling & Teh 2011; Lau et al. 2023).

    Constructor of devinterp's `SGLD(params, lr=, noise_level=, weight_decay=, localization=, nbeta=,
    bounding_box_size=, save_metrics=)`; param groups may carry a "mask".
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float = 0.01,
        noise_level: float = 1.0,
        weight_decay: float = 0.0,
        localization: float = 0.0,
        nbeta: float = 1.0,
        bounding_box_size: float | None = None,
        save_metrics: bool = False,
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
    ):
        _warn_settings("SGLD", noise_level, nbeta)
        super().__init__(
            params,
            lr=lr,
            noise_level=noise_level,
            nbeta=nbeta,
            weight_decay=weight_decay,
            localization=localization,
            bounding_box_size=bounding_box_size or None,
            save_metrics=save_metrics,
            sketch_dim=sketch_dim,
            sketch_seed=sketch_seed,
        )

    @torch.no_grad()
    def step(self, noise_generator: torch.Generator | None = None) -> None:  # type: ignore[override]
        """As SGMCMC.step, except that parameters without a gradient take the step with a zero gradient."""
        missing = [p for g in self.param_groups for p in g["params"] if p.grad is None]
        for p in missing:
            p.grad = torch.zeros_like(p)
        distance = self._masked_distance() if self.save_metrics else None
        try:
            super().step(None, noise_generator=noise_generator)
        finally:
            for p in missing:
                p.grad = None
        if self._metrics is not None:
            self._metrics.unscaled_grad = self._metrics.scaled_grad
            if distance is not None:
                self._metrics.distance = distance

    def _masked_distance(self) -> torch.Tensor:
        """||M * (theta - theta_0)|| over every parameter, before the step (devinterp SGLD's `distance`)."""
        total = torch.zeros(1, dtype=torch.float32)
        for slots in self._slots:
            for s in slots:
                assert s.center is not None
                d = s.param.detach() - s.center
                d = d if s.mask is None else d * s.mask
                per_param = (
                    torch.zeros(1, dtype=torch.float32, device=d.device) + d.float().square().sum()
                ).sqrt()
                total = total + per_param.cpu().square()
        return total.sqrt()
