"""Built-in tiny models and data with known answers (no downloads): for the demo, tests and benchmarks.

The bigram language model on a Markov chain is a *regular* model with a closed-form learning
coefficient. Its parameters are a V x V logits table W, row a giving p(. | a) = softmax(W[a]). Adding a
constant to a row leaves every prediction unchanged, so of the V^2 parameters only V(V-1) are
identifiable; at the maximum-likelihood point the Hessian of the loss has rank V(V-1) and

    lambda = (number of identifiable parameters) / 2 = V (V - 1) / 2.

n_beta semantics (devinterp 2.x): the sampler targets exp(-n_beta * L(W)) with L the MEAN per-token
loss, so n_beta is the number of tokens the posterior is tempered at, and the LLC estimate is
n_beta * (E_posterior[L] - L(W*)). For the bigram model the posterior at W* with no localization is
exactly a Dirichlet per row (see `bigram_expected_llc`), which gives the estimator's exact target at
any finite n_beta: lambda + O(1 / n_beta).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "BIGRAM_DEMO",
    "BIGRAM_LLC_SETTINGS",
    "BigramConfig",
    "BigramLM",
    "DeepLinearNetwork",
    "Monomials",
    "bigram_counts",
    "bigram_expected_llc",
    "bigram_learning_coefficient",
    "bigram_loss_float64",
    "bigram_mle",
    "dln_empirical_loss",
    "dln_empirical_loss_float64",
    "dln_empirical_minimum",
    "dln_learning_coefficient",
    "dln_population_loss",
    "dln_regression_data",
    "markov_chain",
    "markov_dataset",
    "monomial_expected_llc",
    "monomial_learning_coefficient",
    "monomial_loss",
    "rrr_learning_coefficient",
    "stationary_distribution",
    "tiny_gpt2",
]


# --------------------------------------------------------------------------------------------- data


def markov_chain(V: int, seed: int = 0, *, concentration: float = 1.0, floor: float = 0.25) -> torch.Tensor:
    """A random V x V transition matrix (float64, rows sum to 1), seeded.

    Row a = (1 - floor) * Dirichlet(concentration, ..., concentration) + floor / V, so every
    transition has probability >= floor / V: moderate-size data then sees every transition, the MLE is
    finite, and the loss Hessian is not badly conditioned (which would make SGLD slow to mix).
    """
    if V < 2:
        raise ValueError(f"V: need at least 2 symbols, got {V}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor: must be in [0, 1], got {floor}")
    if not concentration > 0.0:
        raise ValueError(f"concentration: must be > 0, got {concentration}")
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(V, float(concentration)), size=V)
    return torch.as_tensor((1.0 - floor) * rows + floor / V, dtype=torch.float64)


def stationary_distribution(transition: torch.Tensor) -> torch.Tensor:
    """The stationary distribution pi = pi P of a row-stochastic matrix (float64)."""
    P = np.asarray(transition, dtype=np.float64)
    vals, vecs = np.linalg.eig(P.T)
    pi = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    pi = np.clip(pi / pi.sum(), 0.0, None)
    return torch.as_tensor(pi / pi.sum(), dtype=torch.float64)


def markov_dataset(
    transition: torch.Tensor, seq_len: int, n_rows: int, seed: int = 0, *, start: str = "stationary"
) -> Any:
    """A `datasets.Dataset` with "input_ids": n_rows sequences of seq_len symbols from the chain.

    The first symbol of each row is drawn from the stationary distribution (start="stationary", so
    every position is identically distributed) or uniformly (start="uniform"); seeded, deterministic.
    """
    from datasets import Dataset

    P = np.asarray(transition, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"transition: expected a square matrix, got shape {P.shape}")
    if (P < 0).any() or not np.allclose(P.sum(axis=1), 1.0):
        raise ValueError("transition: rows must be probability vectors (non-negative, summing to 1)")
    V = P.shape[0]
    if seq_len < 1 or n_rows < 1:
        raise ValueError(f"seq_len and n_rows must be >= 1, got {seq_len}, {n_rows}")
    if start == "stationary":
        p0 = stationary_distribution(transition).numpy()
    elif start == "uniform":
        p0 = np.full(V, 1.0 / V)
    else:
        raise ValueError(f"start: 'stationary' or 'uniform', got {start!r}")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(P, axis=1)
    cum[:, -1] = 1.0
    ids = np.empty((n_rows, seq_len), dtype=np.int64)
    ids[:, 0] = rng.choice(V, size=n_rows, p=p0)
    u = rng.random((n_rows, seq_len))
    for t in range(1, seq_len):  # inverse-CDF sampling of every row's next symbol at once
        ids[:, t] = (u[:, t, None] > cum[ids[:, t - 1]]).sum(axis=1)
    return Dataset.from_dict({"input_ids": ids.tolist()})


def bigram_counts(dataset: Any, V: int) -> torch.Tensor:
    """counts[a, b] = number of positions t with input_ids[t] = a and input_ids[t + 1] = b (int64)."""
    from distinterp.data import input_ids_tensor

    ids = input_ids_tensor(dataset, "dataset", V)
    pairs = ids[:, :-1].reshape(-1) * V + ids[:, 1:].reshape(-1)
    return torch.bincount(pairs, minlength=V * V).reshape(V, V)


# --------------------------------------------------------------------------------------------- bigram


@dataclass
class BigramConfig:
    """What sample() reads from a model's `config`: the vocabulary size (token ids are checked against it)."""

    vocab_size: int
    model_type: str = "bigram"


class BigramLM(torch.nn.Module):
    """Bigram language model: logits for the next token are the row W[current token] of a V x V table."""

    def __init__(self, vocab_size: int, logits: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = BigramConfig(vocab_size)
        init = torch.zeros(vocab_size, vocab_size) if logits is None else logits.detach().clone().float()
        if tuple(init.shape) != (vocab_size, vocab_size):
            raise ValueError(f"logits: expected shape {(vocab_size, vocab_size)}, got {tuple(init.shape)}")
        self.W = torch.nn.Parameter(init)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, V) = W[input_ids]."""
        return self.W[input_ids]


def bigram_mle(dataset: Any, V: int, pseudo_count: float | None = None) -> BigramLM:
    """The bigram model at the minimum of the dataset's mean per-token loss: W[a] = log counts[a] / n_a.

    So the empirical loss has zero gradient there (up to float32 rounding), as the LLC estimator
    assumes. A transition that never occurs would need logit -inf; pseudo_count=None adds nothing when
    every transition occurs and otherwise adds 1e-6 to every count (logged). Its effect: each unseen
    (a, b) gets logit ~ log(1e-6 / n_a), its loss is then flat to within ~1e-6 / n_a in every direction
    SGLD explores, so it contributes ~0 to the LLC (expect sum over rows of (observed successors - 1)/2,
    not V(V-1)/2), while seen transitions move by ~1e-6 / n_a; a row never seen as a predecessor is
    uniform and entirely flat. Pass pseudo_count=0 to refuse zero counts instead.
    """
    counts = bigram_counts(dataset, V).to(torch.float64)
    zero = int((counts == 0).sum())
    if pseudo_count is None:
        pseudo_count = 1e-6 if zero else 0.0
        if zero:
            logger.warning(
                "bigram_mle: %d of %d transitions never occur; adding a pseudo-count of 1e-6 "
                "(their directions are then ~flat, so the expected LLC is below V(V-1)/2)",
                zero,
                V * V,
            )
    elif pseudo_count < 0:
        raise ValueError(f"pseudo_count: must be >= 0, got {pseudo_count}")
    if zero and pseudo_count == 0:
        raise ValueError(
            f"bigram_mle: {zero} of {V * V} transitions never occur in the dataset, so the MLE has logits "
            "-inf; use more data or pass pseudo_count > 0"
        )
    counts = counts + pseudo_count
    logits = torch.log(counts / counts.sum(dim=1, keepdim=True))
    return BigramLM(V, logits.float())


def bigram_learning_coefficient(V: int) -> float:
    """lambda = V (V - 1) / 2: a regular model with V(V-1) identifiable parameters (V^2 logits minus one
    softmax shift per row, directions along which the loss is exactly constant and which so count 0)."""
    return V * (V - 1) / 2


def bigram_expected_llc(dataset: Any, V: int, n_beta: float) -> float:
    """The exact value the LLC estimator targets for `bigram_mle(dataset, V)` at inverse temperature n_beta
    with no localization (and no SGLD error): lambda + O(1 / n_beta).

    The tempered posterior exp(-n_beta * L(W)) factorises over rows; with m_a = n_beta * n_a / N (row a's
    share of the N tokens) and q = the empirical transition frequencies, row a's probabilities
    softmax(W[a]) are Dirichlet(m_a q) under a flat prior on the logits (the softmax Jacobian is prod q).
    Since E log p_b = psi(m q_b) - psi(m),

        E[n_beta (L - L*)] = sum_a [ sum_b m_a q_ab (log(m_a q_ab) - psi(m_a q_ab)) - m_a (log m_a - psi(m_a)) ]
                           = sum_a [ (V - 1)/2 + (sum_b 1/q_ab - 1) / (12 m_a) + O(m_a^-3) ].
    """
    if not n_beta > 0:
        raise ValueError(f"n_beta: must be > 0, got {n_beta}")
    counts = bigram_counts(dataset, V).to(torch.float64)
    if (counts == 0).any():
        raise ValueError("bigram_expected_llc: every transition must occur in the dataset")
    n_a = counts.sum(dim=1)
    m = n_beta * n_a / n_a.sum()
    mq = m[:, None] * counts / n_a[:, None]
    per_row = (mq * (torch.log(mq) - torch.special.digamma(mq))).sum(dim=1) - m * (
        torch.log(m) - torch.special.digamma(m)
    )
    return float(per_row.sum())


def bigram_loss_float64(dataset: Any, V: int) -> Any:
    """The bigram's mean per-token loss L_n(W) = -sum_ab counts_ab log softmax(W_a)_b / N in float64, for a
    (chains, V*V) batch of flattened logits tables (-> (chains,)): the loss sample() averages over
    minibatches, from the transition counts alone."""
    counts = bigram_counts(dataset, V).to(torch.float64)
    total = float(counts.sum())

    def loss(w: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(w.reshape(-1, V, V), dim=-1)
        return -(counts * logp).sum(dim=(1, 2)) / total

    return loss


BIGRAM_DEMO: dict[str, Any] = dict(V=6, chain_seed=0, seq_len=65, n_rows=512, data_seed=1)
"""The demo problem (`distinterp demo`): markov_chain(V, chain_seed) -> markov_dataset(seq_len, n_rows,
data_seed) -> bigram_mle; 512 x 64 = 32768 tokens, every transition seen; true lambda = 15."""

BIGRAM_LLC_SETTINGS: dict[str, Any] = dict(
    lr=1e-3,
    n_beta=1000.0,
    localization=0.0,
    num_chains=4,
    num_draws=2000,
    num_burnin_steps=500,
    num_steps_bw_draws=1,
    batch_size=16,
    num_init_loss_batches=32,
)
"""SGLD settings for the bigram demo. The slowest posterior direction relaxes in ~1/(lr/2 n_beta h_min)
~ 300 steps here, so 500 burn-in steps and 2000 draws; measured on BIGRAM_DEMO: 15.0 +- 0.9 over 4 chains
(target `bigram_expected_llc` = 15.17 at n_beta=1000; true lambda 15)."""


# --------------------------------------------------------------------------------------------- transformer


def tiny_gpt2(
    vocab_size: int = 32,
    n_layer: int = 1,
    seed: int = 0,
    *,
    n_embd: int = 16,
    n_head: int = 2,
    n_positions: int = 128,
    dropout: float = 0.0,
    **config: Any,
) -> torch.nn.Module:
    """A tiny randomly initialised GPT-2 (transformers GPT2LMHeadModel, dropout off unless asked), from a
    fixed seed.

    For benchmarks and tests: no weights are downloaded; extra keyword arguments go to GPT2Config.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # transformers' logging is untyped
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        summary_first_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        **config,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GPT2LMHeadModel(cfg)


# --------------------------------------------------------------------------------------------- deep linear


class DeepLinearNetwork(torch.nn.Module):
    """x -> W_L ... W_1 x with widths H_1 (input) ... H_{L+1} (output), at a true parameter of rank r.

    point="generic": a seeded random factorisation whose product W* has rank `rank` (the last layer is
    projected onto r singular directions; the other layers have full rank). point="deepest": every layer
    has rank r (W_l = U_{l+1} S_l U_l^T, U_l orthonormal H_l x r; rank 0 is the origin), the most singular
    point of the true set, where the local learning coefficient is the global one of Aoyagi 2024 (at a
    generic point it can be larger: at rank 0 with W_1 of full rank, K is quadratic in W_2). With the
    population loss of `dln_population_loss` this is a singular model at a true parameter.
    """

    target: torch.Tensor
    data_x: torch.Tensor
    data_y: torch.Tensor

    def __init__(self, widths: list[int], rank: int, seed: int = 0, *, point: str = "generic") -> None:
        super().__init__()
        if len(widths) < 3 or min(widths) < 1:
            raise ValueError(f"widths: need >= 3 positive widths (>= 2 layers), got {widths}")
        if not 0 <= rank <= min(widths):
            raise ValueError(f"rank: must be in [0, min(widths)={min(widths)}], got {rank}")
        if point not in ("generic", "deepest"):
            raise ValueError(f"point: 'generic' or 'deepest', got {point!r}")
        g = torch.Generator().manual_seed(seed)
        if point == "deepest":
            ws = _deepest_factors(widths, rank, g)
        else:
            ws = [
                torch.randn(b, a, generator=g, dtype=torch.float64) / a**0.5
                for a, b in itertools.pairwise(widths)
            ]
            prefix = ws[0]
            for w in ws[1:-1]:
                prefix = w @ prefix
            u, _, _ = torch.linalg.svd(ws[-1] @ prefix)
            ws[-1] = u[:, :rank] @ u[:, :rank].T @ ws[-1]  # product has rank <= r (= r for generic seeds)
        self.widths = list(widths)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w.float()) for w in ws])
        self.register_buffer("target", self.product().detach().clone())

    def product(self) -> torch.Tensor:
        """W_L ... W_1, an (H_{L+1}, H_1) matrix. Indexes the list rather than slicing it: a slice wraps each
        item in a new nn.Parameter, which cuts the swapped-in weights of batched chains from the graph."""
        out: torch.Tensor = self.weights[0]
        for i in range(1, len(self.weights)):
            out = self.weights[i] @ out
        return out


def _deepest_factors(widths: list[int], rank: int, g: torch.Generator) -> list[torch.Tensor]:
    """Layers W_l = U_{l+1} S_l U_l^T of rank r each (U_l: H_l x r orthonormal, S_l: r x r, well conditioned)."""
    us = [torch.linalg.qr(torch.randn(h, rank, generator=g, dtype=torch.float64))[0] for h in widths]
    out = []
    for a, b in itertools.pairwise(range(len(widths))):
        s = torch.eye(rank, dtype=torch.float64) + 0.3 * torch.randn(
            rank, rank, generator=g, dtype=torch.float64
        )
        out.append(us[b] @ s @ us[a].T)
    return out


def dln_regression_data(
    model: DeepLinearNetwork, n: int, seed: int = 0, *, noise: float = 1.0
) -> torch.Tensor:
    """n samples x ~ N(0, I), y = W* x + noise N(0, I), kept on the model as buffers; returns the dataset.

    The dataset is (n, 2) int64 "token ids" whose first column indexes the samples, so sample() draws
    minibatches of sample indices and `dln_empirical_loss` looks them up (the second column is unused).
    """
    if n < 1:
        raise ValueError(f"n: need at least 1 sample, got {n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.widths[0], generator=g, dtype=torch.float64)
    y = x @ model.target.double().T + noise * torch.randn(
        n, model.widths[-1], generator=g, dtype=torch.float64
    )
    model.register_buffer("data_x", x.float())
    model.register_buffer("data_y", y.float())
    ids = torch.zeros(n, 2, dtype=torch.int64)
    ids[:, 0] = torch.arange(n)
    return ids


def dln_empirical_loss(model: DeepLinearNetwork, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample loss ||y - W(w) x||^2 / 2 (the negative log-likelihood up to a constant) of the samples
    `dln_regression_data` stored, indexed by input_ids[:, 0]; shape (batch, 1)."""
    idx = input_ids[:, 0]
    x, y = model.data_x[idx], model.data_y[idx]
    residual = y - x @ model.product().T
    return 0.5 * (residual**2).sum(dim=1, keepdim=True)


def _dln_flat(model: DeepLinearNetwork) -> torch.Tensor:
    """The network's weights W_1, ..., W_L flattened (row-major) and concatenated, float64: the order the
    float64 losses below read a (chains, d) batch in."""
    return torch.cat([w.detach().double().reshape(-1) for w in model.weights])


def dln_empirical_loss_float64(model: DeepLinearNetwork) -> tuple[Any, torch.Tensor]:
    """(loss, w0): the empirical loss L_n(w) = mean_i ||y_i - W(w) x_i||^2 / 2 of the samples
    `dln_regression_data` stored, in float64, for a (chains, d) batch of flattened weights (-> (chains,)),
    and the model's own weights flattened the same way.

    L_n depends on the data through its second moments only (Sxx = X^T X / n, Syx = Y^T X / n,
    syy = tr Y^T Y / n): L_n = (syy - 2 tr(W Sxy) + tr(W Sxx W^T)) / 2, so a batch of chains costs a few
    small matrix products. Reads the float32 samples the sampler reads, widened.
    """
    if not hasattr(model, "data_x"):
        raise ValueError("model: no stored samples; call toy.dln_regression_data(model, n, seed) first")
    x, y = model.data_x.double(), model.data_y.double()
    n = x.shape[0]
    sxx, syx, syy = x.T @ x / n, y.T @ x / n, float((y * y).sum()) / n
    shapes = [tuple(w.shape) for w in model.weights]
    sizes = [a * b for a, b in shapes]

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = torch.split(w, sizes, dim=-1)
        prod = parts[0].reshape(-1, *shapes[0])
        for part, shape in zip(parts[1:], shapes[1:], strict=True):
            prod = part.reshape(-1, *shape) @ prod
        quad = ((prod @ sxx) * prod).sum(dim=(1, 2))
        return 0.5 * (syy - 2.0 * (prod * syx).sum(dim=(1, 2)) + quad)

    return loss, _dln_flat(model)


def dln_empirical_minimum(model: DeepLinearNetwork) -> DeepLinearNetwork:
    """A copy of `model` (same truth, same stored samples) whose weights sit at the minimum of its empirical
    loss L_n: the checkpoint a researcher's training reaches, where the truth's A = B = 0 is not.

    The product is constrained to rank k = the narrowest hidden width, so the minimum is reduced-rank
    regression (Anderson 1951; Izenman 1975): with S = Sxx^(1/2) and W_ols = Syx Sxx^-1, L_n(W) = const +
    ||(W - W_ols) S||_F^2 / 2, so W = [W_ols S]_k S^-1 with [.]_k the rank-k truncated SVD (Eckart-Young).
    It is factored in balance (the factorisation gradient descent from a small start approaches):
    W = U Sigma V^T, W_1 = E_1 Sigma^(1/L) V^T, W_l = E_l Sigma^(1/L) E_(l-1)^T, W_L = U Sigma^(1/L) E^T,
    E_l the first k coordinate directions of layer l's output.
    """
    import copy

    if not hasattr(model, "data_x"):
        raise ValueError("model: no stored samples; call toy.dln_regression_data(model, n, seed) first")
    x, y = model.data_x.double(), model.data_y.double()
    n = x.shape[0]
    sxx, syx = x.T @ x / n, y.T @ x / n
    evals, evecs = torch.linalg.eigh(sxx)
    if float(evals.min()) <= 0:
        raise ValueError("model: the stored inputs do not span the input space (need n >= input width)")
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    root_inv = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    w_ols = syx @ torch.linalg.inv(sxx)
    k = min(model.widths[1:-1])
    u, sig, vh = torch.linalg.svd(w_ols @ root)
    k = min(k, int(sig.shape[0]))
    w_min = u[:, :k] @ torch.diag(sig[:k]) @ vh[:k] @ root_inv
    u, sig, vh = torch.linalg.svd(w_min)
    u, sig, v = u[:, :k], sig[:k], vh[:k].T
    scale = torch.diag(sig ** (1.0 / len(model.weights)))
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(model.widths)):
        left = u if i == len(model.weights) - 1 else torch.eye(b, k, dtype=torch.float64)
        right = v if i == 0 else torch.eye(a, k, dtype=torch.float64)
        layers.append(left @ scale @ right.T)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for param, layer in zip(out.weights, layers, strict=True):
            param.copy_(layer.float())
    return out


def dln_population_loss(model: DeepLinearNetwork, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token loss = the population loss K(w) = ||W(w) - W*||_F^2 / 2 at every (row, position).

    That is E_x[-log p(y|x,w) + log p(y|x,w*)] for x ~ N(0, I) and y = W* x + N(0, I), so n_beta is the
    inverse temperature of exp(-n_beta K) and there is no minibatch noise (as the monomial known answer).
    """
    loss = 0.5 * ((model.product() - model.target) ** 2).sum()
    return loss.expand(input_ids.shape[0], input_ids.shape[1] - 1)


def dln_learning_coefficient(widths: list[int], rank: int) -> tuple[Fraction, int]:
    """(lambda, multiplicity) of a deep linear network at a true parameter of rank r: Aoyagi 2024 ("Consider-
    ation on the learning efficiency of multiple-layered neural networks with linear units", Neural
    Networks 172), Theorem 1, as restated in Lau et al. 2023 (arXiv 2308.12108), Appendix.

    With M_s = H_s - r, take the set S of l + 1 layers (the smallest M_s) with max_{S} M < min_{not S} M,
    sum_S M >= l max_S M and sum_S M < l min_{not S} M; with c = ceil(sum_S M / l), a = sum_S M - (c - 1) l:
        lambda = (-r^2 + r (H_1 + H_{L+1})) / 2 + a (l - a) / (4 l) - l (l - 1) / 4 (sum_S M / l)^2
                 + 1/2 sum_{i < j in S} M_i M_j,
    multiplicity 1 if a = l else 2. Exact (Fractions); checked against `rrr_learning_coefficient` for 2 layers.
    """
    H = [int(h) for h in widths]
    if not 0 <= rank <= min(H):
        raise ValueError(f"rank: must be in [0, min(widths)={min(H)}], got {rank}")
    M = sorted(h - rank for h in H)
    base = Fraction(-(rank**2) + rank * (H[0] + H[-1]), 2)
    for k in range(2, len(M) + 1):  # |S| = k = ell + 1; ell = 0 never qualifies (sum_S M < 0 is impossible)
        inside, ell = M[:k], k - 1
        outside = M[k] if k < len(M) else None
        total = sum(inside)
        if outside is not None and not (max(inside) < outside and total < ell * outside):
            continue
        if not total >= ell * max(inside):
            continue
        c = -(-total // ell)
        a = total - (c - 1) * ell
        pairs = sum(x * y for x, y in itertools.combinations(inside, 2))
        lam = (
            base + Fraction(a * (ell - a), 4 * ell) - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        )
        return lam + Fraction(pairs, 2), 1 if a == ell else 2
    raise AssertionError(f"no layer set satisfies Aoyagi's conditions for {H}, r={rank}")  # cannot happen


def rrr_learning_coefficient(n_in: int, n_hidden: int, n_out: int, rank: int) -> Fraction:
    """lambda of reduced rank regression (a 2-layer linear network) at rank r: Aoyagi & Watanabe 2005
    ("Stochastic complexities of reduced rank regression in Bayesian estimation", Neural Networks 18),
    an independent derivation that `dln_learning_coefficient` must reproduce for 2 layers."""
    M, H, N, r = n_in, n_hidden, n_out, rank
    if N + r > M + H:
        return Fraction(H * M - H * r + N * r, 2)
    if M + r > N + H:
        return Fraction(H * N - H * r + M * r, 2)
    if H + r > M + N:
        return Fraction(M * N, 2)
    odd = (M + H + N + r) % 2
    return Fraction(2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + odd, 8)


# --------------------------------------------------------------------------------------------- monomials


class Monomials(torch.nn.Module):
    """Parameters w (one per exponent), starting at the minimum w = 0; exponents 2k in a buffer.

    With `monomial_loss` the potential is sum_i w_i^(2 k_i) (product=False: lambda = sum_i 1/(2 k_i),
    multiplicity 1) or the normal crossing prod_i w_i^(2 k_i) (product=True: lambda = min_i 1/(2 k_i),
    multiplicity = how many k_i attain the max; improper without localization).
    """

    two_k: torch.Tensor

    def __init__(self, k: tuple[int, ...], *, product: bool = False) -> None:
        super().__init__()
        if not k or min(k) < 1:
            raise ValueError(f"k: need >= 1 positive exponent, got {k}")
        self.k = tuple(int(x) for x in k)
        self.product = bool(product)
        self.register_buffer("two_k", 2 * torch.tensor(k, dtype=torch.float32))
        self.w = torch.nn.Parameter(torch.zeros(len(k)))


def monomial_loss(model: Monomials, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token loss = K(w) at every (row, position); the tokens only give the shape, so there is no
    minibatch noise and n_beta is the inverse temperature of exp(-n_beta K)."""
    terms = model.w**model.two_k
    loss = terms.prod() if getattr(model, "product", False) else terms.sum()
    return loss.expand(input_ids.shape[0], input_ids.shape[1] - 1)


def monomial_learning_coefficient(k: tuple[int, ...], *, product: bool = False) -> tuple[Fraction, int]:
    """(lambda, multiplicity) of sum_i w_i^(2k_i) (sum_i 1/(2k_i), 1) or prod_i w_i^(2k_i) (Watanabe 2009,
    normal crossing with a flat prior: min_i 1/(2k_i), the number of i attaining it)."""
    if not product:
        return sum((Fraction(1, 2 * x) for x in k), Fraction(0)), 1
    top = max(k)
    return Fraction(1, 2 * top), sum(1 for x in k if x == top)


def monomial_expected_llc(
    k: tuple[int, ...], n_beta: float, localization: float = 0.0, *, product: bool = False
) -> float:
    """The exact value the LLC estimator targets, E[n_beta K] under exp(-n_beta K - localization |w|^2 / 2)
    (no SGLD error), by quadrature: 1-D per term for the sum, nested for a 2-term product. The sum with no
    localization gives sum 1/(2k_i) at any n_beta (integrate by parts); a product needs localization > 0."""
    from scipy import integrate

    if not n_beta > 0 or localization < 0:
        raise ValueError(f"n_beta must be > 0 and localization >= 0, got {n_beta}, {localization}")
    if not product:
        if localization == 0:
            return float(sum(1 / (2 * x) for x in k))
        total = 0.0
        for x in k:

            def density(t: float, x: int = x, power: int = 0) -> float:
                nk = n_beta * t ** (2 * x)
                return float(nk**power * np.exp(-nk - localization * t * t / 2))

            num = integrate.quad(density, 0, np.inf, args=(x, 1), limit=200)[0]
            total += num / integrate.quad(density, 0, np.inf, args=(x, 0), limit=200)[0]
        return total
    if len(k) != 2 or localization <= 0:
        raise ValueError("monomial_expected_llc: a product needs exactly 2 exponents and localization > 0")
    a, b = 2 * k[0], 2 * k[1]

    def inner(t: float, power: int) -> float:  # integral over u of (n K)^power exp(-n K - loc u^2 / 2)
        def f(u: float) -> float:
            nk = n_beta * t**a * u**b
            return float(nk**power * np.exp(-nk - localization * u * u / 2))

        return float(integrate.quad(f, 0, np.inf, limit=200)[0])

    outer = lambda t, p: inner(t, p) * np.exp(-localization * t * t / 2)  # noqa: E731
    num = integrate.quad(outer, 0, np.inf, args=(1,), limit=200)[0]
    return float(num / integrate.quad(outer, 0, np.inf, args=(0,), limit=200)[0])
