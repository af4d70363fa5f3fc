"""Runner settings: YAML < DISTINTERP_* environment < --set overrides; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from distinterp.jobs.runner import job_chains
from distinterp.jobs.settings import ArrayTaskSettings, SampleSettings, load_settings, parse_override

BASE = {
    "sampler": {"lr": 0.001, "n_beta": 10.0, "num_chains": 4, "num_draws": 7},
    "dataset": {"vocab_size": 5},
    "output_path": "run.zarr",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No DISTINTERP_* or SLURM_ARRAY_* variables from the calling shell leak into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(("DISTINTERP_", "SLURM_ARRAY_")):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def field_errors(excinfo: pytest.ExceptionInfo) -> dict[str, str]:
    """{'sampler.lr': message, ...} from a pydantic ValidationError."""
    return {".".join(map(str, e["loc"])): e["msg"] for e in excinfo.value.errors()}


def test_yaml_values_and_defaults(config):
    s = load_settings(config)
    assert isinstance(s, SampleSettings)
    assert (s.sampler.lr, s.sampler.n_beta, s.sampler.num_chains) == (0.001, 10.0, 4)
    assert s.sampler.batch_size == 32  # SamplerConfig's default
    assert s.dataset.vocab_size == 5 and s.dataset.seq_len == 65  # a partial section keeps the other defaults
    assert s.model.name == "bigram" and s.parallel.fsdp_size == 1 and s.analyses == ["llc"]
    assert s.output_path == "run.zarr"
    assert s.checkpoint_every is None


def test_priority_yaml_then_environment_then_overrides(config, monkeypatch):
    monkeypatch.setenv("DISTINTERP_SAMPLER__NUM_DRAWS", "11")
    monkeypatch.setenv("DISTINTERP_SAMPLER__N_BETA", "20")
    monkeypatch.setenv("distinterp_obs_seed", "5")  # names are case-insensitive
    s = load_settings(config, ["sampler.n_beta=30", "dataset.seq_len=9"])
    assert s.sampler.num_draws == 11  # env over YAML
    assert s.sampler.n_beta == 30.0  # --set over env
    assert s.sampler.lr == 0.001 and s.sampler.num_chains == 4  # YAML values next to overridden ones survive
    assert s.dataset.seq_len == 9 and s.dataset.vocab_size == 5
    assert s.obs_seed == 5


def test_without_a_file(monkeypatch):
    monkeypatch.setenv("DISTINTERP_OUTPUT_PATH", "s3://bucket/run.zarr")
    s = load_settings(None, ["sampler.lr=1e-3", "sampler.n_beta=2"])
    assert s.output_path == "s3://bucket/run.zarr" and s.sampler.lr == 1e-3
    with pytest.raises(ValidationError) as e:
        load_settings(None, ["output_path=x"])
    assert set(field_errors(e)) == {"sampler"}


def test_overrides_are_parsed_as_yaml():
    assert parse_override("sampler.lr=1e-3") == {"sampler": {"lr": 1e-3}}
    assert parse_override("chains=[0, 2]") == {"chains": [0, 2]}
    assert parse_override("sampler.bounding_box_size=") == {"sampler": {"bounding_box_size": None}}
    assert parse_override("output_path=a=b") == {"output_path": "a=b"}
    for bad in ("sampler.lr", "sampler..lr=1", "=3", "chains=[0,"):
        with pytest.raises(ValueError, match="--set"):
            parse_override(bad)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["sampler.lr=-1"], "sampler.lr"),
        (["sampler.num_chains=0"], "sampler.num_chains"),
        (["sampler.sampling_method=adam"], "sampler.sampling_method"),
        (["model.source=torchhub"], "model.source"),
        (["dataset.vocab_size=zero"], "dataset.vocab_size"),
        (["batches_per_draw=0"], "batches_per_draw"),
        (["checkpoint_every=0"], "checkpoint_every"),
        (["analyses=[bif]"], "analyses.0"),
        (["array_task.task_id=-1", "array_task.task_count=2"], "array_task.task_id"),
        (["parallel.chains_per_batch=0"], "parallel.chains_per_batch"),
    ],
)
def test_invalid_values_name_the_field(config, overrides, field):
    with pytest.raises(ValidationError) as e:
        load_settings(config, overrides)
    assert field in field_errors(e), field_errors(e)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["sampler.lrr=1"], "sampler.lrr"),
        (["bogus=1"], "bogus"),
        (["parallel.degree=2"], "parallel.degree"),
        (["observables.probe.batches=2"], "observables.probe.batches"),
    ],
)
def test_unknown_keys_are_rejected(config, overrides, field):
    with pytest.raises(ValidationError) as e:
        load_settings(config, overrides)
    errors = field_errors(e)
    assert field in errors and "Extra inputs" in errors[field]


def test_unknown_keys_in_the_file_and_environment(config, tmp_path, monkeypatch):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**BASE, "smapler": {"lr": 1}}))
    with pytest.raises(ValidationError) as e:
        load_settings(path)
    assert "smapler" in field_errors(e)
    monkeypatch.setenv("DISTINTERP_SAMPLER__NBETA", "3")
    with pytest.raises(ValidationError) as e:
        load_settings(config)
    assert "sampler.nbeta" in field_errors(e)
    monkeypatch.delenv("DISTINTERP_SAMPLER__NBETA")
    monkeypatch.setenv("DISTINTERP_SAMPLR__LR", "3")  # a misspelt section would otherwise be ignored
    with pytest.raises(ValueError, match="DISTINTERP_SAMPLR__LR"):
        load_settings(config)


def test_parallel_settings(config):
    s = load_settings(config, ["parallel.fsdp_size=2", "parallel.noise=blocked"])
    assert s.parallel.fsdp_size == 2 and s.parallel.noise == "blocked"
    with pytest.raises(ValidationError) as e:
        load_settings(config, ["parallel.fsdp_size=0"])
    assert "parallel.fsdp_size" in field_errors(e)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping"):
        load_settings(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("sampler: {lr: 1\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        load_settings(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValidationError) as e:
        load_settings(empty)
    assert set(field_errors(e)) == {"sampler", "output_path"}


def test_chains_and_array_tasks(config):
    s = load_settings(config, ["chains=[3, 1]"])
    assert job_chains(s) == [3, 1]
    assert job_chains(load_settings(config)) is None
    s = load_settings(config, ["array_task.task_id=1", "array_task.task_count=3"])
    assert job_chains(s) == [2]  # 4 chains over 3 tasks: [0, 1], [2], [3]
    with pytest.raises(ValidationError, match="not both"):
        load_settings(config, ["chains=[0]", "array_task.task_id=0", "array_task.task_count=2"])
    with pytest.raises(ValidationError) as e:
        load_settings(config, ["chains=[0, 4]"])
    assert "num_chains" in str(e.value)
    with pytest.raises(ValidationError, match="go together"):
        load_settings(config, ["array_task.task_id=0"])
    with pytest.raises(ValidationError, match="must be < task_count"):
        load_settings(config, ["array_task.task_id=2", "array_task.task_count=2"])


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"}, (2, 4)),
        (  # --array=1-7:2 -> ids 1, 3, 5, 7
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "7",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (2, 4),
        ),
    ],
)
def test_array_task_from_slurm_environment(monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert ArrayTaskSettings().resolved() == expected
    # Explicit settings win over Slurm's variables.
    assert ArrayTaskSettings(task_id=0, task_count=2).resolved() == (0, 2)


@pytest.mark.parametrize(
    "env, match",
    [
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID='x'"),
        # --array=1,2,7: ids are not evenly spaced, so the task's position is unknown
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
          "SLURM_ARRAY_TASK_COUNT": "3"}, "evenly spaced"),
    ],
)  # fmt: skip
def test_array_task_environment_errors(monkeypatch, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        ArrayTaskSettings().resolved()


def test_array_task_from_environment_picks_the_chain_block(config, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert job_chains(load_settings(config)) == [3]
    assert job_chains(load_settings(config, ["chains=[0]"])) == [0]  # explicit chains win
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert job_chains(load_settings(config)) == []  # more tasks than chains: run_sample refuses it


def test_fsdp_recipe_is_valid():
    s = load_settings(Path(__file__).parents[1] / "launch" / "fsdp.yaml")
    assert s.parallel.fsdp_size == 4 and s.sampler.batch_size >= 4
