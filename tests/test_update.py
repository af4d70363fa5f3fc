"""SGLD / RMSprop-SGLD updates against a float64 NumPy implementation of the documented formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distinterp.update import SGLDHyper, make_slots, sgld_step


def reference_step(theta, theta0, grad, noise, mask, h: SGLDHyper, v):
    """theta' = theta - lr/2 M G (n_beta g + lambda theta + gamma (theta - theta0)) + sqrt(lr) M sqrt(G) noise,
    noise ~ N(0, noise_level^2)."""
    if h.rmsprop:
        v = h.alpha * v + (1 - h.alpha) * grad**2
        G = 1.0 / (np.sqrt(v) + h.eps)
    else:
        G = np.ones_like(theta)
    drift = h.n_beta * grad + h.weight_decay * theta + h.localization * (theta - theta0)
    new = theta - 0.5 * h.lr * mask * G * drift + np.sqrt(h.lr) * mask * np.sqrt(G) * noise
    if h.bounding_box_size is not None:
        new = np.clip(new, theta0 - h.bounding_box_size, theta0 + h.bounding_box_size)
    return new, v


hypers = st.builds(
    SGLDHyper,
    lr=st.floats(1e-5, 1e-1),
    n_beta=st.floats(0.0, 100.0),
    noise_level=st.floats(0.0, 2.0),
    localization=st.sampled_from([0.0, 0.5, 10.0]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    bounding_box_size=st.sampled_from([None, 0.05, 1.0]),
    rmsprop=st.booleans(),
    alpha=st.floats(0.5, 0.999),
    eps=st.floats(1e-3, 1.0),
)


@settings(max_examples=60, deadline=None)
@given(h=hypers, seed=st.integers(0, 2**16), masked=st.booleans())
def test_update_matches_float64_formula(h: SGLDHyper, seed: int, masked: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(5, 7, generator=g, dtype=torch.float64))
    theta0 = p.detach().numpy().copy()
    mask = (torch.rand(5, 7, generator=g) > 0.4) if masked else None
    slots = make_slots({"w": p}, {"w": mask}, h, keep_center=True)
    v = np.zeros((5, 7))
    for step in range(3):
        grad = torch.randn(5, 7, generator=g, dtype=torch.float64)
        p.grad = grad.clone()
        theta = p.detach().numpy().copy()
        noise_gen = torch.Generator().manual_seed(seed + step)
        # the sampler draws float32 noise of std noise_level (as devinterp), whatever the parameter dtype
        expected_noise = torch.normal(
            0.0, h.noise_level, size=(5, 7), generator=torch.Generator().manual_seed(seed + step)
        )
        sgld_step(slots, h, generator=noise_gen)
        m = mask.double().numpy() if mask is not None else np.ones((5, 7))
        expected, v = reference_step(theta, theta0, grad.numpy(), expected_noise.double().numpy(), m, h, v)
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
        if mask is not None:  # unmasked elements never move, bitwise
            assert torch.equal(p.detach()[~mask], torch.as_tensor(theta0)[~mask])


def test_parameters_without_gradient_stay_and_draw_no_noise() -> None:
    h = SGLDHyper(lr=1e-2, n_beta=1.0)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.ones(3)
    slots = make_slots({"a": a, "b": b}, {"b": None, "a": None}, h, keep_center=False)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    sgld_step(slots, h, generator=g1)
    assert torch.equal(b.detach(), torch.zeros(3))
    expected = -0.5e-2 + 0.1 * torch.normal(0.0, 1.0, size=(3,), generator=g2)
    torch.testing.assert_close(a.detach(), expected)


def test_metrics_match_float64_norms() -> None:
    h = SGLDHyper(lr=1e-2, n_beta=3.0, localization=2.0, weight_decay=0.5)
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(4, 4, generator=g))
    slots = make_slots({"p": p}, {"p": None}, h, keep_center=True)
    with torch.no_grad():
        p.add_(0.1)  # away from the center so localization is non-zero
    p.grad = torch.randn(4, 4, generator=g)
    theta, theta0, grad = (
        p.detach().double().numpy(),
        slots[0].center.double().numpy(),
        p.grad.double().numpy(),
    )
    noise = torch.normal(0.0, 1.0, size=(4, 4), generator=torch.Generator().manual_seed(7)).double().numpy()
    m = sgld_step(slots, h, generator=torch.Generator().manual_seed(7), with_metrics=True).as_floats()
    sg = 0.5 * h.lr * h.n_beta * grad
    loc = 0.5 * h.lr * h.localization * (theta - theta0)
    wd = 0.5 * h.lr * h.weight_decay * theta
    nz = np.sqrt(h.lr) * noise
    expected = {
        "scaled_grad": np.linalg.norm(sg),
        "unscaled_grad": np.linalg.norm(sg),
        "localization": np.linalg.norm(loc),
        "weight_decay": np.linalg.norm(wd),
        "noise": np.linalg.norm(nz),
        "distance": np.linalg.norm(theta - theta0),
        "dot_grad_prior": (sg * (loc + wd)).sum(),
        "dot_grad_noise": (sg * nz).sum(),
        "dot_prior_noise": ((loc + wd) * nz).sum(),
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_plain_step_is_devinterps_per_parameter_update_bitwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The foreach path (no preconditioner, prior, box or metrics) gives devinterp's per-parameter bits,
    masked and unmasked, whatever the chunking of its foreach calls."""
    import distinterp.update as update

    g = torch.Generator().manual_seed(3)
    shapes = {"a": (4, 6), "b": (7,), "c": (3, 5), "d": (2, 2)}
    masks = {"a": None, "b": torch.rand(7, generator=g) > 0.5, "c": None, "d": None}
    start = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    grads = {n: torch.randn(s, generator=g) for n, s in shapes.items() if n != "d"}  # d: no gradient
    h = SGLDHyper(lr=3e-3, n_beta=7.0, noise_level=0.9)

    expected = {}
    noise = torch.Generator().manual_seed(11)
    for n in shapes:  # devinterp 2.x's SGLD.step, operation by operation
        p = start[n].clone()
        if n in grads:
            dw = grads[n] * h.n_beta
            draw = torch.normal(mean=0.0, std=h.noise_level, size=dw.size(), generator=noise)
            if masks[n] is not None:
                dw, draw = dw * masks[n].float(), draw * masks[n].float()
            p.add_(dw, alpha=-0.5 * h.lr)
            p.add_(draw, alpha=h.lr**0.5)
        expected[n] = p

    for chunk in (1 << 24, 30, 1):
        monkeypatch.setattr(update, "PLAIN_CHUNK", chunk)
        params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
        for n, gr in grads.items():
            params[n].grad = gr.clone()
        slots = make_slots(params, masks, h, keep_center=False)
        sgld_step(slots, h, generator=torch.Generator().manual_seed(11))
        for n in shapes:
            assert torch.equal(params[n].detach(), expected[n]), (chunk, n)
            if n in grads:
                assert torch.equal(params[n].grad, grads[n])  # the user's gradients are not touched
