"""Settings that were accepted and then ignored, or checked only after work (issue 19's list): each is now
honoured or refused by name, before anything is sampled or written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distinterp.jobs.cli import main
from distinterp.jobs.sweep import RECORD
from tests.test_cli import TINY

TINY_GPT2 = {**TINY, "model": {"name": "tiny-gpt2"}}


def write(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_revisions_of_a_model_without_revisions_are_refused(tmp_path, capsys):
    """Item 1: revisions of a builtin model would sample one model N times and print it as a trajectory."""
    config = {**TINY_GPT2, "checkpoints": {"revisions": ["a", "b"]}, "output_path": str(tmp_path / "t")}
    assert main(["trajectory", write(tmp_path / "t.yaml", config)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints.revisions: model.source='builtin' has no revisions" in err
    assert not (tmp_path / "t").exists()
    config = {**TINY_GPT2, "model": {"name": "tiny-gpt2", "revision": "main"}, "output_path": "x.zarr"}
    assert main(["sample", write(tmp_path / "s.yaml", config)]) == 2
    assert "revision='main': model.source='builtin' has no revisions" in capsys.readouterr().err


def test_every_checkpoint_is_checked_before_any_work_and_a_failure_leaves_no_record(tmp_path, capsys):
    """Item 2: [good, bad] failed after sampling good, and left a record that refused the corrected
    command. Now the bad one is named first, nothing is written, and the corrected command runs."""
    from distinterp import toy

    torch.save(toy.tiny_gpt2(vocab_size=3, seed=1).state_dict(), tmp_path / "good.pt")
    torch.save({"nope": torch.zeros(2)}, tmp_path / "bad.pt")
    root = tmp_path / "traj"
    files = [str(tmp_path / "good.pt"), str(tmp_path / "bad.pt")]
    config = {**TINY_GPT2, "checkpoints": {"state_dicts": files}, "output_path": str(root)}
    assert main(["trajectory", write(tmp_path / "t.yaml", config)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints 'bad'.state_dict=" in err and "do not fit model" in err, err
    assert not (root / RECORD).exists() and not (root / "good.zarr").exists()

    hub = {**TINY_GPT2, "model": {"source": "hf", "name": "nobody/nothing-cached"}}
    hub = {**hub, "checkpoints": {"revisions": ["step1", "step2"]}, "output_path": str(root)}
    assert main(["trajectory", write(tmp_path / "h.yaml", hub)]) == 2
    assert "checkpoints 'step1': 'nobody/nothing-cached' revision 'step1' cannot be loaded" in (
        capsys.readouterr().err
    )
    assert not (root / RECORD).exists()

    config["checkpoints"] = {"state_dicts": files[:1]}
    assert main(["trajectory", write(tmp_path / "t.yaml", config)]) == 0
    assert (root / RECORD).exists() and (root / "good.zarr").exists()


def test_a_sweep_that_fails_before_its_first_store_leaves_no_record(tmp_path, capsys):
    """Item 2: parallel.fsdp_size=2 on one process is honoured, hence refused by sample(); the root keeps
    no record, so the corrected command is not refused as 'different settings'."""
    from distinterp import toy

    torch.save(toy.tiny_gpt2(vocab_size=3, seed=1).state_dict(), tmp_path / "a.pt")
    root = tmp_path / "traj"
    config = {**TINY_GPT2, "checkpoints": {"state_dicts": [str(tmp_path / "a.pt")]}, "output_path": str(root)}
    config["parallel"] = {"fsdp_size": 2}
    assert main(["trajectory", write(tmp_path / "t.yaml", config)]) == 2
    assert "fsdp_size" in capsys.readouterr().err
    assert not (root / RECORD).exists()


def test_susceptibility_restrictions_are_checked_before_sampling_and_named(tmp_path, capsys):
    """Item 3: a bad restriction failed after sampling the full run and the earlier restrictions, and was
    named weight_restriction."""
    config = {
        **TINY_GPT2,
        "observables": {
            "train": {"vocab_size": 3, "seq_len": 9, "num_rows": 32},
            "probe": {"vocab_size": 3, "seq_len": 9, "seed": 5, "num_rows": 8},
        },
        "susceptibilities": {"restrictions": {"ok": "l0h1", "bad": "l7h9"}},
        "output_path": str(tmp_path / "run.zarr"),
    }
    assert main(["susceptibilities", write(tmp_path / "s.yaml", config)]) == 2
    err = capsys.readouterr().err
    assert "susceptibilities.restrictions.bad='l7h9'" in err, err
    assert not list(tmp_path.glob("run_*.zarr"))
    config["weight_restriction"] = "l0h1"
    config["susceptibilities"] = {"restrictions": {"ok": "l0h1"}}
    assert main(["susceptibilities", write(tmp_path / "s.yaml", config)]) == 2
    assert "weight_restriction: a susceptibilities job sets its own per run" in capsys.readouterr().err


@pytest.mark.parametrize("job", ["trajectory", "calibrate"])
def test_sweeps_refuse_wandb_logging_by_name(tmp_path, capsys, job):
    config = {**TINY_GPT2, "output_path": str(tmp_path / "r"), "logging": {"wandb": {"mode": "offline"}}}
    if job == "trajectory":
        config["checkpoints"] = {"state_dicts": [str(tmp_path / "a.pt")]}
        (tmp_path / "a.pt").write_bytes(b"")
    else:
        config["grid"] = {"lr": [1e-3, 1e-2]}
    assert main([job, write(tmp_path / "j.yaml", config)]) == 2
    assert f"logging.wandb: a {job} job is not logged to W&B yet" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["aggregate", "nosuch.zarr", "--bif-batch-size", "-3"], "--bif-batch-size: need at least 1"),
        (["aggregate", "nosuch.zarr", "--susceptibilities", "bad"], "--susceptibilities 'bad': expected"),
        (["aggregate", "nosuch.zarr", "--sampling-task", "nope"], "--sampling-task: used only with"),
        (["aggregate", "nosuch.zarr", "--output", "out.txt"], "--output 'out.txt': results are written"),
        (["report", "nosuch.zarr", "--tokenizer", "/no/such/tok"], "--tokenizer='/no/such/tok'"),
        (["report", "nosuch.zarr", "--out", "/proc/x"], "--out='/proc/x'"),
    ],
)
def test_aggregate_and_report_flags_are_checked_before_any_work(argv, message, capsys):
    """Item 4 (flags checked after the LLC, or ignored) and item 6 (raw '[Errno 2]' without the flag)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Errno" not in err, err


def test_a_mapping_given_with_set_replaces_the_files(tmp_path):
    """Item 4: `--set susceptibilities.restrictions={}` merged into the file's restrictions (no change)."""
    from distinterp.jobs.settings import load_settings

    config = {**TINY, "output_path": "r.zarr", "susceptibilities": {"restrictions": {"a": "l0h1"}}}
    path = write(tmp_path / "s.yaml", config)
    assert load_settings(path, ["susceptibilities.restrictions={}"]).susceptibilities.restrictions == {}
    got = load_settings(path, ["susceptibilities.restrictions={b: l1}"]).susceptibilities.restrictions
    assert got == {"b": "l1"}
    assert load_settings(path, ["sampler.lr=0.01"]).sampler.n_beta == 10.0  # scalars still merge


def test_verbose_keeps_the_exit_status_and_the_message(capsys):
    """Item 5: -v printed the traceback and exited 1 without the one-line message."""
    assert main(["-v", "aggregate", "nosuch.zarr", "--bif-batch-size", "-3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "distinterp aggregate: --bif-batch-size" in err


@pytest.mark.parametrize("job", ["trajectory", "calibrate"])
def test_sweep_output_path_is_named_when_it_cannot_be_created(tmp_path, capsys, job):
    """Item 6: a sweep under a file printed a raw '[Errno 20] Not a directory'."""
    (tmp_path / "file").write_text("")
    config = {**TINY_GPT2, "output_path": str(tmp_path / "file" / "root")}
    if job == "trajectory":
        config["checkpoints"] = {"state_dicts": [str(tmp_path / "file")]}
    else:
        config["grid"] = {"lr": [1e-3, 1e-2]}
    assert main([job, write(tmp_path / "j.yaml", config)]) == 2
    err = capsys.readouterr().err
    assert "output_path=" in err and "is a file, not a directory" in err, err


def test_report_and_inspect_find_the_susceptibilities_jobs_result(tmp_path, capsys):
    """Item 8: `<stem>.susceptibilities.zarr` was not found from the job's `<stem>_full.zarr` store, and the
    report could not be pointed at it."""
    config = {
        **TINY_GPT2,
        "observables": {
            "train": {"vocab_size": 3, "seq_len": 9, "num_rows": 32},
            "probe": {"vocab_size": 3, "seq_len": 9, "seed": 5, "num_rows": 8},
        },
        "susceptibilities": {"restrictions": {"l0h1": "l0h1"}},
        "output_path": str(tmp_path / "run.zarr"),
    }
    assert main(["susceptibilities", write(tmp_path / "s.yaml", config)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "run_full.zarr")]) == 0
    assert "run.susceptibilities.zarr" in capsys.readouterr().out
    for argv in ([], ["--susceptibilities", str(tmp_path / "run.susceptibilities.zarr")]):
        assert main(["report", str(tmp_path / "run_l0h1.zarr"), "--out", str(tmp_path / "rep"), *argv]) == 0
        assert "susceptibilities" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "run.zarr"), "--susceptibilities", str(tmp_path / "no.zarr")]) == 2
    assert "--susceptibilities" in capsys.readouterr().err


def test_sweep_tables_show_each_cells_health(tmp_path, capsys):
    """Item 8: the trajectory/calibrate text tables lacked each cell's verdict (the HTML had it)."""
    from distinterp import toy

    torch.save(toy.tiny_gpt2(vocab_size=3, seed=1).state_dict(), tmp_path / "a.pt")
    config = {**TINY_GPT2, "checkpoints": {"state_dicts": [str(tmp_path / "a.pt")]}}
    config["output_path"] = str(tmp_path / "traj")
    assert main(["trajectory", write(tmp_path / "t.yaml", config)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[0] == "a" and ("healthy" in row or "UNHEALTHY" in row), row
