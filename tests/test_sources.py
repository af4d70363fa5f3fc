"""Job sources: HF directories, entry points, state-dict files, TransformerLens; text/jsonl/parquet files
tokenized to a fixed context, save_to_disk directories, the hub cache; each failure names its setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from distinterp import toy
from distinterp.data import tokenize_and_concatenate
from distinterp.jobs.runner import load_inputs
from distinterp.jobs.settings import DatasetSettings, ModelSettings, load_settings
from distinterp.jobs.sources import SourceError, load_dataset, load_model
from tests.conftest import TEXTS, word_tokenizer

SAMPLER = {
    "lr": 1e-3,
    "n_beta": 10.0,
    "num_chains": 1,
    "num_draws": 2,
    "batch_size": 2,
    "num_init_loss_batches": 1,
}


def make_model(vocab_size: int = 16, n_positions: int = 16) -> torch.nn.Module:
    """An entry point for model.source=entry_point: tests.test_sources:make_model."""
    return toy.tiny_gpt2(vocab_size=vocab_size, n_positions=n_positions, seed=3)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tokenizer and a tiny GPT-2 saved as HF directories, and the same lines as .txt, .jsonl, .parquet."""
    root = tmp_path_factory.mktemp("sources")
    tok = word_tokenizer()
    tok.save_pretrained(root / "tok")
    model = make_model(vocab_size=len(tok))
    model.save_pretrained(root / "gpt")
    tok.save_pretrained(root / "gpt")
    torch.save(model.state_dict(), root / "weights.pt")
    (root / "corpus.txt").write_text("\n".join(TEXTS) + "\n")
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(TEXTS))
    )
    Dataset.from_dict({"text": TEXTS}).to_parquet(str(root / "corpus.parquet"))
    return root


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_text_files_are_tokenized_to_the_context(files, kind):
    """Each file format gives the rows tokenize_and_concatenate gives the same lines, with the tokenizer."""
    suffix = {"text": "txt"}.get(kind, kind)
    spec = DatasetSettings(
        source=kind, name=str(files / f"corpus.{suffix}"), tokenizer=str(files / "tok"), context_length=6
    )
    got = load_dataset(spec)
    expected = tokenize_and_concatenate(
        Dataset.from_dict({"text": TEXTS}), word_tokenizer(), max_length=6, num_proc=1
    )
    assert torch.equal(got[:]["input_ids"], expected[:]["input_ids"])
    assert got[:]["input_ids"].shape[1] == 6


def test_a_job_from_an_hf_directory_and_a_text_file(files, tmp_path):
    """model.source=hf (a local directory) + dataset.source=text: the model's own tokenizer by default;
    load_inputs returns what sample() takes."""
    settings = load_settings(
        None,
        [
            f"model={{source: hf, name: {files / 'gpt'}}}",
            f"dataset={{source: text, name: {files / 'corpus.txt'}, context_length: 8, num_rows: 5}}",
            f"output_path={tmp_path / 'r.zarr'}",
        ],
        base={"sampler": SAMPLER},
    )
    inputs = load_inputs(settings)
    assert same_weights(inputs.model, make_model(vocab_size=len(word_tokenizer())))
    assert inputs.data[:]["input_ids"].shape == (5, 8)
    assert list(inputs.observables) == ["train"]


def test_rows_longer_than_the_model_context_name_the_setting(files, tmp_path):
    settings = load_settings(
        None,
        [
            f"model={{source: hf, name: {files / 'gpt'}}}",
            f"dataset={{source: text, name: {files / 'corpus.txt'}, context_length: 20}}",
            f"output_path={tmp_path / 'r.zarr'}",
        ],
        base={"sampler": SAMPLER},
    )
    with pytest.raises(
        SourceError,
        match=r"rows have 20 tokens but the model takes at most 16 \(config.n_positions\); set dataset.context_length to at most 16",
    ):
        load_inputs(settings)


def test_entry_point_state_dict_and_hf_models(files):
    """An entry point; a state-dict file loaded into an HF config's architecture (a directory or its
    config.json), into an entry point's, into the built-in tiny GPT-2; an HF directory in another dtype."""
    vocab = len(word_tokenizer())
    reference = make_model(vocab_size=vocab)
    factory = {
        "source": "entry_point",
        "name": "tests.test_sources:make_model",
        "config": {"vocab_size": vocab},
    }
    assert same_weights(load_model(ModelSettings(**factory)), reference)
    weights = str(files / "weights.pt")
    for arch in [str(files / "gpt"), str(files / "gpt" / "config.json")]:
        assert same_weights(load_model(ModelSettings(source="hf", name=arch, state_dict=weights)), reference)
    other_seed = {**factory, "config": {"vocab_size": vocab, "n_positions": 16}}
    assert same_weights(load_model(ModelSettings(**other_seed, state_dict=weights)), reference)
    builtin = ModelSettings(name="tiny-gpt2", config={"n_positions": 16}, state_dict=weights)
    assert same_weights(load_model(builtin, None, DatasetSettings(vocab_size=vocab)), reference)
    bf16 = load_model(ModelSettings(source="hf", name=str(files / "gpt"), dtype="bfloat16"))
    assert bf16.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "hf", "name": "/no/such/model"}, r"model.name='/no/such/model': no such directory"),
        (
            {"source": "hf", "name": "nobody/not-cached-model"},
            r"model.name='nobody/not-cached-model': cannot load it .*hub id already in the local cache",
        ),
        (
            {"source": "entry_point", "name": "no_such_pkg.mod:f"},
            r"cannot import no_such_pkg.mod .*PYTHONPATH",
        ),
        ({"source": "entry_point", "name": "tests.test_sources"}, r"expected 'package.module:factory'"),
        ({"source": "entry_point", "name": "tests.test_sources:nothing"}, r"has no attribute 'nothing'"),
        ({"source": "entry_point", "name": "tests.test_sources:SAMPLER"}, r"is not callable"),
        (
            {"source": "entry_point", "name": "tests.test_sources:make_model", "state_dict": "/no/w.pt"},
            r"model.state_dict='/no/w.pt': no such file",
        ),
        ({"source": "builtin", "name": "gpt5"}, r"the built-in models are"),
    ],
)
def test_models_that_cannot_be_loaded_name_the_setting(spec, message):
    with pytest.raises(SourceError, match=message):
        load_model(ModelSettings(**spec))


def test_state_dict_errors(files, tmp_path):
    """Weights of another shape, or keys the model lacks, or a file that is no state dict: named."""
    weights = str(files / "weights.pt")
    small = {"source": "entry_point", "name": "tests.test_sources:make_model", "config": {"vocab_size": 7}}
    with pytest.raises(
        SourceError, match=r"model.state_dict='.*weights.pt': the weights do not fit the model"
    ):
        load_model(ModelSettings(**small, state_dict=weights))
    extra = {**torch.load(weights, weights_only=True), "head.extra": torch.zeros(1)}
    torch.save({"state_dict": extra, "step": 3}, tmp_path / "ckpt.pt")  # a training checkpoint's layout
    vocab = {"source": "entry_point", "name": "tests.test_sources:make_model", "config": {"vocab_size": 16}}
    with pytest.raises(SourceError, match=r"unexpected \['head.extra'\]"):
        load_model(ModelSettings(**vocab, state_dict=str(tmp_path / "ckpt.pt")))
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(SourceError, match="not a readable state dict"):
        load_model(ModelSettings(**vocab, state_dict=str(tmp_path / "junk.pt")))


def test_transformer_lens_source():
    """Without transformer_lens installed the error says how to install it; with it, a cached model loads."""
    spec = ModelSettings(source="transformer_lens", name="gpt2-small")
    if importlib.util.find_spec("transformer_lens") is None:
        with pytest.raises(
            SourceError, match=r"needs the transformer_lens package: pip install -e '.\[lens\]'"
        ):
            load_model(spec)
        pytest.skip("transformer_lens is not installed")
    try:
        model = load_model(spec)
    except SourceError as e:
        pytest.skip(f"gpt2-small is not in the local cache: {e}")
    assert model.cfg.n_ctx > 0


def test_disk_and_local_hub_datasets(tmp_path):
    rows = {"input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(
        tmp_path / "dd"
    )
    got = load_dataset(DatasetSettings(source="disk", name=str(tmp_path / "dd"), split="test", num_rows=2))
    assert got["input_ids"][:] == rows["input_ids"][:2]
    with pytest.raises(SourceError, match=r"dataset.split='dev': the splits are \['test', 'train'\]"):
        load_dataset(DatasetSettings(source="disk", name=str(tmp_path / "dd"), split="dev"))
    Dataset.from_dict(rows).to_json(tmp_path / "hub" / "data.jsonl")
    local_hub = load_dataset(DatasetSettings(source="hf", name=str(tmp_path / "hub")))
    assert local_hub["input_ids"][:] == rows["input_ids"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "disk", "name": "/no/dir"}, r"dataset.name='/no/dir': no such directory"),
        (
            {"source": "hf", "name": "nobody/not-cached-set"},
            r"dataset.name='nobody/not-cached-set' \(split 'train'\): cannot load it",
        ),
        ({"source": "text", "name": "/no/*.txt"}, r"no such file, directory or glob match"),
        ({"source": "builtin", "name": "wiki"}, r"the built-in datasets are"),
    ],
)
def test_datasets_that_cannot_be_loaded_name_the_setting(spec, message, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # conftest's HF_HUB_OFFLINE came too late
    with pytest.raises(SourceError, match=message):
        load_dataset(DatasetSettings(**spec))


def test_text_needs_a_tokenizer_a_context_and_its_column(files):
    text = {"source": "jsonl", "name": str(files / "corpus.jsonl")}
    with pytest.raises(SourceError, match=r"dataset.tokenizer: needed to tokenize"):
        load_dataset(DatasetSettings(**text, context_length=8))
    with pytest.raises(SourceError, match=r"dataset.context_length: needed"):
        load_dataset(DatasetSettings(**text, tokenizer=str(files / "tok")))
    with pytest.raises(
        SourceError, match=r"neither 'input_ids' nor the text column 'body' \(columns: \['text', 'n'\]\)"
    ):
        load_dataset(
            DatasetSettings(**text, tokenizer=str(files / "tok"), context_length=8, text_column="body")
        )
    with pytest.raises(SourceError, match=r"dataset.tokenizer='/no/tok': no such directory"):
        load_dataset(DatasetSettings(**text, tokenizer="/no/tok", context_length=8))
