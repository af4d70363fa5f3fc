"""Runner settings: typed, validated once, loadable from YAML, environment (DISTINTERP_*) and CLI.

Priority, highest first: `--set key=value` on the command line, environment variables
(`DISTINTERP_SAMPLER__LR=0.001`, nested with `__`), the YAML file, then the defaults. Unknown keys are
errors wherever they come from, a DISTINTERP_* variable that names no setting included.
Credentials never belong here: s3fs reads AWS_* variables itself; `storage_options` is never persisted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distinterp.config import SamplerConfig


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """YAML that also reads 1e-3 as a float (YAML 1.1 wants a dot in the mantissa: 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Part):
    """Which model to sample around, and where it comes from (loaded by distinterp.jobs.sources)."""

    source: Literal["builtin", "hf", "entry_point", "transformer_lens"] = Field(
        default="builtin",
        description="builtin: a toy model; hf: a transformers causal LM; entry_point: your own factory; "
        "transformer_lens: a HookedTransformer",
    )
    name: str = Field(
        default="bigram",
        description="builtin: 'bigram' (at its MLE on the sampling data) or 'tiny-gpt2'; "
        "hf: a local directory or a hub id already in the local cache; "
        "entry_point: 'package.module:factory' (called with `config` as keyword arguments); "
        "transformer_lens: a model name (from the local cache)",
    )
    revision: str | None = Field(default=None, description="hf / transformer_lens: branch, tag or commit")
    random_init: bool = Field(
        default=False, description="hf: build from the config only (no weights); for tests/benchmarks"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="builtin tiny-gpt2 / entry_point: the factory's keyword arguments; hf: config overrides",
    )
    state_dict: str | None = Field(
        default=None,
        description="a state-dict file (.pt/.bin/.safetensors, or a checkpoint with a 'state_dict' key) loaded "
        "strictly into the model the source builds (hf: from its config, without its weights)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="parameter dtype")

    @model_validator(mode="after")
    def _revision_needs_a_hub_model(self) -> ModelSettings:
        if self.revision is not None and self.source not in ("hf", "transformer_lens"):
            raise ValueError(
                f"revision={self.revision!r}: model.source={self.source!r} has no revisions (it would be "
                "ignored); remove it, or use source hf or transformer_lens"
            )
        return self


class DatasetSettings(_Part):
    """A dataset of equal-length token rows ('input_ids'), given as tokens or as text to tokenize."""

    source: Literal["builtin", "hf", "disk", "text", "jsonl", "parquet"] = Field(
        default="builtin",
        description="builtin: generated Markov text; hf: load_dataset (a local directory, or a hub id in "
        "the local cache); disk: a save_to_disk directory; text / jsonl / parquet: local files",
    )
    name: str = Field(
        default="markov",
        description="builtin: 'markov'; hf: load_dataset path or id; disk: the directory; "
        "text/jsonl/parquet: a file, a directory of them or a glob (text: one row per line)",
    )
    split: str = Field(default="train", description="hf/disk: the split to use")
    num_rows: PositiveInt | None = Field(default=None, description="use only the first num_rows rows")
    tokenizer: str | None = Field(
        default=None,
        description="text without 'input_ids': a tokenizer directory or cached hub id "
        "(default: the model's, for hf/transformer_lens models)",
    )
    context_length: int | None = Field(
        default=None,
        ge=2,
        description="text: tokens per row (tokenize_and_concatenate's max_length, a BOS included); "
        "at most the model's context",
    )
    text_column: str = Field(default="text", description="text/jsonl/parquet/hf: the column holding the text")
    add_bos_token: bool = Field(
        default=True, description="text: start every row with the tokenizer's BOS token"
    )
    num_proc: PositiveInt | None = Field(
        default=None, description="text: processes that tokenize (the rows depend on it, as in devinterp)"
    )
    # builtin generator knobs
    vocab_size: PositiveInt = Field(default=6, description="builtin: number of symbols")
    seq_len: PositiveInt = Field(default=65, description="builtin: tokens per row")
    seed: int = Field(default=0, description="builtin: seed of the Markov chain and its text")


class ObservableSettings(DatasetSettings):
    """A probe dataset evaluated at every draw, on the same fixed rows."""

    batches_per_draw: PositiveInt | None = Field(
        default=None,
        description="batches of sampler.batch_size rows evaluated per draw (default: the top-level "
        "batches_per_draw); sample()'s (dataset, batches_per_draw) form",
    )


class BifSettings(_Part):
    """`distinterp bif`: compute_bif's options."""

    correlation_method: Literal["token", "sequence"] = "token"
    reduce_chain_dimension_method: Literal["stack", "mean"] = "stack"
    average_tokenwise_bif: bool = False
    compute_covariance: bool = False
    batch_size: PositiveInt = Field(default=32, description="sequences per streamed block")
    output_path: str | None = Field(
        default=None,
        description="where the result goes (zarr; default: <store stem>.bif.zarr beside a local store)",
    )


class SusceptibilitySettings(_Part):
    """`distinterp susceptibilities`: one store per weight restriction, then compute_susceptibilities."""

    restrictions: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="name -> create_param_masks pattern ('l0h1', ['l1 mlp', 'l1 attn'], ...); the "
        "unrestricted 'full' run is added; restriction NAME samples into <output stem>_NAME.zarr",
    )
    sampling_task: str = Field(
        default="train", description="the observable the chains sample (default: 'train')"
    )
    include_sampling_task: bool = False
    output_path: str | None = Field(
        default=None, description="the result (zarr; default: <output stem>.susceptibilities.zarr)"
    )

    @field_validator("restrictions")
    @classmethod
    def _named(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "full" in v:
            raise ValueError("'full' (the unrestricted run) is added for you; name restrictions otherwise")
        return v


class ParallelSettings(_Part):
    """Parallel layout: world size = chain groups x fsdp_size; `noise` as sample()'s (None: by layout)."""

    fsdp_size: PositiveInt = Field(default=1, description="ranks that shard one chain's model (FSDP2)")
    noise: Literal["devinterp", "blocked"] | None = Field(
        default=None,
        description="SGLD noise stream: devinterp's (fsdp_size=1 only) or layout-invariant 'blocked'",
    )
    chains_per_batch: PositiveInt = Field(
        default=1, description="chains a rank advances together, batched (GPU)"
    )


class ArrayTaskSettings(_Part):
    """Which slice of the chains this Slurm array task runs (read from SLURM_ARRAY_* when unset)."""

    task_id: int | None = Field(default=None, ge=0, description="0-based position of this task in the array")
    task_count: PositiveInt | None = Field(default=None, description="number of tasks in the array")

    @model_validator(mode="after")
    def _check(self) -> ArrayTaskSettings:
        if (self.task_id is None) != (self.task_count is None):
            raise ValueError("task_id and task_count go together: set both or neither")
        if self.task_id is not None and self.task_count is not None and self.task_id >= self.task_count:
            raise ValueError(f"task_id={self.task_id} must be < task_count={self.task_count}")
        return self

    def resolved(self) -> tuple[int, int] | None:
        """(task index, task count) from the settings or Slurm's environment, or None outside an array job.

        Slurm gives the task's own id (e.g. 5 of --array=1-9:2); its 0-based index is (id - MIN) / STEP.
        """
        if self.task_id is not None and self.task_count is not None:
            return self.task_id, self.task_count
        env = os.environ
        if "SLURM_ARRAY_TASK_ID" not in env:
            return None

        def number(name: str) -> int | None:
            raw = env.get(name)
            try:
                return None if raw is None else int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None

        task = number("SLURM_ARRAY_TASK_ID")
        assert task is not None
        lo = number("SLURM_ARRAY_TASK_MIN") or 0
        step = number("SLURM_ARRAY_TASK_STEP") or 1
        hi = number("SLURM_ARRAY_TASK_MAX")
        count = number("SLURM_ARRAY_TASK_COUNT")
        if count is None:
            if hi is None:
                raise ValueError("SLURM_ARRAY_TASK_COUNT and _MAX are unset; set array_task explicitly")
            count = (hi - lo) // step + 1
        index, off = divmod(task - lo, step)
        if off or not 0 <= index < count or (hi is not None and hi - lo != (count - 1) * step):
            raise ValueError(
                f"SLURM_ARRAY_TASK_ID={task} with MIN={lo} STEP={step} MAX={hi} COUNT={count}: not an evenly "
                "spaced array (e.g. --array=0-15 or 1-31:2); pass --array-task-id/--array-task-count "
                "(array_task.task_id/task_count) instead"
            )
        return index, count


class WandbSettings(_Part):
    """Weights & Biases (pip install 'distinterp[wandb]'): rank 0 logs the run once its store is written."""

    project: str = "distinterp"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = Field(
        default="online",
        description="'offline' writes the run under `dir` only (wandb sync uploads it later)",
    )
    tags: list[str] = Field(default_factory=list)
    dir: str | None = Field(
        default=None, description="where wandb writes its run directory (default ./wandb)"
    )


class LoggingSettings(_Part):
    """Where results are logged besides the store; all off by default."""

    wandb: WandbSettings | None = None


class SampleSettings(BaseSettings):
    """Settings of one sampling job (`distinterp sample CONFIG.yaml`): model, data, sampler, store."""

    model_config = SettingsConfigDict(
        env_prefix="DISTINTERP_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    observables: dict[str, ObservableSettings] | None = Field(
        default=None, description="name -> probe dataset; default: the sampling dataset as 'train'"
    )
    sampler: SamplerConfig
    batches_per_draw: PositiveInt = Field(
        default=3, description="batches of sampler.batch_size rows each observable evaluates at every draw"
    )
    obs_seed: int = Field(default=1337, description="seed choosing the observables' fixed rows")
    device: str | None = Field(
        default=None, description="None: cuda:LOCAL_RANK when CUDA is available, else cpu"
    )
    output_path: str = Field(..., description="local path or fsspec URL (s3://bucket/run.zarr)")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options; never persisted"
    )
    chains: list[int] | None = Field(
        default=None, description="chain indices this job runs (default: all, or the array task's)"
    )
    array_task: ArrayTaskSettings = Field(default_factory=ArrayTaskSettings)
    checkpoint_every: PositiveInt | None = Field(
        default=None,
        description="save each chain's state every this many steps, so a requeued job continues mid-chain",
    )
    weight_restriction: str | list[str] | None = Field(
        default=None,
        description="sample only these weights: a create_param_masks pattern ('l0h1', 'l1 mlp', ...) or a list",
    )
    parallel: ParallelSettings = Field(default_factory=ParallelSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    analyses: list[Literal["llc"]] = Field(default=["llc"], description="run after sampling, on rank 0")
    bif: BifSettings = Field(default_factory=BifSettings, description="`distinterp bif` only")
    susceptibilities: SusceptibilitySettings = Field(
        default_factory=SusceptibilitySettings, description="`distinterp susceptibilities` only"
    )

    @model_validator(mode="after")
    def _check(self) -> SampleSettings:
        if self.chains is not None and self.array_task.task_id is not None:
            raise ValueError("set either chains or array_task.task_id, not both")
        if self.chains is not None:
            bad = [c for c in self.chains if not 0 <= c < self.sampler.num_chains]
            if bad or len(set(self.chains)) != len(self.chains):
                raise ValueError(
                    f"chains={self.chains}: need distinct indices in [0, sampler.num_chains="
                    f"{self.sampler.num_chains})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)

    _file_values: ClassVar[dict[str, Any]] = {}


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's values (lowest priority), as `load_settings` read them."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.settings_cls._file_values.get(field_name), field_name, False  # type: ignore[attr-defined]

    def __call__(self) -> dict[str, Any]:
        return dict(self.settings_cls._file_values)  # type: ignore[attr-defined]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A settings file's top-level mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with path.open() as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of settings, got a {type(data).__name__}")
    return data


def check_environment(cls: type[SampleSettings] | None = None) -> None:
    """Refuse DISTINTERP_* variables that name no setting (a typo would otherwise be ignored silently)."""
    cls = cls or SampleSettings
    prefix = cls.model_config.get("env_prefix", "")
    fields = set(cls.model_fields)
    for name in sorted(os.environ):
        if name.upper().startswith(prefix) and name[len(prefix) :].split("__")[0].lower() not in fields:
            raise ValueError(
                f"environment variable {name} names no setting; settings are {sorted(fields)} "
                "(nested with '__', e.g. DISTINTERP_SAMPLER__LR)"
            )


def parse_override(text: str) -> dict[str, Any]:
    """'sampler.lr=0.001' -> {'sampler': {'lr': 0.001}} (the value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. sampler.lr=0.001")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set {text!r}: the key must be dotted names, e.g. sampler.lr")
    try:
        value: Any = yaml.load(raw, Loader=_Loader) if raw else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({e})") from None
    for part in reversed(parts):
        value = {part: value}
    nested: dict[str, Any] = value
    return nested


def _leaf(nested: dict[str, Any], parts: list[str]) -> Any:
    for part in parts:
        nested = nested[part]
    return nested


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _drop(values: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """`values` without the entry at the dotted path `parts` (a copy; unchanged when there is none)."""
    head, rest = parts[0], parts[1:]
    if head not in values:
        return values
    if not rest:
        return {k: v for k, v in values.items() if k != head}
    inner = values[head]
    return {**values, head: _drop(inner, rest)} if isinstance(inner, dict) else values


def load_settings(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    cls: type[SampleSettings] | None = None,
) -> SampleSettings:
    """Settings (SampleSettings, or a job's subclass `cls`) from a YAML file (or `base`, e.g. the settings a
    store recorded), the environment and `key=value` overrides (highest priority)."""
    cls = cls or SampleSettings
    from_file = dict(base) if base is not None else read_yaml(path) if path is not None else {}
    check_environment(cls)
    init: dict[str, Any] = {}
    for text in overrides or []:
        override = parse_override(text)
        parts = text.split("=", 1)[0].strip().split(".")
        if isinstance(_leaf(override, parts), dict):  # a mapping given whole replaces the file's
            from_file, init = _drop(from_file, parts), _drop(init, parts)
        init = _merge(init, override)
    if not from_file:
        return cls(**init)
    with_file: type[SampleSettings] = type(cls.__name__, (cls,), {"_file_values": from_file})
    return with_file(**init)
