"""Where a job's model and data come from: built-in toys, HF directories and the hub cache, `module:factory`
entry points, TransformerLens, any of them with a state-dict file's weights; token datasets, or text files
tokenized to a fixed context.

Every failure is a SourceError naming the setting and the fix (never a raw OSError or hub traceback).
"""

from __future__ import annotations

import glob
import importlib
from pathlib import Path
from typing import Any

import torch

from distinterp.errors import SourceError as SourceError  # re-exported: its old home
from distinterp.jobs.settings import DatasetSettings, ModelSettings, SampleSettings
from distinterp.loss import context_limit


def _reason(error: BaseException) -> str:
    """An exception's first line, for a one-line message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ('org/name'): it starts like one, or exists."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


# ─── Models ──────────────────────────────────────────────────────────────────


def load_model(
    spec: ModelSettings,
    sampling_data: Any = None,
    data_spec: DatasetSettings | None = None,
    field: str = "model",
) -> torch.nn.Module:
    """The model the settings name, with `spec.state_dict`'s weights loaded into it when given; the built-in
    bigram needs the sampling data it is fitted to."""
    dtype = getattr(torch, spec.dtype)
    if spec.source == "builtin":
        model = _builtin_model(spec, sampling_data, data_spec, field)
    elif spec.source == "hf":
        model = _hf_model(spec, field)
    elif spec.source == "entry_point":
        model = _call_factory(spec.name, spec.config, f"{field}.name")
    else:
        model = _lens_model(spec, field)
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{field}.name={spec.name!r}: gave a {type(model).__name__}, not a torch.nn.Module")
    if spec.state_dict is not None:
        load_weights(model, spec.state_dict, f"{field}.state_dict")
    return model.to(dtype)


def needs_data(spec: ModelSettings) -> bool:
    """Whether building the model needs the sampling data (the bigram is fitted to it)."""
    return spec.source == "builtin" and spec.name == "bigram"


def _builtin_model(
    spec: ModelSettings, data: Any, data_spec: DatasetSettings | None, field: str
) -> torch.nn.Module:
    from distinterp import toy

    vocab = data_spec.vocab_size if data_spec is not None else 6
    if spec.name == "bigram":
        if data_spec is None or data_spec.source != "builtin":
            raise SourceError(
                f"{field}.name='bigram' is fitted to the built-in Markov data: use dataset.source=builtin, "
                "or another model"
            )
        return toy.bigram_mle(data, vocab)
    if spec.name == "tiny-gpt2":
        return toy.tiny_gpt2(vocab_size=vocab, **spec.config)
    raise SourceError(f"{field}.name={spec.name!r}: the built-in models are ['bigram', 'tiny-gpt2']")


def _hf_model(spec: ModelSettings, field: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(spec.name).expanduser()
    weightless = spec.random_init or spec.state_dict is not None
    if _looks_like_path(spec.name) and not (path.is_dir() or (weightless and path.is_file())):
        raise SourceError(
            f"{field}.name={spec.name!r}: no such directory; give a model directory (with config.json), a hub "
            "id already in the local cache, or (with model.state_dict) a config.json"
        )
    name = str(Path(spec.name).expanduser()) if _looks_like_path(spec.name) else spec.name
    dtype = getattr(torch, spec.dtype)
    try:
        if weightless:  # the architecture only; weights from state_dict, if given
            config = AutoConfig.from_pretrained(
                name, revision=spec.revision, local_files_only=True, **spec.config
            )
            # transformers leaves from_config untyped
            bare: torch.nn.Module = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
            return bare
        return AutoModelForCausalLM.from_pretrained(
            name, revision=spec.revision, dtype=dtype, local_files_only=True, **spec.config
        )
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(
            f"{field}.name={spec.name!r}"
            + (f" (revision {spec.revision!r})" if spec.revision else "")
            + f": cannot load it ({_reason(e)}); give a local model directory, or a hub id already in the "
            "local cache (download it once, e.g. `hf download NAME`)"
        ) from e


def _call_factory(target: str, kwargs: dict[str, Any], field: str) -> Any:
    """Call 'package.module:factory' (a dotted attribute path after the colon) with kwargs."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SourceError(f"{field}={target!r}: expected 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise SourceError(
            f"{field}={target!r}: cannot import {module_name} ({_reason(e)}); install your package "
            "(pip install -e .) or add its directory to PYTHONPATH"
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"{field}={target!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"{field}={target!r}: {attr} is not callable")
    try:
        return obj(**kwargs)
    except TypeError as e:
        raise SourceError(f"{field}={target!r}: calling it with model.config={kwargs} failed ({e})") from e


def architecture(spec: ModelSettings, sampling_data: Any, data_spec: DatasetSettings) -> torch.nn.Module:
    """The model the settings name without its weights (on the meta device where it can be built there):
    what checkpoints' state dicts are checked against before any work."""
    base = spec.model_copy(
        update={"state_dict": None, "random_init": spec.source == "hf" or spec.random_init}
    )
    if spec.source == "builtin":  # small, and the bigram is fitted to the data
        return load_model(base, sampling_data, data_spec)
    with torch.device("meta"):
        return load_model(base, sampling_data, data_spec)


def check_checkpoint(spec: ModelSettings, arch: torch.nn.Module | None, field: str) -> None:
    """Before any work: a checkpoint can load. A state dict's names and shapes fit `arch` (read memory-mapped);
    an hf directory or cached hub revision has its config. Failures are SourceErrors naming `field`."""
    if spec.state_dict is not None and arch is not None:
        state = _read_state_dict(Path(spec.state_dict).expanduser(), f"{field}.state_dict", mmap=True)
        missing, unexpected = _key_mismatch(arch, state)
        expected = arch.state_dict()
        shapes = [n for n, t in state.items() if n in expected and tuple(t.shape) != tuple(expected[n].shape)]
        if missing or unexpected or shapes:
            raise SourceError(
                f"{field}.state_dict={spec.state_dict!r}: the weights do not fit model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}); check model and checkpoints"
            )
        return
    if spec.source == "hf":
        from transformers import AutoConfig

        name = str(Path(spec.name).expanduser()) if _looks_like_path(spec.name) else spec.name
        try:
            AutoConfig.from_pretrained(name, revision=spec.revision, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise SourceError(
                f"{field}: {spec.name!r}"
                + (f" revision {spec.revision!r}" if spec.revision else "")
                + f" cannot be loaded ({_reason(e)}); give a local model directory, or a hub id already in the "
                "local cache (download it once, e.g. `hf download NAME --revision REV`)"
            ) from e


def _read_state_dict(path: Path, field: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A name -> tensor dict from a .safetensors or torch file (a training checkpoint's 'state_dict')."""
    if not path.is_file():
        raise SourceError(
            f"{field}={str(path)!r}: no such file; give the state-dict file (.pt, .bin, .safetensors)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:  # mmap needs torch's zip format; an older file is read whole
                if not mmap:
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors for a file it cannot read
        raise SourceError(
            f"{field}={str(path)!r}: not a readable state dict ({_reason(e)}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint {"state_dict": ..., ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"{field}={str(path)!r}: holds a {type(state).__name__}, not a name -> tensor dict")
    return state


def load_weights(model: torch.nn.Module, path: str, field: str = "model.state_dict") -> torch.nn.Module:
    """Load a state-dict file into the model, strictly: missing and unexpected keys are named (a tied copy
    may be missing), as are shape mismatches."""
    state = _read_state_dict(Path(path).expanduser(), field)
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise SourceError(
            f"{field}={path!r}: the weights do not fit the model (missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}); check model.source / model.name / model.config"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ
        raise SourceError(
            f"{field}={path!r}: the weights do not fit the model ({_reason(e)}); check model.name / model.config"
        ) from e
    return model


def _key_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """State-dict keys the model needs but the file lacks, and the other way round (tied copies allowed)."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    tied = {n for n in missing if any(n in names for names in _tied_names(model))}
    return [n for n in missing if n not in tied], sorted(set(state) - expected)


def _tied_names(model: torch.nn.Module) -> list[set[str]]:
    """Groups of state-dict names that share one tensor (tied embeddings): one of a group suffices."""
    groups: dict[int, set[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), set()).add(name)
    return [g for g in groups.values() if len(g) > 1]


def _lens_model(spec: ModelSettings, field: str) -> torch.nn.Module:
    try:
        from transformer_lens import HookedTransformer
    except ImportError as e:
        raise SourceError(
            f"{field}.source=transformer_lens needs the transformer_lens package: pip install -e '.[lens]'"
        ) from e
    kwargs = dict(spec.config)
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    try:  # the weights as published: no folding, centering or other reparametrisation
        lens: torch.nn.Module = HookedTransformer.from_pretrained_no_processing(spec.name, **kwargs)
        return lens
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(
            f"{field}.name={spec.name!r}: TransformerLens cannot load it ({_reason(e)}); give one of its "
            "model names whose weights are in the local HF cache"
        ) from e


def tokenizer_name(spec: ModelSettings) -> str | None:
    """The tokenizer that goes with the model, when the settings say where it is (an hf model's own)."""
    return spec.name if spec.source == "hf" else None


# ─── Datasets ────────────────────────────────────────────────────────────────

FILE_BUILDERS = {"text": "text", "jsonl": "json", "parquet": "parquet"}
"""File sources -> the datasets builder that reads them."""


def load_dataset(spec: DatasetSettings, field: str = "dataset", tokenizer: str | None = None) -> Any:
    """A Dataset with equal-length 'input_ids' rows; text is tokenized with spec.tokenizer (else `tokenizer`,
    the model's) into rows of spec.context_length tokens."""
    ds = _raw_dataset(spec, field)
    if "input_ids" not in ds.column_names:
        ds = _tokenized(ds, spec, field, spec.tokenizer or tokenizer)
    if spec.num_rows is not None and spec.source != "builtin":
        ds = ds.select(range(min(spec.num_rows, len(ds))))
    return ds


def load_observables(
    settings: SampleSettings, data: Any, tokenizer: str | None = None, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """The observables the settings name (each with its batches_per_draw), or the sampling data as 'train';
    with `model`, rows are checked against its context."""
    if settings.observables is None:
        return {"train": data}
    observables: dict[str, Any] = {}
    for name, spec in settings.observables.items():
        field = f"observables.{name}"
        ds = load_dataset(spec, field, tokenizer)
        if model is not None:
            check_context(model, ds, spec, field)
        observables[name] = (ds, spec.batches_per_draw) if spec.batches_per_draw else ds
    return observables


def _raw_dataset(spec: DatasetSettings, field: str) -> Any:
    import datasets

    if spec.source == "builtin":
        if spec.name != "markov":
            raise SourceError(f"{field}.name={spec.name!r}: the built-in datasets are ['markov']")
        from distinterp import toy

        transition = toy.markov_chain(spec.vocab_size, seed=spec.seed)
        return toy.markov_dataset(
            transition, seq_len=spec.seq_len, n_rows=spec.num_rows or 512, seed=spec.seed + 1
        )
    if spec.source == "disk":
        path = Path(spec.name).expanduser()
        if not path.is_dir():
            raise SourceError(
                f"{field}.name={spec.name!r}: no such directory (a Dataset.save_to_disk directory)"
            )
        try:
            ds = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as e:
            raise SourceError(
                f"{field}.name={spec.name!r}: not a save_to_disk directory ({_reason(e)}); for data files use "
                "dataset.source=text / jsonl / parquet"
            ) from e
        return _split(ds, spec, field)
    if spec.source in FILE_BUILDERS:
        files = _data_files(spec, field)
        try:
            return datasets.load_dataset(FILE_BUILDERS[spec.source], data_files=files, split="train")
        except Exception as e:  # the builders raise arrow, json and value errors for unreadable files
            raise SourceError(
                f"{field}.name={spec.name!r}: cannot read it as {spec.source} ({_reason(e)}); check "
                "dataset.source"
            ) from e
    try:
        ds = datasets.load_dataset(spec.name, split=spec.split)
    except Exception as e:  # hub and builder errors: DatasetNotFoundError, ConnectionError, OSError, ...
        raise SourceError(
            f"{field}.name={spec.name!r} (split {spec.split!r}): cannot load it ({_reason(e)}); give a local "
            "dataset directory or a hub id already in the datasets cache (download it once), or use "
            "dataset.source=disk / text / jsonl / parquet"
        ) from e
    return ds


def _split(ds: Any, spec: DatasetSettings, field: str) -> Any:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise SourceError(f"{field}.split={spec.split!r}: the splits are {sorted(ds)}")
        return ds[spec.split]
    return ds


def _data_files(spec: DatasetSettings, field: str) -> list[str]:
    """The files a file source names: one file, every file of a directory, or a glob; sorted."""
    path = Path(spec.name).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted(glob.glob(str(path)))
    if not files:
        raise SourceError(f"{field}.name={spec.name!r}: no such file, directory or glob match")
    return files


def _tokenized(ds: Any, spec: DatasetSettings, field: str, tokenizer: str | None) -> Any:
    from distinterp.data import tokenize_and_concatenate

    if spec.text_column not in ds.column_names:
        raise SourceError(
            f"{field}: has neither 'input_ids' nor the text column {spec.text_column!r} (columns: "
            f"{ds.column_names}); set {field}.text_column"
        )
    if tokenizer is None:
        raise SourceError(
            f"{field}.tokenizer: needed to tokenize the text; give a tokenizer directory or cached hub id "
            "(an hf model's own tokenizer is the default)"
        )
    if spec.context_length is None:
        raise SourceError(
            f"{field}.context_length: needed to cut the text into rows, e.g. 128 (tokens per row)"
        )
    tok = load_tokenizer(tokenizer, f"{field}.tokenizer")
    try:
        return tokenize_and_concatenate(
            ds,
            tok,
            max_length=spec.context_length,
            column_name=spec.text_column,
            add_bos_token=spec.add_bos_token,
            num_proc=spec.num_proc,  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise SourceError(f"{field}: {e}") from e


def load_tokenizer(name: str, field: str = "dataset.tokenizer") -> Any:
    from transformers import AutoTokenizer

    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise SourceError(f"{field}={name!r}: no such directory")
    try:
        return AutoTokenizer.from_pretrained(
            str(Path(name).expanduser()) if _looks_like_path(name) else name, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(
            f"{field}={name!r}: cannot load a tokenizer from it ({_reason(e)}); give a directory with "
            "tokenizer.json (tokenizer.save_pretrained) or a hub id already in the local cache"
        ) from e


def check_context(model: torch.nn.Module, data: Any, spec: DatasetSettings, field: str = "dataset") -> None:
    """Rows no longer than the model's context, said in terms of the settings (the sampler checks it too)."""
    limit = context_limit(model)
    if limit is None or len(data) == 0:
        return
    row = len(data[0]["input_ids"])
    if row > limit[0]:
        fix = (
            f"set {field}.context_length to at most {limit[0]}"
            if spec.context_length is not None
            else f"use rows of at most {limit[0]} tokens"
        )
        raise SourceError(
            f"{field}: rows have {row} tokens but the model takes at most {limit[0]} ({limit[1]}); {fix}"
        )
