"""MALA acceptance (devinterp 1.x's MalaAcceptanceRate, Furman & Lau 2024): sgld_step's part plus the
loss part equal a float64 NumPy transcription of the formula; sample(save_metrics=True) records it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import distinterp
from distinterp.update import MALA_GEOMETRIC, SGLDHyper, make_slots, mala_acceptance, sgld_step
from tests.conftest import SMALL, tiny_gpt2, token_dataset


def reference_acceptance(prev, cur, grad_prev, grad_cur, u_prev, u_cur, lr):
    """devinterp 1.x's formula, in float64: min(1, exp(log q(prev|cur) - log q(cur|prev) + U(prev) - U(cur)))."""
    log_q_cur_to_prev = -np.sum((prev - cur + 0.5 * lr * grad_cur) ** 2) / (2 * lr)
    log_q_prev_to_cur = -np.sum((cur - prev + 0.5 * lr * grad_prev) ** 2) / (2 * lr)
    return min(1.0, float(np.exp(log_q_cur_to_prev - log_q_prev_to_cur + u_prev - u_cur)))


@pytest.mark.parametrize("localization", [0.0, 2.0])
def test_acceptance_matches_the_formula(localization: float) -> None:
    """A quadratic loss L = 0.5 x^T A x (gradients set by hand), masked, over several steps."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    A = A @ A.T / 6 + np.eye(6)
    n_beta, lr, wd = 20.0, 0.03, 0.1
    hyper = SGLDHyper(lr=lr, n_beta=n_beta, localization=localization, weight_decay=wd)
    p = torch.nn.Parameter(torch.tensor(rng.normal(size=6), dtype=torch.float32))
    mask = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    slots = make_slots({"w": p}, {"w": mask}, hyper, keep_center=True)
    center = slots[0].center.double().numpy()
    m = mask.double().numpy()
    torch.manual_seed(0)

    def potential(x: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(loss, U = n_beta loss + priors, masked grad U) at x."""
        loss = 0.5 * x @ A @ x
        u = n_beta * loss + 0.5 * localization * np.sum((x - center) ** 2) + 0.5 * wd * np.sum(x**2)
        return loss, u, m * (n_beta * A @ x + localization * (x - center) + wd * x)

    prev, seen = None, []
    for step in range(8):
        x = p.detach().double().numpy().copy()
        loss, u, grad_u = potential(x)
        p.grad = torch.tensor(A @ x, dtype=torch.float32)
        geometric = sgld_step(slots, hyper, with_metrics=True, mala=True).values[MALA_GEOMETRIC]
        if prev is None:
            assert torch.isnan(geometric).all()
        else:
            x_prev, loss_prev, u_prev, grad_prev = prev
            expected = reference_acceptance(x_prev, x, grad_prev, grad_u, u_prev, u, lr)
            got = mala_acceptance(geometric, n_beta, torch.tensor(loss_prev), torch.tensor(loss))
            assert float(got) == pytest.approx(expected, rel=1e-3, abs=1e-5), step
            seen.append(expected)
        prev = (x, loss, u, grad_u)
    assert min(seen) < 0.95  # the test sees rejections, not only acceptance 1


def test_sample_records_the_acceptance(tmp_path: Path) -> None:
    ds = token_dataset()
    tree = distinterp.sample(
        tiny_gpt2(), ds, {"train": ds}, output_path=tmp_path / "r.zarr", save_metrics=True, **SMALL
    )
    acc = tree.dataset.metrics_mala_acceptance
    assert acc.dims == ("chain", "step")
    assert np.isnan(acc.values[:, 0]).all()  # no previous point at a chain's first step
    assert ((acc.values[:, 1:] >= 0) & (acc.values[:, 1:] <= 1)).all()
    diag = distinterp.diagnose(tree)
    assert "mala" in diag.checks.attrs["checks_run"]
    np.testing.assert_allclose(diag.checks.mala_acceptance.values, np.nanmean(acc.values, axis=1), rtol=1e-6)


def test_resumed_chain_records_the_same_acceptance(tmp_path: Path) -> None:
    """Preempted at step 51 of 52 with a checkpoint at 50, the rerun writes the uninterrupted bytes: the
    checkpoint carries the previous point and loss of the MALA acceptance."""
    from tests.test_batched import _Preempt
    from tests.test_sampling import assert_same_data

    ds = token_dataset()
    opts = {**SMALL, "num_chains": 1, "num_draws": 52, "save_metrics": True, "checkpoint_every": 50}

    def run(name: str, loss: _Preempt) -> object:
        return distinterp.sample(
            tiny_gpt2(), ds, {"train": ds}, output_path=tmp_path / name, loss_fn=loss, **opts
        )

    clean = run("clean.zarr", _Preempt(None)).dataset
    loss = _Preempt(51)
    with pytest.raises(RuntimeError, match="preempted"):
        run("resumed.zarr", loss)
    resumed = run("resumed.zarr", loss).dataset
    assert np.isfinite(resumed.metrics_mala_acceptance.values[0, 50])  # the first step after the resume
    assert_same_data(resumed, clean)
