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
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distinterp.config import SamplerConfig


class _Loader(yaml.SafeLoader):
    """YAML that also reads 1e-3 as a float (YAML 1.1 wants a dot in the mantissa: 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Part):
    """Which model to sample around."""

    source: Literal["builtin", "hf"] = "builtin"
    name: str = Field(
        "bigram",
        description="builtin: 'bigram' (at its MLE on the sampling data) or 'tiny-gpt2'; "
        "hf: a local directory or hub id already in the local cache",
    )
    random_init: bool = Field(
        False, description="hf: build from the config only (no weights); for tests/benchmarks"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="hf: config overrides (with random_init)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    state_dict: str | None = Field(
        None, description="a state-dict file (.pt/.bin/.safetensors) loaded into this architecture"
    )


class DatasetSettings(_Part):
    """A tokenized dataset with an 'input_ids' column of equal-length rows."""

    source: Literal["builtin", "hf", "disk"] = "builtin"
    name: str = Field(
        "markov",
        description="builtin: 'markov' (random Markov chain text); hf: load_dataset name/path; "
        "disk: a load_from_disk directory",
    )
    split: str = "train"
    num_rows: PositiveInt | None = Field(None, description="use only the first num_rows rows")
    # builtin generator knobs
    vocab_size: PositiveInt = 6
    seq_len: PositiveInt = 65
    seed: int = 0


class ObservableSettings(DatasetSettings):
    """A probe dataset evaluated at every draw."""

    batches_per_draw: PositiveInt | None = None


class ParallelSettings(_Part):
    """Parallel layout: world size = chain groups x fsdp_size; `noise` as sample()'s (None: by layout)."""

    fsdp_size: PositiveInt = Field(1, description="ranks that shard one chain's model (FSDP2)")
    noise: Literal["devinterp", "blocked"] | None = Field(
        None, description="SGLD noise stream: devinterp's (fsdp_size=1 only) or layout-invariant 'blocked'"
    )
    chains_per_batch: PositiveInt = Field(1, description="chains a rank advances together, batched (GPU)")


class ArrayTaskSettings(_Part):
    """Which slice of the chains this Slurm array task runs (read from SLURM_ARRAY_* when unset)."""

    task_id: int | None = Field(None, ge=0, description="0-based position of this task in the array")
    task_count: PositiveInt | None = None

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
        None, description="name -> probe dataset; default: the sampling dataset as 'train'"
    )
    sampler: SamplerConfig
    batches_per_draw: PositiveInt = 3
    obs_seed: int = 1337
    device: str | None = None
    output_path: str = Field(..., description="local path or fsspec URL (s3://bucket/run.zarr)")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options; never persisted"
    )
    chains: list[int] | None = Field(
        None, description="chain indices this job runs (default: all, or the array task's)"
    )
    array_task: ArrayTaskSettings = Field(default_factory=ArrayTaskSettings)
    checkpoint_every: PositiveInt | None = Field(
        None,
        description="save each chain's state every this many steps, so a requeued job continues mid-chain",
    )
    weight_restriction: str | list[str] | None = Field(
        None,
        description="sample only these weights: a create_param_masks pattern ('l0h1', 'l1 mlp', ...) or a list",
    )
    parallel: ParallelSettings = Field(default_factory=ParallelSettings)
    analyses: list[Literal["llc"]] = Field(
        default_factory=lambda: ["llc"], description="run after sampling, on rank 0"
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
    return value


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
        init = _merge(init, parse_override(text))
    if not from_file:
        return cls(**init)
    with_file = type(cls.__name__, (cls,), {"_file_values": from_file})
    return with_file(**init)
