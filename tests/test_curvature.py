"""The loss's top curvature (power iteration on Hessian-vector products) against a float64 analytic
Hessian, and the step-size ceiling calibrate() draws from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distinterp import toy
from distinterp.analyses.curvature import CEILING, lr_ceiling, step_stiffness, top_eigenvalue
from distinterp.jobs.calibrate import apply_ceiling, calibrate, checkpoint_curvature
from distinterp.jobs.sweep import RECORD


def test_top_eigenvalue_matches_the_analytic_hessian_of_a_quadratic():
    """0.5 x^T A x over two parameter tensors, A float64 with known spectrum: the top eigenvalue to 1e-6."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    spectrum = np.array([9.0, 4.0, 3.0, 1.0, 0.5, 0.1, 0.0])
    a = torch.as_tensor(q @ np.diag(spectrum) @ q.T)
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    head, tail = torch.randn(3, dtype=torch.float64, requires_grad=True), x[3:].detach().requires_grad_()

    def loss() -> torch.Tensor:
        w = torch.cat([head, tail])
        return 0.5 * w @ a @ w

    got = top_eigenvalue(loss, [head, tail], iters=200, rtol=1e-12)
    assert got == pytest.approx(float(np.linalg.eigvalsh(a.numpy()).max()), rel=1e-6)
    assert top_eigenvalue(lambda: (head * 3.0).sum(), [head]) == 0.0  # linear: no curvature
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(loss, [head], iters=0)


def test_checkpoint_curvature_of_toy_models_and_the_stiffness_it_sets():
    """w1^2 + w2^4 at 0: Hessian diag(2, 0); a reduced-rank regression at its deepest point: the
    population loss's Hessian there is known in closed form only through its top eigenvalue, so it is
    checked against a dense float64 Hessian of the same loss."""
    ids = torch.zeros((8, 2), dtype=torch.int64)
    assert checkpoint_curvature(toy.Monomials((1, 2)), ids, toy.monomial_loss, 1) == pytest.approx(2.0)
    model = toy.DeepLinearNetwork([3, 2, 6], 1, point="deepest")
    got = checkpoint_curvature(model, ids, toy.dln_population_loss, 1)
    params = [p.detach().double() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    target = model.target.double()

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [c.reshape(p.shape) for c, p in zip(torch.split(flat, sizes), params)]
        product = parts[0]
        for w in parts[1:]:
            product = w @ product
        return 0.5 * ((product - target) ** 2).sum()

    assert params[0].shape[1] == 3  # the first layer reads the input
    dense = torch.autograd.functional.hessian(flat_loss, torch.cat([p.flatten() for p in params]))
    assert got == pytest.approx(float(torch.linalg.eigvalsh(dense).max()), rel=1e-3)
    assert step_stiffness(1e-3, 100.0, 2.0, 10.0) == pytest.approx(0.21)
    assert lr_ceiling(100.0, 2.0, 10.0) == pytest.approx(CEILING / 210.0)
    assert math.isinf(lr_ceiling(100.0, 0.0))


def test_the_ceiling_drops_the_stiff_lrs_and_extends_the_grid_below():
    """A stiff quadratic (lambda_max 40, n_beta 145): on the half-decade grid only lr <= 1e-4 have
    lr x (n_beta x 40 + 10) <= 1; with n_beta 10x larger none of the grid does and the grid continues a
    decade down (1e-6, 3e-6) to keep three lr; a soft model loses nothing."""
    grid = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    stiff = apply_ceiling(grid, 145.0, 40.0, [0.0, 1.0, 10.0], 1.0)
    assert stiff.lrs == (1e-5, 3e-5, 1e-4) and stiff.added == ()
    assert sorted(stiff.dropped) == [3e-4, 1e-3, 3e-3, 1e-2]
    assert stiff.dropped[3e-4] == pytest.approx(3e-4 * (145 * 40 + 10), abs=1e-3)
    stiffer = apply_ceiling(grid, 1450.0, 40.0, [0.0, 1.0], 1.0)
    assert stiffer.lrs == (1e-6, 3e-6, 1e-5) and stiffer.added == (1e-6, 3e-6)
    assert apply_ceiling(grid, 145.0, 0.05, [0.0], 1.0).dropped == {}


def test_calibrate_drops_the_lrs_above_the_ceiling_and_says_so(tmp_path):
    """w1^2 + w2^4 at n_beta 100 (curvature 200 per unit lr): lr 1e-2 and 1e-1 are above the ceiling and
    not run; 1e-4 and 1e-5 are added; the record, the table's attrs and the reason name them."""
    ids = torch.zeros((4, 2), dtype=torch.int64)
    root = tmp_path / "cal"
    cal = calibrate(
        toy.Monomials((1, 2)),
        ids,
        {},
        output_path=str(root),
        grid={"lr": [1e-3, 1e-2, 1e-1], "localization": [0.0]},
        loss_fn=toy.monomial_loss,
        n_beta=100.0,
        batch_size=1,
        num_init_loss_batches=1,
        num_chains=2,
        num_draws=20,
        scale_draws=False,
    )
    assert cal is not None
    assert [str(c) for c in cal.table.cell.values] == [
        "lr=1e-05_localization=0",
        "lr=0.0001_localization=0",
        "lr=0.001_localization=0",
    ]
    attrs = cal.table.attrs
    assert attrs["lambda_max"] == pytest.approx(2.0) and attrs["lr_ceiling"] == CEILING
    assert attrs["dropped_lr"] == [1e-2, 1e-1] and attrs["added_lr"] == [1e-5, 1e-4]
    assert attrs["dropped_stiffness"] == pytest.approx([2.0, 20.0])
    assert "lr 0.01, 0.1 not run" in cal.reason
    assert json.loads((root / RECORD).read_text())["curvature"]["dropped"] == [[0.01, 2.0], [0.1, 20.0]]
