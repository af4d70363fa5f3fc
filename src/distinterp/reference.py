"""A float64 reference for what the LLC estimator targets at finite n, by a sampler independent of SGLD.

The estimator reads n_beta (E[L_n(w)] - L_n(w0)) under the localized tempered posterior

    p(w) ~ exp(-n_beta L_n(w) - localization |w - w0|^2 / 2)

(devinterp's SGLD has this stationary law up to its step-size and minibatch errors). `expected_llc` computes
that expectation with full-batch Metropolis-adjusted Langevin (MALA; Roberts & Tweedie 1996) in float64 over
many independent chains at once: the Metropolis test removes the discretisation bias, the full batch removes
the minibatch noise, so what is left is Monte Carlo error, which it reports. Comparing an SGLD estimate with
it separates the sampler's error (SGLD - reference) from the estimator's own error at finite n (reference -
lambda). The caller gives the loss as a function of a (chains, d) batch of flattened parameters
(`toy.dln_empirical_loss_float64`, `toy.bigram_loss_float64`); nothing here touches distinterp's sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from distinterp.analyses.chains import llc_estimate

__all__ = ["MalaReference", "expected_llc"]

BatchLoss = Callable[[torch.Tensor], torch.Tensor]
"""A loss of a (chains, d) float64 batch of parameters, one value per chain: (chains,)."""

TARGET_ACCEPTANCE = 0.574
"""MALA's optimal acceptance rate in high dimension (Roberts & Rosenthal 1998); the burn-in adapts the
step size to it."""


@dataclass(frozen=True)
class MalaReference:
    """E[n_beta (L_n(w) - L_n(w0))] by MALA, and what says how far to trust it.

    `se` is the standard error over chains (independent, so it is exact whatever the autocorrelation within a
    chain); `drift` is the second half of the draws minus the first half, with `drift_se`, so an unfinished
    burn-in shows as a drift of several standard errors.
    """

    mean: float
    se: float
    acceptance: float
    step_size: float
    chains: int
    burnin: int
    draws: int
    drift: float
    drift_se: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The fields, for JSON."""
        return asdict(self)


def expected_llc(
    loss: BatchLoss,
    w0: torch.Tensor,
    n_beta: float,
    localization: float,
    *,
    chains: int = 512,
    burnin: int = 4000,
    draws: int = 4000,
    step_size: float | None = None,
    seed: int = 0,
) -> MalaReference:
    """E[n_beta (L_n(w) - L_n(w0))] under exp(-n_beta L_n(w) - localization |w - w0|^2 / 2), by MALA.

    All chains start at w0. During `burnin` steps the step size eps (proposal w' = w - eps^2/2 grad U(w) +
    eps N(0, I), U the negative log density) adapts by Robbins-Monro on log eps towards acceptance 0.574,
    then stays fixed for `draws` steps, each of which is recorded. The posterior must be proper: with
    localization 0 the loss alone must confine w (it does for the bigram up to its flat softmax shifts, which
    leave L_n unchanged; it does not for reduced-rank regression at A = B = 0).
    """
    if not n_beta > 0:
        raise ValueError(f"n_beta: must be > 0, got {n_beta}")
    if localization < 0:
        raise ValueError(f"localization: must be >= 0, got {localization}")
    if chains < 2 or burnin < 0 or draws < 2:
        raise ValueError(f"chains >= 2, burnin >= 0 and draws >= 2 needed, got {chains}, {burnin}, {draws}")
    import time

    start = time.perf_counter()
    center = w0.detach().to(torch.float64).reshape(-1)
    base = float(loss(center[None])[0])
    gen = torch.Generator().manual_seed(seed)

    def potential(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, grad U, n_beta (L_n - L_n(w0))) per chain."""
        w = w.detach().requires_grad_(True)
        excess = llc_estimate(loss(w), base, n_beta)
        u = excess + 0.5 * localization * ((w - center) ** 2).sum(dim=1)
        (grad,) = torch.autograd.grad(u.sum(), w)
        return u.detach(), grad, excess.detach()

    w = center.expand(chains, -1).clone()
    u, grad, excess = potential(w)
    log_eps = math.log(step_size) if step_size else math.log(0.1 / math.sqrt(n_beta))
    total = torch.zeros(chains, dtype=torch.float64)
    halves = [torch.zeros(chains, dtype=torch.float64), torch.zeros(chains, dtype=torch.float64)]
    accepted = 0.0
    for t in range(burnin + draws):
        eps = math.exp(log_eps)
        noise = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        prop = w - 0.5 * eps * eps * grad + eps * noise
        u_p, grad_p, excess_p = potential(prop)
        forward = (noise**2).sum(dim=1) / 2  # -log q(prop | w), up to a constant
        back = ((w - prop + 0.5 * eps * eps * grad_p) ** 2).sum(dim=1) / (2 * eps * eps)
        log_alpha = u - u_p - back + forward
        accept = torch.log(torch.rand(chains, generator=gen, dtype=torch.float64)) < log_alpha
        w = torch.where(accept[:, None], prop, w)
        u = torch.where(accept, u_p, u)
        grad = torch.where(accept[:, None], grad_p, grad)
        excess = torch.where(accept, excess_p, excess)
        rate = float(torch.exp(log_alpha.clamp(max=0.0)).mean())
        if t < burnin:
            log_eps += (rate - TARGET_ACCEPTANCE) / math.sqrt(t + 10.0)
        else:
            total += excess
            halves[0 if t - burnin < draws // 2 else 1] += excess
            accepted += rate
    per_chain = total / draws
    first = halves[0] / (draws // 2)
    second = halves[1] / (draws - draws // 2)
    diff = second - first
    return MalaReference(
        mean=float(per_chain.mean()),
        se=float(per_chain.std() / math.sqrt(chains)),
        acceptance=accepted / draws,
        step_size=math.exp(log_eps),
        chains=chains,
        burnin=burnin,
        draws=draws,
        drift=float(diff.mean()),
        drift_se=float(diff.std() / math.sqrt(chains)),
        seconds=time.perf_counter() - start,
    )
