"""Dataset checks, each chain's batch order, and the observables' fixed rows.

The order reproduces devinterp 2.x: a torch DataLoader(shuffle=True, drop_last=True, generator=g) draws
one int64 from g for its base seed, then randperm(n, generator=g); "cycle" replays that first epoch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distinterp.errors import DatasetError as DatasetError  # re-exported: its old home


def to_obs_id(task_name: str) -> str:
    """Observable name -> identifier used in variable names (non-alphanumerics become '_')."""
    result = "".join(c if c.isalnum() or c == "_" else "_" for c in task_name)
    if result and result[0].isdigit():
        result = "_" + result
    return result or "_"


def input_ids_tensor(dataset: Any, field: str, vocab_size: int | None = None) -> torch.Tensor:
    """The dataset's "input_ids" as an int64 (rows, seq) tensor, after checking it is usable."""
    if isinstance(dataset, torch.Tensor):
        raw: Any = dataset
    else:
        columns = getattr(dataset, "column_names", None)
        if columns is None and isinstance(dataset, Mapping):
            columns = list(dataset.keys())
        if columns is None:
            raise DatasetError(
                f"{field}: expected a HuggingFace Dataset with an 'input_ids' column, got {type(dataset).__name__}"
            )
        if "input_ids" not in columns:
            raise DatasetError(
                f"{field}: has no 'input_ids' column (columns: {list(columns)}); tokenize it first"
            )
        if hasattr(dataset, "with_format"):
            dataset = dataset.with_format(None)
        raw = dataset["input_ids"]
    if len(raw) == 0:
        raise DatasetError(f"{field}: is empty")
    if isinstance(raw, torch.Tensor):
        ids = raw
    else:
        lengths = {len(row) for row in raw}
        if len(lengths) != 1:
            raise DatasetError(
                f"{field}: 'input_ids' rows have different lengths {sorted(lengths)[:6]}; "
                "pad or chunk every row to one length"
            )
        try:
            ids = torch.as_tensor(np.asarray(raw))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{field}: 'input_ids' is not a table of integers ({e})") from e
    if ids.ndim != 2:
        raise DatasetError(f"{field}: 'input_ids' must be 2-D (rows, tokens), got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise DatasetError(f"{field}: 'input_ids' must hold integers, got {ids.dtype}")
    ids = ids.to(torch.int64)
    if ids.shape[1] < 2:
        raise DatasetError(
            f"{field}: sequences must have length >= 2 for next-token loss (got {ids.shape[1]})"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        raise DatasetError(
            f"{field}: token ids span [{lo}, {hi}] but the model's vocabulary is [0, {vocab_size}); "
            "tokenize with the model's tokenizer"
        )
    return ids


def fingerprint(ids: torch.Tensor) -> str:
    """Content hash of an int64 token table, to tell two datasets apart in a store's config."""
    h = hashlib.sha256()
    h.update(str(tuple(ids.shape)).encode())
    h.update(ids.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def epoch_order(n: int, batch_size: int, *, shuffle: bool, seed: int | None) -> torch.Tensor:
    """Row indices of one epoch, as a (num_batches, batch_size) table (drop_last)."""
    num_batches = n // batch_size
    if shuffle:
        g = torch.Generator(device="cpu")
        if seed is not None:
            g.manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base seed
        perm = torch.randperm(n, generator=g)
    else:
        perm = torch.arange(n)
    return perm[: num_batches * batch_size].view(num_batches, batch_size)


@dataclass(frozen=True)
class BatchFeed:
    """The sampling batches of one chain: batch k is `order[k % len(order)]` in "cycle" mode."""

    ids: torch.Tensor
    order: torch.Tensor
    epoch_mode: str

    @classmethod
    def build(
        cls, ids: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int | None, epoch_mode: str
    ) -> BatchFeed:
        order = epoch_order(len(ids), batch_size, shuffle=shuffle, seed=seed)
        if len(order) == 0:
            raise DatasetError(
                f"dataset: has {len(ids)} rows, fewer than batch_size={batch_size}; lower batch_size or add rows"
            )
        return cls(ids=ids, order=order, epoch_mode=epoch_mode)

    def check_length(self, num_batches: int) -> None:
        if self.epoch_mode == "once" and len(self.order) < num_batches:
            raise DatasetError(
                f"dataset: too small for epoch_mode='once': need {num_batches} batches, have {len(self.order)}. "
                "Use epoch_mode='cycle' or a larger dataset."
            )

    def batch(self, k: int) -> torch.Tensor:
        return self.ids[self.order[k % len(self.order)]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        k = 0
        while True:
            yield self.batch(k)
            k += 1


def observable_rows(n_rows: int, n_samples: int, obs_seed: int, name: str) -> list[int]:
    """The fixed rows an observable evaluates at every draw: random.Random(obs_seed).sample(...)."""
    if n_rows < n_samples:
        raise DatasetError(
            f"observables[{name!r}]: has {n_rows} rows but batch_size * batches_per_draw = {n_samples}; "
            "lower batches_per_draw or batch_size, or add rows"
        )
    return random.Random(obs_seed).sample(range(n_rows), n_samples)


@dataclass(frozen=True)
class ProbeRows:
    """A probe dataset evaluated at every draw on the same fixed rows (what sample() evaluates; devinterp's
    `Observable` class, which builds and evaluates one itself, is distinterp.slt.observables.Observable)."""

    name: str
    obs_id: str
    batches_per_draw: int
    input_ids: torch.Tensor  # (batch_size * batches_per_draw, seq)
    fingerprint: str

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])


def build_observables(
    observables: Any,
    *,
    batch_size: int,
    default_batches_per_draw: int,
    obs_seed: int,
    seq_len: int,
    vocab_size: int | None,
) -> list[ProbeRows]:
    """Validate the `observables` argument and load each one's fixed rows."""
    if not isinstance(observables, Mapping):
        raise DatasetError(
            f"observables: expected a dict of name -> Dataset or (Dataset, batches_per_draw), got "
            f"{type(observables).__name__}"
        )
    out: list[ProbeRows] = []
    seen: dict[str, str] = {}
    for name, spec in observables.items():
        if not isinstance(name, str) or not name:
            raise DatasetError(f"observables: names must be non-empty strings, got {name!r}")
        if isinstance(spec, tuple):
            if len(spec) != 2 or not isinstance(spec[1], int) or isinstance(spec[1], bool) or spec[1] < 1:
                raise DatasetError(
                    f"observables[{name!r}]: a tuple must be (dataset, batches_per_draw) with a positive int, got "
                    f"{tuple(type(x).__name__ for x in spec)}"
                )
            ds, bpd = spec
        else:
            ds, bpd = spec, default_batches_per_draw
        obs_id = to_obs_id(name)
        if obs_id in seen:
            raise DatasetError(
                f"observables: {name!r} and {seen[obs_id]!r} both map to the variable id {obs_id!r}"
            )
        seen[obs_id] = name
        ids = input_ids_tensor(ds, f"observables[{name!r}]", vocab_size)
        if ids.shape[1] != seq_len:
            raise DatasetError(
                f"observables[{name!r}]: sequences have length {ids.shape[1]} but the sampling dataset's have "
                f"{seq_len}; all datasets must share one context length"
            )
        rows = observable_rows(len(ids), batch_size * bpd, obs_seed, name)
        out.append(
            ProbeRows(
                name=name,
                obs_id=obs_id,
                batches_per_draw=bpd,
                input_ids=ids[rows],
                fingerprint=fingerprint(ids),
            )
        )
    return out


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int = 10,
) -> Any:
    """A text Dataset as fixed-length token rows: texts joined by EOS, tokenized, cut into rows of
    max_length (a BOS first when add_bos_token). devinterp 2.x's function (from TransformerLens, MIT), same
    signature and rows; the result has an "input_ids" column in torch format. Rows depend on num_proc
    (each process concatenates its own shard), as in devinterp."""
    if column_name not in dataset.column_names:
        raise DatasetError(
            f"tokenize_and_concatenate: the dataset has no {column_name!r} column (columns: "
            f"{dataset.column_names}); pass column_name="
        )
    dataset = dataset.select_columns(column_name)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    if add_bos_token and tokenizer.bos_token_id is None:
        raise ValueError(
            f"add_bos_token=True but tokenizer has no bos_token_id. "
            f"Use add_bos_token=False for {type(tokenizer).__name__}."
        )
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer: {type(tokenizer).__name__} has no eos_token to join the texts with")
    seq_len = max_length - 1 if add_bos_token else max_length
    if seq_len < 1:
        raise ValueError(
            f"max_length={max_length} is too small"
            f"{' with add_bos_token=True (needs at least 2)' if add_bos_token else ' (needs at least 1)'}."
        )

    def rows(examples: dict[str, list[str]]) -> dict[str, np.ndarray]:
        full_text = tokenizer.eos_token.join(examples[column_name])
        if not full_text.strip():
            return {"input_ids": np.array([], dtype=np.int64)}
        num_chunks = 20  # tokenize in 20 pieces (TransformerLens's speed-up; it fixes the token boundaries)
        chunk_length = (len(full_text) - 1) // num_chunks + 1
        chunks = [full_text[i * chunk_length : (i + 1) * chunk_length] for i in range(num_chunks)]
        tokens = tokenizer(chunks, return_tensors="np", padding=True)["input_ids"].flatten()
        tokens = tokens[tokens != tokenizer.pad_token_id]
        if len(tokens) < seq_len:
            num_rows = 1
            tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), tokenizer.pad_token_id)])
        else:
            num_rows = len(tokens) // seq_len
            tokens = tokens[: seq_len * num_rows]
        tokens = tokens.reshape(num_rows, seq_len)
        if add_bos_token:
            tokens = np.concatenate([np.full((num_rows, 1), tokenizer.bos_token_id), tokens], axis=1)
        return {"input_ids": tokens}

    tokenized = dataset.map(
        rows, batched=True, num_proc=num_proc if not streaming else None, remove_columns=[column_name]
    )
    if len(tokenized) == 0 or "input_ids" not in tokenized.column_names:
        raise ValueError("Tokenization produced no sequences. Check that the input text is not empty.")
    tokenized.set_format(type="torch", columns=["input_ids"])
    return tokenized


def __getattr__(name: str) -> Any:
    """`Observable`: ProbeRows' old name here (one `Observable` class now: slt.observables')."""
    if name == "Observable":
        return ProbeRows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
