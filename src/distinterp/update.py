"""SGLD and RMSprop-preconditioned SGLD updates, and their per-step metrics (pure tensor math).

Update (Welling & Teh 2011, with localization as in Lau et al. 2023, arXiv 2308.12108):

    theta <- theta - (lr/2) * M * G * (n_beta * g + lambda * theta + gamma * (theta - theta_0))
                   + sqrt(lr) * M * sqrt(G) * N(0, noise_level^2)

then, with a bounding box b, theta is clamped to [theta_0 - b, theta_0 + b]. g is the gradient of the
mean per-token loss, M the parameter's 0/1 mask (1 where unrestricted), and G = 1 for plain SGLD or
G = 1 / (sqrt(V) + eps) with V <- alpha V + (1 - alpha) g^2 for RMSprop-SGLD (Li et al. 2015).
The operations and their order follow devinterp 2.x exactly, so one chain reproduces it bitwise.
This module is the update itself; devinterp's torch optimizer classes that step with it (`SGLD`, `SGMCMC`)
are distinterp.optim.sgld and distinterp.optim.sgmcmc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from distinterp.config import SamplerConfig

NORM_FIELDS = ("scaled_grad", "unscaled_grad", "localization", "weight_decay", "noise", "distance")
DOT_FIELDS = ("dot_grad_prior", "dot_grad_noise", "dot_prior_noise")
METRIC_FIELDS = NORM_FIELDS + DOT_FIELDS
"""devinterp 2.x's save_metrics fields, in its order."""
MALA_GEOMETRIC = "mala_geometric"
"""sgld_step's per-step proposal and prior part of the MALA log acceptance; the loop adds the loss part."""
STEP_FIELDS = (*METRIC_FIELDS, MALA_GEOMETRIC)
"""What sgld_step returns with metrics on."""
RECORDED_METRICS = (*METRIC_FIELDS, "mala_acceptance")
"""The metrics_* arrays of a store sampled with save_metrics."""
DISTANCE_ONLY = "distance"
"""save_metrics="distance": record only metrics_distance (|theta - theta_0| before each update, the same
numbers as save_metrics=True's), one pass over the parameters per step: calibrate()'s localization check."""

NoiseFn = Callable[["ParamSlot", torch.Size, float], torch.Tensor]
"""(slot, size, std) -> a N(0, std^2) draw of `size` for that slot's update."""


@dataclass(frozen=True)
class SGLDHyper:
    """The scalar hyperparameters of one SGLD update."""

    lr: float
    n_beta: float
    noise_level: float = 1.0
    localization: float = 0.0
    weight_decay: float = 0.0
    bounding_box_size: float | None = None
    rmsprop: bool = False
    alpha: float = 0.99
    eps: float = 0.1

    @classmethod
    def from_config(cls, config: SamplerConfig) -> SGLDHyper:
        kwargs = config.sampling_method_kwargs
        return cls(
            lr=config.lr,
            n_beta=config.n_beta,
            noise_level=config.noise_level,
            localization=config.localization,
            weight_decay=config.llc_weight_decay,
            bounding_box_size=config.bounding_box_size,
            rmsprop=config.sampling_method == "rmsprop_sgld",
            alpha=float(kwargs.get("alpha", 0.99)),
            eps=float(kwargs.get("eps", 0.1)),
        )


@dataclass
class ParamSlot:
    """One sampled parameter with its mask and the per-chain state the update needs."""

    name: str
    param: torch.Tensor
    mask: torch.Tensor | None = None  # float 0/1, same shape as param
    center: torch.Tensor | None = None  # theta_0, kept when localization, bounding box or metrics need it
    square_avg: torch.Tensor | None = None  # RMSprop running average of g^2
    mala_prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (theta, grad U) at the last step (metrics)


@dataclass
class StepMetrics:
    """Per-step L2 norms and dot products of the update's components (float32, as devinterp): shape (1,),
    or (chains,) for stacked parameters; they stay on the parameters' device (no copy per parameter)."""

    values: dict[str, torch.Tensor] = field(
        default_factory=lambda: {k: torch.zeros(1, dtype=torch.float32) for k in METRIC_FIELDS}
    )

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.squeeze()) for k, v in self.values.items()}


def make_slots(
    named_params: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor | None],
    hyper: SGLDHyper,
    keep_center: bool,
) -> list[ParamSlot]:
    """Slots in the order of `masks` (the order devinterp draws noise in)."""
    slots = []
    for name, mask in masks.items():
        p = named_params[name]
        m = None if mask is None else mask.to(device=p.device).float()
        center = p.detach().clone() if (keep_center or hyper.localization > 0) else None
        slots.append(ParamSlot(name=name, param=p, mask=m, center=center))
    return slots


def _prior_grad(p: torch.Tensor, slot: ParamSlot, hyper: SGLDHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight-decay and localization forces at p: (lambda * p, gamma * (p - theta_0)), zero when off."""
    wd = torch.zeros_like(p)
    loc = torch.zeros_like(p)
    if hyper.weight_decay > 0:
        wd += hyper.weight_decay * p
    if hyper.localization > 0:
        assert slot.center is not None
        loc += hyper.localization * (p - slot.center)
    return wd, loc


@torch.no_grad()
def sgld_step(
    slots: list[ParamSlot],
    hyper: SGLDHyper,
    *,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    with_metrics: bool = False,
    stacked: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mala: bool = False,
    distance_only: bool = False,
) -> StepMetrics | None:
    """Apply one SGLD update in place to every slot whose parameter has a gradient.

    Noise is one full-shape normal draw per parameter, in slot order, from `generator` (the global
    torch RNG when None, as devinterp), or `noise(slot, size, noise_level)` when given. Parameters
    without a gradient draw nothing and stay put. `stacked`: dim 0 of every parameter indexes chains
    (masks and centers broadcast), and the metrics are per chain, shape (chains,). When slots hold
    shards of parameters, `reduce` sums the per-parameter partial sums, a (params, 9, 1) tensor, over the
    shards (one collective) before each parameter's norm is taken. `mala` (with metrics): also the
    MALA_GEOMETRIC part of the step's MALA acceptance (the slots keep the previous point for it).
    `distance_only` (without metrics): only the `distance` field (DISTANCE_ONLY), computed as with metrics.
    """
    if not (with_metrics or distance_only or hyper.rmsprop or hyper.weight_decay or hyper.localization) and (
        hyper.bounding_box_size is None
    ):
        _plain_step(slots, hyper, generator, noise)
        return None
    if distance_only and not with_metrics:
        return _distance_step(slots, hyper, generator, noise, stacked, reduce)
    totals = None
    if with_metrics:
        dev = slots[0].param.device if slots else None
        totals = StepMetrics({k: torch.zeros(1, dtype=torch.float32, device=dev) for k in METRIC_FIELDS})
    partials: list[torch.Tensor] = []
    first = any(s.mala_prev is None for s in slots if s.param.grad is not None)
    half_lr = 0.5 * hyper.lr
    sqrt_lr = hyper.lr**0.5
    for slot in slots:
        p = slot.param
        grad = p.grad
        if grad is None:
            continue
        if hyper.rmsprop:
            if slot.square_avg is None:
                slot.square_avg = torch.zeros_like(grad)
            slot.square_avg.mul_(hyper.alpha).addcmul_(grad, grad, value=1 - hyper.alpha)
            precond: torch.Tensor | float = 1.0 / (torch.sqrt(slot.square_avg) + hyper.eps)
            noise_coef: torch.Tensor | float = torch.sqrt(precond)  # type: ignore[arg-type]
        else:
            precond, noise_coef = 1.0, 1.0
        overall: torch.Tensor | float = slot.mask if slot.mask is not None else 1.0

        d_p = precond * grad.mul(hyper.n_beta)
        wd, loc = _prior_grad(p.data, slot, hyper)
        d_p.add_(precond * (wd + loc))
        d_p = overall * d_p
        if with_metrics:
            assert slot.center is not None
            distance = p.data - slot.center
            if mala:
                mala_part = _mala_partial(slot, overall * (grad.mul(hyper.n_beta) + wd + loc), hyper, stacked)
        p.data.add_(d_p, alpha=-half_lr)

        if noise is None:
            draw = torch.normal(
                mean=0.0, std=hyper.noise_level, size=d_p.size(), device=d_p.device, generator=generator
            )
        else:
            draw = noise(slot, d_p.size(), hyper.noise_level)
        draw = overall * draw
        p.data.add_(noise_coef * draw, alpha=sqrt_lr)

        if hyper.bounding_box_size is not None:
            assert slot.center is not None
            torch.clamp_(
                p.data, min=slot.center - hyper.bounding_box_size, max=slot.center + hyper.bounding_box_size
            )

        if totals is not None:
            sums = _partial_sums(grad, precond, noise_coef, overall, wd, loc, draw, distance, hyper, stacked)
            partials.append(torch.cat([sums, mala_part[None]]) if mala else sums)
    if totals is not None:
        if reduce is not None and partials:
            partials = list(reduce(torch.stack(partials)))
        geometric = torch.zeros_like(totals.values[METRIC_FIELDS[0]])
        for sums in partials:  # each parameter's norms, re-squared (as devinterp), and its dots
            for i, k in enumerate(METRIC_FIELDS):
                totals.values[k] = totals.values[k] + (
                    sums[i].sqrt().square() if k in NORM_FIELDS else sums[i]
                )
            if mala:
                geometric = geometric + sums[len(METRIC_FIELDS)]
        for k in NORM_FIELDS:
            totals.values[k] = totals.values[k].sqrt()
        if mala:
            totals.values[MALA_GEOMETRIC] = torch.full_like(geometric, float("nan")) if first else geometric
    return totals


def _distance_step(
    slots: list[ParamSlot],
    hyper: SGLDHyper,
    generator: torch.Generator | None,
    noise: NoiseFn | None,
    stacked: bool,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
) -> StepMetrics:
    """sgld_step without metrics (the same update, so the same samples as save_metrics=False), recording
    only the distance from the checkpoint before it, summed as with metrics (each parameter's norm
    re-squared, then the root): the same value as save_metrics=True's."""
    partials = []
    for slot in slots:
        if slot.param.grad is None:
            continue
        assert slot.center is not None
        diff = (slot.param.data - slot.center).float().square()
        partials.append(
            diff.sum(dim=tuple(range(1, diff.ndim)))[None]
            if stacked
            else (torch.zeros(1, dtype=torch.float32, device=diff.device) + diff.sum())[None]
        )
    sgld_step(slots, hyper, generator=generator, noise=noise, stacked=stacked)  # the same update as without
    if reduce is not None and partials:
        partials = list(reduce(torch.stack(partials)))
    dev = slots[0].param.device if slots else None
    total = torch.zeros(1, dtype=torch.float32, device=dev)
    for sums in partials:
        total = total + sums[0].sqrt().square()
    return StepMetrics({DISTANCE_ONLY: total.sqrt()})


PLAIN_CHUNK = 1 << 24
"""Elements per foreach call of _plain_step: bounds its temporaries (64 MiB of float32) on large models."""


def _plain_step(
    slots: list[ParamSlot], hyper: SGLDHyper, generator: torch.Generator | None, noise: NoiseFn | None
) -> None:
    """sgld_step with every optional term off: devinterp's operations, per parameter and in its order
    (dw = g * n_beta, times the mask; p -= lr/2 dw; p += sqrt(lr) * mask * N(0, s^2)), so the same bits on
    CPU, grouped into foreach calls over chunks of parameters to save the per-parameter dispatches."""
    live = [s for s in slots if s.param.grad is not None]
    start = 0
    while start < len(live):
        end, size = start, 0
        while end < len(live) and (end == start or size + live[end].param.numel() <= PLAIN_CHUNK):
            size += live[end].param.numel()
            end += 1
        group, start = live[start:end], end
        params = [s.param.data for s in group]
        drift = torch._foreach_mul([s.param.grad for s in group], hyper.n_beta)  # type: ignore[misc]
        draws = []
        for s, dw in zip(group, drift):
            p = s.param.data
            if noise is None:
                draw = torch.normal(
                    mean=0.0, std=hyper.noise_level, size=p.size(), device=p.device, generator=generator
                )
            else:
                draw = noise(s, p.size(), hyper.noise_level)
            if s.mask is not None:
                dw.mul_(s.mask)
                draw = draw * s.mask
            draws.append(draw)
        torch._foreach_add_(params, drift, alpha=-0.5 * hyper.lr)
        torch._foreach_add_(params, draws, alpha=hyper.lr**0.5)


def _mala_partial(slot: ParamSlot, drift: torch.Tensor, hyper: SGLDHyper, stacked: bool) -> torch.Tensor:
    """This parameter's part of the MALA log acceptance of the move theta_prev -> theta (the current point),
    log q(prev | cur) - log q(cur | prev) + prior(prev) - prior(cur), with the Gaussian proposal
    q(y | x) ~ exp(-|y - x + (lr/2) grad U(x)|^2 / (2 lr)) (Furman & Lau 2024, devinterp 1.x's
    MalaAcceptanceRate), written without cancellation: with u = cur - prev, a = (lr/2) grad U(prev),
    b = (lr/2) grad U(cur), |u + a|^2 - |b - u|^2 = 2 u.(a + b) + |a|^2 - |b|^2. Shape (1,), or (chains,)
    when stacked; 0 at the first step, whose previous point is unknown. Keeps (theta, grad U) for the next."""
    theta = slot.param.data
    prev = slot.mala_prev
    slot.mala_prev = (theta.detach().clone(), drift.detach().clone())
    dims = tuple(range(1, theta.ndim)) if stacked else tuple(range(theta.ndim))
    if prev is None:
        return torch.zeros(theta.shape[0] if stacked else 1, dtype=torch.float32, device=theta.device)
    t_prev, g_prev = prev
    half_lr = 0.5 * hyper.lr
    u, a, b = (theta - t_prev).float(), (half_lr * g_prev).float(), (half_lr * drift).float()
    proposal = (2 * u * (a + b) + a.square() - b.square()) / (2 * hyper.lr)
    both = (theta + t_prev).float()
    prior = torch.zeros_like(u)
    if hyper.localization > 0:
        assert slot.center is not None
        prior = prior - 0.5 * hyper.localization * u * (both - 2 * slot.center.float())
    if hyper.weight_decay > 0:
        prior = prior - 0.5 * hyper.weight_decay * u * both
    total = (proposal + prior).sum(dim=dims)
    return total if stacked else total.reshape(1)


def mala_acceptance(
    geometric: torch.Tensor, n_beta: float, loss_prev: torch.Tensor, loss: torch.Tensor
) -> torch.Tensor:
    """devinterp 1.x's MALA acceptance probability min(1, exp(log q ratio + U(prev) - U(cur))) of one step,
    U = n_beta * minibatch loss + priors (Furman & Lau 2024, arXiv 2402.03698); NaN at a chain's first step."""
    log_alpha = geometric.double() + n_beta * (loss_prev.double() - loss.double())
    return torch.exp(torch.clamp(log_alpha, max=0.0)).float()


def _partial_sums(
    grad: torch.Tensor,
    precond: torch.Tensor | float,
    noise_coef: torch.Tensor | float,
    overall: torch.Tensor | float,
    wd: torch.Tensor,
    loc: torch.Tensor,
    noise: torch.Tensor,
    distance: torch.Tensor,
    hyper: SGLDHyper,
    stacked: bool = False,
) -> torch.Tensor:
    """One parameter's sums of squares of the update's components and their dots, in METRIC_FIELDS order
    (9, 1), summed over the whole parameter (or shard), or (9, chains) over all but dim 0 when stacked."""

    def total(x: torch.Tensor) -> torch.Tensor:
        if stacked:
            return x.sum(dim=tuple(range(1, x.ndim)))
        return torch.zeros(1, dtype=torch.float32, device=x.device) + x.sum()

    half_lr = 0.5 * hyper.lr
    scaled_grad = half_lr * (overall * (precond * grad.mul(hyper.n_beta)))
    unscaled_grad = half_lr * grad.mul(hyper.n_beta)
    prior_scale = half_lr * precond * overall
    loc_c = prior_scale * loc
    wd_c = prior_scale * wd
    noise_c = (hyper.lr**0.5) * noise_coef * noise
    parts = {
        "scaled_grad": scaled_grad,
        "unscaled_grad": unscaled_grad,
        "localization": loc_c,
        "weight_decay": wd_c,
        "noise": noise_c,
        "distance": distance,
    }
    sums = [total(v.float().square()) for v in parts.values()]
    sg, pr, nz = scaled_grad.float(), (loc_c + wd_c).float(), noise_c.float()
    sums += [total(sg * pr), total(sg * nz), total(pr * nz)]
    return torch.stack(sums)
