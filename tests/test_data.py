"""Data order equals torch's DataLoader (the reference's), observables' rows, dataset checks."""

from __future__ import annotations

from itertools import cycle, islice

import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from distinterp.data import BatchFeed, DatasetError, input_ids_tensor, observable_rows, to_obs_id


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("seed", [0, 100, 12345])
def test_feed_replays_dataloader_order(shuffle: bool, seed: int) -> None:
    ids = torch.arange(103 * 3).view(103, 3)
    ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    loader = DataLoader(
        ds, batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(seed), drop_last=True
    )
    feed = BatchFeed.build(ids, 8, shuffle=shuffle, seed=seed, epoch_mode="cycle")
    for ref, ours in zip(islice(cycle(loader), 40), islice(iter(feed), 40)):
        assert torch.equal(ref["input_ids"], ours)


def test_observable_rows_and_ids() -> None:
    import random

    assert observable_rows(50, 8, 1337, "x") == random.Random(1337).sample(range(50), 8)
    assert to_obs_id("pile-github") == "pile_github" and to_obs_id("3x") == "_3x"
    with pytest.raises(DatasetError, match="batches_per_draw"):
        observable_rows(5, 8, 0, "x")


def test_input_ids_checks() -> None:
    assert input_ids_tensor(Dataset.from_dict({"input_ids": [[1, 2], [3, 4]]}), "d").dtype == torch.int64
    with pytest.raises(DatasetError, match="integers"):
        input_ids_tensor(Dataset.from_dict({"input_ids": [[1.5, 2.0]]}), "d")
    with pytest.raises(DatasetError, match="length >= 2"):
        input_ids_tensor(Dataset.from_dict({"input_ids": [[1], [2]]}), "d")
    with pytest.raises(DatasetError, match=r"span \[-1, 2\]"):
        input_ids_tensor(Dataset.from_dict({"input_ids": [[-1, 2]]}), "d", vocab_size=10)
    with pytest.raises(DatasetError, match="HuggingFace Dataset"):
        input_ids_tensor([[1, 2]], "d")


@pytest.mark.parametrize("add_bos_token", [True, False])
@pytest.mark.parametrize("max_length", [4, 9, 200])
def test_tokenize_and_concatenate_equals_devinterp(add_bos_token: bool, max_length: int) -> None:
    """The same rows as devinterp 2.0.1's tokenize_and_concatenate, with a tokenizer trained here."""
    from devinterp.utils import tokenize_and_concatenate as reference

    from distinterp.data import tokenize_and_concatenate
    from tests.conftest import TEXTS, word_tokenizer

    ds = Dataset.from_dict({"text": TEXTS, "other": list(range(len(TEXTS)))})
    kwargs = dict(max_length=max_length, add_bos_token=add_bos_token, num_proc=1)
    ours = tokenize_and_concatenate(ds, word_tokenizer(), **kwargs)
    ref = reference(ds, word_tokenizer(), **kwargs)
    assert ours.column_names == ["input_ids"] and ours.format["type"] == "torch"
    rows = ours[:]["input_ids"]
    assert torch.equal(rows, ref[:]["input_ids"])
    assert rows.shape[1] == max_length and (len(rows) > 1 or max_length == 200)  # short text: one padded row


def test_tokenize_and_concatenate_errors() -> None:
    from distinterp.data import tokenize_and_concatenate
    from tests.conftest import word_tokenizer

    with pytest.raises(DatasetError, match="no 'body' column"):
        tokenize_and_concatenate(Dataset.from_dict({"text": ["a b"]}), word_tokenizer(), column_name="body")
    with pytest.raises(ValueError, match="max_length=1 is too small"):
        tokenize_and_concatenate(Dataset.from_dict({"text": ["a b"]}), word_tokenizer(), max_length=1)
