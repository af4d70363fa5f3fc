"""Runner settings: typed, validated once, loadable from YAML, environment (DISTINTERP_*) and CLI.

Priority, highest first: `--set key=value` on the command line, environment variables
(`DISTINTERP_SAMPLER__LR=0.001`, nested with `__`), the YAML file, then the defaults.
Credentials never belong here: s3fs reads AWS_* variables itself; `storage_options` is never persisted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from distinterp.config import SamplerConfig


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
    """Parallel layout: world size = chain groups x fsdp_size."""

    fsdp_size: PositiveInt = 1


class ArrayTaskSettings(_Part):
    """Which slice of the chains this Slurm array task runs (read from SLURM_ARRAY_* when unset)."""

    task_id: int | None = None
    task_count: PositiveInt | None = None

    def resolved(self) -> tuple[int, int] | None:
        """(task_id, task_count) from the settings or Slurm's environment, or None outside an array job."""
        if self.task_id is not None:
            if self.task_count is None:
                raise ValueError("array_task.task_count is required with array_task.task_id")
            return self.task_id, self.task_count
        env = os.environ
        if "SLURM_ARRAY_TASK_ID" not in env:
            return None
        task = int(env["SLURM_ARRAY_TASK_ID"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        if "SLURM_ARRAY_TASK_COUNT" in env:
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        else:
            count = int(env.get("SLURM_ARRAY_TASK_MAX", str(task))) - lo + 1
        return task - lo, count


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
    parallel: ParallelSettings = Field(default_factory=ParallelSettings)
    analyses: list[Literal["llc"]] = Field(
        default_factory=lambda: ["llc"], description="run after sampling, on rank 0"
    )

    @model_validator(mode="after")
    def _check(self) -> SampleSettings:
        if self.chains is not None and self.array_task.task_id is not None:
            raise ValueError("set either chains or array_task.task_id, not both")
        if self.parallel.fsdp_size != 1:
            raise ValueError("parallel.fsdp_size > 1 is not supported yet; run with fsdp_size=1")
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
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def parse_override(text: str) -> dict[str, Any]:
    """'sampler.lr=0.001' -> {'sampler': {'lr': 0.001}} (the value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. sampler.lr=0.001")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(path: str | Path | None = None, overrides: list[str] | None = None) -> SampleSettings:
    """SampleSettings from a YAML file, the environment and `key=value` overrides (highest priority)."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    init: dict[str, Any] = {}
    for text in overrides or []:
        init = _merge(init, parse_override(text))
    if path is None:
        return SampleSettings(**init)
    from_file = type(
        "SampleSettings",
        (SampleSettings,),
        {"model_config": {**SampleSettings.model_config, "yaml_file": Path(path)}},
    )
    return from_file(**init)
