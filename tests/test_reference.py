"""reference.expected_llc: full-batch float64 MALA for the estimator's finite-n target, against targets
known exactly (a population monomial by quadrature; the bigram at its MLE, a Dirichlet per row)."""

from __future__ import annotations

import math

import pytest
import torch

from distinterp import toy
from distinterp.reference import expected_llc


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the batches are small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("localization", [1.0, 10.0])
def test_matches_the_monomial_target_by_quadrature(localization):
    """w1^2 + w2^4 at n_beta = 1000 / log 1000 with localization: E[n_beta K] from quadrature
    (toy.monomial_expected_llc) within 4 standard errors; acceptance adapted to ~0.574, no drift."""
    n_beta = 1000 / math.log(1000)
    ref = expected_llc(
        lambda w: w[:, 0] ** 2 + w[:, 1] ** 4,
        torch.zeros(2),
        n_beta,
        localization,
        chains=400,
        burnin=800,
        draws=800,
    )
    exact = toy.monomial_expected_llc((1, 2), n_beta, localization)
    assert abs(ref.mean - exact) < 4 * ref.se, (ref, exact)
    assert ref.se < 0.01 * exact and 0.5 < ref.acceptance < 0.65
    assert abs(ref.drift) < 4 * ref.drift_se + 1e-12


def test_matches_the_bigram_dirichlet_target_on_an_empirical_loss():
    """An empirical loss at its minimum: the bigram MLE (V = 3, 1024 tokens, n_beta 200, no localization:
    the flat softmax shifts leave L_n unchanged), against toy.bigram_expected_llc within 4 s.e."""
    ds = toy.markov_dataset(toy.markov_chain(3, 0), 33, 32, 1)
    model = toy.bigram_mle(ds, 3)
    ref = expected_llc(
        toy.bigram_loss_float64(ds, 3),
        model.W.detach().reshape(-1),
        200.0,
        0.0,
        chains=400,
        burnin=600,
        draws=600,
    )
    exact = toy.bigram_expected_llc(ds, 3, 200.0)
    assert abs(ref.mean - exact) < 4 * ref.se, (ref, exact)
    assert ref.as_dict()["chains"] == 400


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_beta=0.0, localization=1.0), "n_beta"),
        (dict(n_beta=10.0, localization=-1.0), "localization"),
        (dict(n_beta=10.0, localization=1.0, chains=1), "chains"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        expected_llc(lambda w: (w**2).sum(dim=1), torch.zeros(1), **kwargs)
