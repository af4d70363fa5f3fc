"""The loss's top curvature at a checkpoint, and the step-size ceiling it sets for SGLD.

Why. SGLD is an Euler-Maruyama discretisation of Langevin dynamics; along a direction of curvature c of
the potential U = n_beta L + localization |w - w0|^2 / 2 an update (`distinterp.update`: w -= lr/2 grad U +
sqrt(lr) xi) is the AR(1) map x <- (1 - lr c / 2) x + sqrt(lr) xi. It is stable only for lr c < 4, its
stationary variance is 1 / (c (1 - lr c / 4)) against the exact 1 / c, and for lr c > 2 the factor
1 - lr c / 2 turns negative: the direction oscillates from step to step instead of relaxing (the linear
stability analysis of Euler's method; for SGLD's bias in lr: Vollmer, Zygalakis & Teh 2016, JMLR 17, sec.
5; Mattingly, Stuart & Higham 2002 on the discretised SDE's invariant measure). The LLC estimate then
carries that bias in the stiffest directions, and no rule choosing among such cells removes it. The top
eigenvalue of the loss Hessian, found by power iteration on Hessian-vector products (Pearlmutter 1994),
costs a handful of forward-backward-backward passes, so calibrate() can measure it before spending a
grid on step sizes that cannot be right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

CEILING = 1.0
"""Largest lr x (n_beta lambda_max + localization) a calibration cell may have: at 1 the stiffest
direction's stationary variance is 1 / (1 - 1/4) = 1.33 x its exact value and the update still relaxes it
monotonically (factor 1/2 per step); the bias there is dominated by its first-order term lr c / 4 (the
second order is (lr c / 4)^2 = 6 %), which the extrapolation to lr -> 0 removes. Above it the second-order
part grows fast (x 2 at lr c = 2, where the direction stops relaxing; divergence at 4). Measured on the
13,200-parameter deep linear network (n_beta 145, lambda_max 40): lr c 2.9, 1.16, 0.58, 0.17 read +54 %,
+43 %, +37 %, +28 % where the settled limit is about +19 %; on the small population cases the ceiling
drops no lr a chosen fit used (`benchmarks/known_answers.py --curvature`)."""


def top_eigenvalue(
    loss: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    iters: int = 20,
    rtol: float = 1e-3,
    seed: int = 0,
) -> float:
    """The largest-magnitude eigenvalue of the Hessian of loss() in params, by power iteration on
    Hessian-vector products (double backward); stops when the Rayleigh quotient moves by < rtol.

    loss() is called once; params must require grad. A zero Hessian gives 0."""
    if iters < 1:
        raise ValueError(f"iters: need at least 1 power iteration, got {iters}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params: none requires grad; pass the parameters the sampler moves")
    value = loss()
    grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
    if not pairs:
        return 0.0  # the loss is at most linear in params
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p, _ in pairs]
    eig = 0.0
    for k in range(iters):
        norm = torch.sqrt(sum((x.double() ** 2).sum() for x in v))  # type: ignore[arg-type]
        if not float(norm) > 0:
            return 0.0
        v = [x / norm.to(x.dtype) for x in v]
        raw = torch.autograd.grad(
            [g for _, g in pairs], [p for p, _ in pairs], grad_outputs=v, retain_graph=True, allow_unused=True
        )
        hv = [torch.zeros_like(x) if h is None else h.detach() for x, h in zip(v, raw)]
        new = float(sum((x.double() * h.double()).sum() for x, h in zip(v, hv)))
        if not math.isfinite(new):
            raise ValueError("loss: its Hessian-vector product is not finite at this checkpoint")
        done = k > 0 and abs(new - eig) <= rtol * abs(new)
        eig, v = new, hv
        if done:
            break
    return eig


def step_stiffness(lr: float, n_beta: float, lambda_max: float, localization: float = 0.0) -> float:
    """lr x the potential's top curvature n_beta lambda_max + localization: the stiffest direction's
    Euler-Maruyama step (stable below 4, relaxing monotonically below 2)."""
    return lr * (n_beta * max(lambda_max, 0.0) + localization)


def lr_ceiling(
    n_beta: float, lambda_max: float, localization: float = 0.0, ceiling: float = CEILING
) -> float:
    """The largest lr whose `step_stiffness` is at most `ceiling` (inf when the potential is flat)."""
    c = n_beta * max(lambda_max, 0.0) + localization
    return ceiling / c if c > 0 else math.inf
