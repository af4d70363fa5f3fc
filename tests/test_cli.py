"""The `distinterp` command: sample (subprocess, in-process), status, aggregate, demo, user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import xarray as xr
import yaml

from distinterp.jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "dataset": {"vocab_size": 3, "seq_len": 9, "num_rows": 32},
    "sampler": {
        "lr": 0.001,
        "n_beta": 10.0,
        "num_chains": 2,
        "num_draws": 5,
        "batch_size": 4,
        "num_init_loss_batches": 2,
    },
    "batches_per_draw": 1,
}
"""The built-in bigram on 32 rows of 3-symbol Markov text: 2 chains x 5 draws, about a second of sampling."""


def cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m distinterp ARGS` in a fresh process (no torchrun variables inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTINTERP_", "SLURM_ARRAY_"))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "distinterp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_path": str(tmp_path / "run.zarr")}))
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith(("DISTINTERP_", "SLURM_ARRAY_")):
            monkeypatch.delenv(name)


def test_sample_status_aggregate(tmp_path, config, capsys):
    """A partial run (chain 0 of 2) in a subprocess; status and aggregate see what is missing; then finish."""
    store = str(tmp_path / "run.zarr")
    res = cli("sample", str(config), "--array-task-id", "0", "--array-task-count", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1/2 chains complete" in res.stdout
    assert "Traceback" not in res.stderr

    assert main(["status", store]) == 1  # incomplete
    out = capsys.readouterr().out
    assert "1/2 chains complete" in out and "chain 1: 0 steps done" in out

    assert main(["aggregate", store]) == 2
    err = capsys.readouterr().err
    assert "missing: chain 1 (0/5 steps)" in err and "--allow-partial" in err

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the CLI prints warnings as one line each
        assert main(["aggregate", store, "--allow-partial", "--output", str(tmp_path / "partial.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "1 chains" in out and "excluded  [1]" in out
    assert err == "warning: compute_llc: using complete chains only; skipping incomplete chains [1]\n"
    assert xr.open_zarr(tmp_path / "partial.zarr", consolidated=False).sizes["chain"] == 1

    # The rest of the run, in-process; the same command continues the store (checkpointing on the way).
    assert main(["sample", str(config), "--set", "checkpoint_every=1"]) == 0
    out = capsys.readouterr().out
    assert "2/2 chains complete" in out and "LLC mean" in out
    assert main(["status", store]) == 0
    assert "2/2 chains complete" in capsys.readouterr().out
    assert main(["aggregate", store, "--output", str(tmp_path / "llc.zarr")]) == 0
    assert "LLC mean" in capsys.readouterr().out
    llc = xr.open_zarr(tmp_path / "llc.zarr", consolidated=False)
    assert llc.sizes["chain"] == 2 and float(llc.llc_mean) > 0


def test_bad_config_fails_naming_the_field(tmp_path, config):
    """Validation errors: exit 2, one line per field, no traceback, nothing written."""
    res = cli("sample", str(config), "--set", "sampler.lrr=1", "--set", "sampler.num_chains=0", cwd=tmp_path)
    assert res.returncode == 2
    assert "sampler.lrr: Extra inputs are not permitted" in res.stderr
    assert "sampler.num_chains:" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) <= 4, res.stderr
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
        (["sample", "{config}", "--fsdp-size", "2"], "fsdp_size=2 must divide the world size 1"),
        (["sample", "{config}", "--set", "sampler.lr"], "expected key=value"),
        (["sample", "{config}", "--set", "model.name=gpt5"], "built-in models"),
        (["sample", "{config}", "--set", "chains=[5]"], "chains=[5]"),
        (["status", "{tmp}/nowhere.zarr"], "no store at"),
        (["aggregate", "{tmp}/nowhere.zarr", "--storage-options", "{{bad"], "--storage-options"),
    ],
)
def test_user_errors_exit_2_with_one_message(tmp_path, config, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, config=config) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith(f"distinterp {argv[0]}: ")


def test_store_of_another_config_is_refused(tmp_path, config, capsys):
    assert main(["sample", str(config), "--set", "chains=[0]"]) == 0
    capsys.readouterr()
    assert main(["sample", str(config), "--set", "sampler.n_beta=11"]) == 2
    assert "n_beta" in capsys.readouterr().err


def test_array_task_flags_go_together(config):
    with pytest.raises(SystemExit) as e:
        main(["sample", str(config), "--array-task-id", "0"])
    assert e.value.code == 2


@pytest.mark.distributed
def test_demo_on_two_ranks(tmp_path):
    """`distinterp demo` re-executes itself under torchrun with 2 ranks (V=3: lambda = 3; ~25 s)."""
    store = tmp_path / "demo.zarr"
    res = cli("demo", "--vocab", "3", "--output", str(store), cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "(2 rank(s))" in res.stdout
    assert "theory    3.000" in res.stdout and "target    3.01" in res.stdout
    llc_line = next(line for line in res.stdout.splitlines() if line.startswith("LLC mean"))
    assert abs(float(llc_line.split()[2]) - 3.0) < 0.5, res.stdout  # accuracy: test_known_answers
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    assert tree.dataset.attrs["completed"] == 1 and tree.dataset.sizes["chain"] == 4


def test_aggregate_bif_and_susceptibilities(tmp_path, capsys):
    """`aggregate --bif --susceptibilities` on stores from susceptibilities(): same numbers as the Python API."""
    import numpy as np

    import distinterp
    from distinterp.analyses.bif import compute_bif
    from tests.conftest import SMALL, tiny_gpt2, token_dataset

    ds, probe = token_dataset(), token_dataset(rows=16, seed=2)
    sus = distinterp.susceptibilities(
        tiny_gpt2(),
        ds,
        {"train": ds, "probe": probe},
        {"full": None, "l0h0": "l0h0"},
        sampling_task="train",
        output_path=str(tmp_path / "samples.zarr"),
        **{**SMALL, "num_chains": 2},
    )
    full, head = tmp_path / "samples_full.zarr", tmp_path / "samples_l0h0.zarr"
    argv = ["aggregate", str(full), "--output", str(tmp_path / "llc.zarr"), "--bif", "sequence"]
    argv += ["--susceptibilities", f"l0h0={head}", "--sampling-task", "train"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "susceptibilities" in out and "BIF" in out
    got = xr.open_datatree(tmp_path / "llc.susceptibilities.zarr", engine="zarr", consolidated=False)
    np.testing.assert_array_equal(
        got["susceptibilities"]["sus"].values, sus["susceptibilities"]["sus"].values
    )
    tree = xr.open_datatree(full, engine="zarr", consolidated=False)
    bif = xr.open_zarr(tmp_path / "llc.bif.zarr", consolidated=False)
    expected = compute_bif(tree, correlation_method="sequence")
    np.testing.assert_array_equal(bif["influences"].values, expected["influences"].values)


def test_a_store_reruns_from_its_recorded_settings(tmp_path, config, capsys):
    """Array task 0 of 2 writes chain 0; `sample --from-store` needs only the store to finish the run, and
    the result equals a run of the whole config. Credentials and the chain slice are not recorded."""
    from tests.test_sampling import tree_hash

    store = tmp_path / "run.zarr"
    assert main(["sample", str(config), "--array-task-id", "0", "--array-task-count", "2"]) == 0
    recorded = xr.open_datatree(store, engine="zarr", consolidated=False).attrs["distinterp"]["run_settings"]
    assert recorded["sampler"]["num_chains"] == 2
    assert not {"output_path", "storage_options", "array_task", "chains"} & set(recorded)
    config.unlink()  # the store alone
    assert main(["sample", "--from-store", str(store)]) == 0
    assert "2/2 chains complete" in capsys.readouterr().out

    whole = tmp_path / "whole.yaml"
    whole.write_text(yaml.safe_dump({**TINY, "output_path": str(tmp_path / "whole.zarr")}))
    assert main(["sample", str(whole)]) == 0
    assert tree_hash(store) == tree_hash(tmp_path / "whole.zarr")

    assert main(["sample", "--from-store", str(tmp_path / "nothing.zarr")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_weight_restriction_jobs_feed_susceptibilities(tmp_path, capsys):
    import numpy as np

    """Two CLI jobs (full, and weight_restriction l0h1) on the built-in tiny GPT-2, then `aggregate
    --susceptibilities`; a restriction the model does not have fails naming it, before any store exists."""
    cfg = {
        **TINY,
        "model": {"source": "builtin", "name": "tiny-gpt2"},
        "observables": {
            "train": {"source": "builtin", "name": "markov", "vocab_size": 3, "seq_len": 9},
            "probe": {"source": "builtin", "name": "markov", "vocab_size": 3, "seq_len": 9, "seed": 5},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_path": str(tmp_path / "full.zarr")}))
    assert main(["sample", str(path)]) == 0
    head = ["--set", "weight_restriction=l0h1", "--set", f"output_path={tmp_path / 'l0h1.zarr'}"]
    assert main(["sample", str(path), *head]) == 0
    capsys.readouterr()
    argv = ["aggregate", str(tmp_path / "full.zarr"), "--output", str(tmp_path / "llc.zarr")]
    assert (
        main([*argv, "--susceptibilities", f"l0h1={tmp_path / 'l0h1.zarr'}", "--sampling-task", "train"]) == 0
    )
    assert "susceptibilities" in capsys.readouterr().out
    sus = xr.open_datatree(tmp_path / "llc.susceptibilities.zarr", engine="zarr", consolidated=False)
    assert list(sus["susceptibilities"]["wr"].values) == ["l0h1"]
    assert np.isfinite(sus["susceptibilities"]["sus"].values).all()

    bad = ["--set", "weight_restriction=l7h0", "--set", f"output_path={tmp_path / 'bad.zarr'}"]
    assert main(["sample", str(path), *bad]) == 2
    assert "weight_restriction='l7h0': Layer 7 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()
