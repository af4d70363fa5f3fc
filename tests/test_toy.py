"""toy: the Markov chain, its datasets, the bigram MLE and the bigram's exact LLC target."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from distinterp import toy
from distinterp.loss import compute_per_token_loss


def demo_dataset():
    d = toy.BIGRAM_DEMO
    return toy.markov_dataset(
        toy.markov_chain(d["V"], d["chain_seed"]), d["seq_len"], d["n_rows"], d["data_seed"]
    )


@pytest.mark.parametrize("V", [2, 6, 11])
def test_markov_chain_is_row_stochastic_with_floor(V):
    P = toy.markov_chain(V, seed=3, floor=0.3)
    assert P.dtype == torch.float64 and P.shape == (V, V)
    torch.testing.assert_close(P.sum(dim=1), torch.ones(V, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(P.min()) >= 0.3 / V - 1e-15
    assert torch.equal(P, toy.markov_chain(V, seed=3, floor=0.3))
    assert not torch.equal(P, toy.markov_chain(V, seed=4, floor=0.3))
    torch.testing.assert_close(
        toy.markov_chain(V, floor=1.0), torch.full((V, V), 1.0 / V, dtype=torch.float64)
    )


def test_stationary_distribution_is_invariant():
    P = toy.markov_chain(5, seed=1)
    pi = toy.stationary_distribution(P)
    assert float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (pi > 0).all()
    torch.testing.assert_close(pi @ P, pi, rtol=0, atol=1e-12)


def test_markov_dataset_is_deterministic_per_seed():
    P = toy.markov_chain(4, seed=0)
    a = toy.markov_dataset(P, seq_len=7, n_rows=20, seed=5)
    b = toy.markov_dataset(P, seq_len=7, n_rows=20, seed=5)
    c = toy.markov_dataset(P, seq_len=7, n_rows=20, seed=6)
    assert a.column_names == ["input_ids"]
    assert a["input_ids"] == b["input_ids"]
    assert a["input_ids"] != c["input_ids"]
    ids = np.asarray(a["input_ids"])
    assert ids.shape == (20, 7) and ids.min() >= 0 and ids.max() < 4


def test_markov_dataset_follows_the_chain():
    """Empirical transition frequencies and the start distribution converge to P and pi."""
    P = toy.markov_chain(3, seed=2)
    ds = toy.markov_dataset(P, seq_len=50, n_rows=400, seed=0)
    counts = toy.bigram_counts(ds, 3).double()
    assert int(counts.sum()) == 400 * 49
    torch.testing.assert_close(counts / counts.sum(dim=1, keepdim=True), P, rtol=0, atol=0.02)
    first = np.bincount(np.asarray(ds["input_ids"])[:, 0], minlength=3) / 400
    np.testing.assert_allclose(first, toy.stationary_distribution(P).numpy(), atol=0.08)
    uniform = toy.markov_dataset(P, seq_len=2, n_rows=3000, seed=0, start="uniform")
    first = np.bincount(np.asarray(uniform["input_ids"])[:, 0], minlength=3) / 3000
    np.testing.assert_allclose(first, np.full(3, 1 / 3), atol=0.03)


def test_bigram_mle_has_zero_gradient():
    """At the MLE the mean per-token loss over the dataset is stationary (up to float32 rounding)."""
    d = toy.BIGRAM_DEMO
    ds = demo_dataset()
    model = toy.bigram_mle(ds, d["V"])
    ids = torch.tensor(ds["input_ids"])
    loss = compute_per_token_loss(model, ids).mean()
    loss.backward()
    assert float(model.W.grad.abs().max()) < 1e-6
    # Its loss is the empirical conditional entropy, below that of any other table (here: a perturbed one).
    other = toy.BigramLM(d["V"], model.W.detach() + 0.05 * torch.randn(d["V"], d["V"]))
    with torch.no_grad():
        assert float(compute_per_token_loss(other, ids).mean()) > float(loss.detach())
    # Every row is a log-probability vector: the model predicts with the empirical frequencies.
    torch.testing.assert_close(model.W.detach().exp().sum(dim=1), torch.ones(d["V"]))
    # The shift symmetry: adding a constant to a row changes no prediction, so it is not identifiable.
    shifted = toy.BigramLM(d["V"], model.W.detach() + torch.arange(d["V"], dtype=torch.float32)[:, None])
    with torch.no_grad():
        torch.testing.assert_close(compute_per_token_loss(shifted, ids).mean(), loss.detach())


def test_bigram_mle_with_unseen_transitions(caplog):
    """A transition that never occurs: refused with pseudo_count=0, else a tiny logged pseudo-count."""
    ds = {"input_ids": [[0, 1, 0, 1, 1]]}  # 0->0 never occurs, and 2 never precedes anything
    with pytest.raises(ValueError, match="never occur"):
        toy.bigram_mle(ds, 3, pseudo_count=0)
    with caplog.at_level(logging.WARNING, logger="distinterp.toy"):
        model = toy.bigram_mle(ds, 3)
    assert "never occur" in caplog.text
    assert torch.isfinite(model.W).all()
    probs = model.W.detach().double().exp()
    assert probs[0, 1] == pytest.approx(1.0, abs=1e-5)  # 0 -> 1 always
    torch.testing.assert_close(probs[2], torch.full((3,), 1 / 3, dtype=torch.float64))  # unseen row: uniform
    with pytest.raises(ValueError, match="pseudo_count"):
        toy.bigram_mle(ds, 3, pseudo_count=-1.0)
    with pytest.raises(ValueError, match="every transition"):
        toy.bigram_expected_llc(ds, 3, 100.0)


def test_bigram_learning_coefficient():
    assert [toy.bigram_learning_coefficient(V) for V in (2, 3, 6)] == [1, 3, 15]


def test_bigram_expected_llc_tends_to_lambda():
    """The exact finite-n_beta target: lambda + (sum_ab 1/q_ab - V) / (12 m_a) + ..., decreasing to V(V-1)/2."""
    V = 4
    ds = toy.markov_dataset(toy.markov_chain(V, seed=1), seq_len=33, n_rows=200, seed=2)
    lam = toy.bigram_learning_coefficient(V)
    values = [toy.bigram_expected_llc(ds, V, n) for n in (1e2, 1e3, 1e4, 1e6)]
    assert all(v > lam for v in values)
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(lam, rel=1e-4)
    # The first-order term, from the docstring's expansion.
    counts = toy.bigram_counts(ds, V).double()
    n_a = counts.sum(dim=1)
    q = counts / n_a[:, None]
    n_beta = 1e4
    m = n_beta * n_a / n_a.sum()
    first_order = lam + float(((1 / q).sum(dim=1) - 1).div(12 * m).sum())
    assert values[2] == pytest.approx(first_order, rel=1e-4)


def test_bigram_demo_problem():
    """The documented demo: every transition seen, target 15.17 at n_beta=1000, lambda 15."""
    d = toy.BIGRAM_DEMO
    ds = demo_dataset()
    assert len(ds) * (d["seq_len"] - 1) == 32768
    assert (toy.bigram_counts(ds, d["V"]) > 0).all()
    target = toy.bigram_expected_llc(ds, d["V"], toy.BIGRAM_LLC_SETTINGS["n_beta"])
    assert target == pytest.approx(15.17, abs=0.01)


def test_bigram_lm_shapes_and_errors():
    model = toy.BigramLM(5)
    assert model.config.vocab_size == 5
    assert model(torch.tensor([[0, 4, 2]])).shape == (1, 3, 5)
    with pytest.raises(ValueError, match="logits"):
        toy.BigramLM(5, torch.zeros(4, 5))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: toy.markov_chain(1), "V"),
        (lambda: toy.markov_chain(3, floor=1.5), "floor"),
        (lambda: toy.markov_chain(3, concentration=0.0), "concentration"),
        (lambda: toy.markov_dataset(torch.ones(2, 3) / 3, 4, 4), "square"),
        (lambda: toy.markov_dataset(torch.ones(3), 4, 4), "square"),
        (lambda: toy.markov_dataset(torch.ones(2, 2), 4, 4), "probability"),
        (lambda: toy.markov_dataset(toy.markov_chain(2), 0, 4), "seq_len"),
        (lambda: toy.markov_dataset(toy.markov_chain(2), 4, 4, start="first"), "start"),
        (lambda: toy.bigram_expected_llc({"input_ids": [[0, 1, 1, 0, 0]]}, 2, 0.0), "n_beta"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tiny_gpt2_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = toy.tiny_gpt2(vocab_size=10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = toy.tiny_gpt2(vocab_size=10, seed=1)
    c = toy.tiny_gpt2(vocab_size=10, seed=2)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.vocab_size == 10 and a.config.resid_pdrop == 0.0


# ─── The known-answer suite's models ─────────────────────────────────────────────────────────────


def test_deepest_dln_point_has_every_layer_at_rank_r_and_is_a_true_parameter():
    """point='deepest': each layer has rank r (rank 0: the origin), the product is the target, K = 0."""
    for widths, rank in [([3, 2, 6], 1), ([4, 3, 5], 0), ([3, 2, 3, 2, 3], 1)]:
        model = toy.DeepLinearNetwork(widths, rank, seed=1, point="deepest")
        assert [int(torch.linalg.matrix_rank(w.double(), tol=1e-5)) for w in model.weights] == [rank] * (
            len(widths) - 1
        )
        ids = torch.zeros((2, 2), dtype=torch.int64)
        assert float(toy.dln_population_loss(model, ids).detach().max()) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="point"):
        toy.DeepLinearNetwork([2, 2, 2], 1, point="deep")


def test_dln_empirical_loss_is_the_regression_nll_of_the_stored_samples():
    model = toy.DeepLinearNetwork([3, 2, 4], 1, point="deepest")
    ids = toy.dln_regression_data(model, 50, seed=3)
    assert ids.shape == (50, 2) and ids[:, 0].tolist() == list(range(50))
    loss = toy.dln_empirical_loss(model, ids[[4, 7]])
    x, y = model.data_x[[4, 7]].double(), model.data_y[[4, 7]].double()
    expected = 0.5 * ((y - x @ model.product().double().T) ** 2).sum(dim=1, keepdim=True)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    other = toy.DeepLinearNetwork([3, 2, 4], 1, point="deepest")
    toy.dln_regression_data(other, 50, seed=4)
    assert not torch.equal(model.data_y, other.data_y)


def test_monomial_coefficients_and_their_finite_n_targets():
    """Sum: lambda = sum 1/(2k), exactly the target without localization; normal crossing: min 1/(2k) with
    multiplicity; localization lowers the target (quadrature), less as n_beta grows."""
    from fractions import Fraction

    assert toy.monomial_learning_coefficient((1, 2)) == (Fraction(3, 4), 1)
    assert toy.monomial_learning_coefficient((1, 2), product=True) == (Fraction(1, 4), 1)
    assert toy.monomial_learning_coefficient((2, 2), product=True) == (Fraction(1, 4), 2)
    assert toy.monomial_expected_llc((1, 2), 9.23) == 0.75
    assert toy.monomial_expected_llc((1,), 100.0, 1.0) == pytest.approx(100 / 201, rel=1e-6)  # n / (2n + loc)
    low, high = (toy.monomial_expected_llc((2,), n, 1.0) for n in (100.0, 1e4))
    assert low < high < 0.25 and high == pytest.approx(0.25, rel=0.01)
    crossing = toy.monomial_expected_llc((1, 2), 1e3, 1.0, product=True)
    assert 0.2 < crossing < 0.25
    with pytest.raises(ValueError, match="localization > 0"):
        toy.monomial_expected_llc((1, 2), 1e3, product=True)
    model = toy.Monomials((1, 2), product=True)
    with torch.no_grad():
        model.w.copy_(torch.tensor([2.0, 0.5]))
    loss = toy.monomial_loss(model, torch.zeros((1, 2), dtype=torch.int64)).detach()
    assert float(loss.max()) == pytest.approx(4 * 0.0625)


def test_float64_empirical_losses_are_the_losses_sample_averages():
    """toy.dln_empirical_loss_float64 and toy.bigram_loss_float64 (batched over chains) equal the mean of
    the per-sample / per-token losses sample() reads, at the checkpoint and at a moved point."""
    model = toy.DeepLinearNetwork([3, 2, 3, 2], 1, point="deepest")
    ids = toy.dln_regression_data(model, 64, seed=2)
    loss, w0 = toy.dln_empirical_loss_float64(model)
    assert w0.shape == (6 + 6 + 6,)
    moved = w0 + 0.3 * torch.randn(w0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = loss(torch.stack([w0, moved]))
    with torch.no_grad():
        expected = [float(toy.dln_empirical_loss(model, ids).double().mean())]
    with torch.no_grad():
        for param, part in zip(model.weights, torch.split(moved, [6, 6, 6]), strict=True):
            param.copy_(part.reshape(param.shape).float())
        expected.append(float(toy.dln_empirical_loss(model, ids).double().mean()))
    torch.testing.assert_close(batch, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)

    ds = toy.markov_dataset(toy.markov_chain(3, 0), 17, 20, 1)
    bigram = toy.bigram_mle(ds, 3)
    tokens = torch.tensor(ds["input_ids"])
    with torch.no_grad():
        per_token = float(compute_per_token_loss(bigram, tokens).double().mean())
    value = toy.bigram_loss_float64(ds, 3)(bigram.W.detach().double().reshape(1, -1))
    assert float(value[0]) == pytest.approx(per_token, rel=1e-6)
    with pytest.raises(ValueError, match="dln_regression_data"):
        toy.dln_empirical_loss_float64(toy.DeepLinearNetwork([2, 2, 2], 1))


@pytest.mark.parametrize("widths, rank", [([3, 2, 6], 1), ([4, 3, 5], 0), ([3, 2, 3, 2, 3], 1)])
def test_dln_empirical_minimum_is_the_reduced_rank_regression_fit(widths, rank):
    """The trained checkpoint: zero gradient of L_n, below the truth and below nearby points, product of
    rank <= the narrowest hidden width, balanced layers; the truth and the samples are kept."""
    model = toy.DeepLinearNetwork(widths, rank, point="deepest")
    toy.dln_regression_data(model, 200, seed=1)
    trained = toy.dln_empirical_minimum(model)
    assert torch.equal(trained.target, model.target) and torch.equal(trained.data_y, model.data_y)
    loss, w = toy.dln_empirical_loss_float64(trained)
    w = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(w[None]).sum(), w)
    assert float(grad.abs().max()) < 1e-5  # float32 weights: zero up to rounding
    at_min = float(loss(w.detach()[None])[0])
    assert at_min < float(
        toy.dln_empirical_loss_float64(model)[0](toy.dln_empirical_loss_float64(model)[1][None])
    )
    near = w.detach() + 1e-2 * torch.randn(
        200, w.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert float(loss(near).min()) > at_min
    k = min(widths[1:-1])
    assert int(torch.linalg.matrix_rank(trained.product().double(), atol=1e-5)) == min(
        k, widths[0], widths[-1]
    )
    singular = [torch.linalg.svdvals(p.detach().double())[:k] for p in trained.weights]
    for s in singular[1:]:
        torch.testing.assert_close(s, singular[0], rtol=1e-4, atol=1e-6)
