"""Shared fixtures: tiny random-init language models and token datasets built in-process (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from distinterp import toy

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models run fastest on one thread, and the suite shares 2 cores with its own subprocesses.
torch.set_num_threads(1)

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.slurm"]

HEAVY = ("distributed", "slurm", "slow")
"""Marks of tests that start torchrun jobs, daemons or long runs."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with the most heavy tests run first (each module kept whole and in order), so that under
    `-n 2 --dist loadfile --no-loadscope-reorder` the long modules start early and the two workers end
    together instead of one waiting for a torchrun module handed out last."""
    weight: dict[str, int] = {}
    for item in items:
        heavy = any(item.get_closest_marker(m) for m in HEAVY)
        weight[item.nodeid.split("::")[0]] = weight.get(item.nodeid.split("::")[0], 0) + heavy
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable: order within a module kept


def tiny_gpt2(vocab_size: int = 32, n_layer: int = 1, dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    """A 1-layer GPT-2 with 16-wide embeddings and context 32, random init from a fixed seed."""
    return toy.tiny_gpt2(vocab_size, n_layer, seed, n_positions=32, dropout=dropout)


def token_dataset(rows: int = 64, seq: int = 9, vocab_size: int = 32, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(0, vocab_size, (rows, seq), generator=g).tolist()})


TEXTS = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird flew over the hill while the cat slept",
    "the dog ran to the hill and back to the mat",
] * 4
"""A few lines of text to tokenize: local tokenizers are trained on them."""


def word_tokenizer(texts: list[str] = TEXTS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained here on `texts` (with <pad>, <bos>, <eos>): no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", "<pad>", "<bos>", "<eos>"]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_gpt2()


@pytest.fixture
def dataset() -> Dataset:
    return token_dataset()


SMALL = dict(lr=1e-3, n_beta=10.0, num_chains=3, num_draws=6, batch_size=4, num_init_loss_batches=2)
"""Sampler arguments small enough for a test to run in about a second."""


def devinterp_sample(model: torch.nn.Module, ds: Dataset, output_path: object, **kwargs: object) -> object:
    """devinterp 2.0.1's sample() on `ds` (observable "train" = ds) on CPU, its warnings silenced; skips
    the test where devinterp is not installed."""
    import warnings

    dv = pytest.importorskip("devinterp.slt.sampling")
    torch_ds = ds.with_format("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dv.sample(
            model, torch_ds, {"train": torch_ds}, output_path=output_path, device="cpu", **kwargs
        )
