"""The `distinterp` command: sample (subprocess, in-process), status, aggregate, demo, user errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml

from distinterp.jobs.cli import main, parser

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


def cli(
    *args: str, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m distinterp ARGS` in a fresh process (no torchrun variables inherited), with `env` added."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DISTINTERP_", "SLURM_ARRAY_"))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environ.pop(name, None)
    environ.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "distinterp", *args],
        cwd=cwd,
        env=environ,
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
        (["report", "{tmp}/nowhere.zarr"], "no store at"),  # issue 19 item 6: no raw [Errno 2]
        (["inspect", "{tmp}/nowhere.zarr"], "no store at"),
        (["trajectory", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
        (["calibrate", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
        (["aggregate", "{tmp}/nowhere.zarr", "--storage-options", "{{bad"], "--storage-options"),
    ],
)
def test_user_errors_exit_2_with_one_message(tmp_path, config, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, config=config) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Errno" not in err, err
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

    # defect 5: an error every rank hits (the store holds V=3) is printed once, without torchrun's report
    res = cli("demo", "--vocab", "4", "--output", str(store), cwd=tmp_path, timeout=400)
    assert res.returncode == 2
    assert res.stderr.count("distinterp demo: ") == 1 and "has a different sampler config" in res.stderr
    assert "Traceback" not in res.stderr and "ChildFailedError" not in res.stderr, res.stderr


def interrupt_while_sampling(args: list[str], store: Path, cwd: Path, wait_s: float) -> tuple[int, list[str]]:
    """Start `python ARGS` in its own process group, SIGINT the group (a terminal's Ctrl-C) once `store`
    is sampling, and return (exit status, stderr's lines but the progress bar's)."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + wait_s
        while not (store / "chain_steps_done" / "zarr.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # sampling
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, [line for line in err.splitlines() if line.strip() and "SGLD steps" not in line]


@pytest.mark.distributed
def test_ctrl_c_under_torchrun_is_one_line(tmp_path):
    """Defect 5: Ctrl-C (SIGINT to the terminal's process group) while 2 ranks sample: one line, exit 130,
    no tracebacks (was 75-200 lines from every process)."""
    store = tmp_path / "demo.zarr"
    code, lines = interrupt_while_sampling(
        ["-m", "distinterp", "demo", "--output", str(store)], store, tmp_path, 300
    )
    assert code == 130, lines
    assert lines == [
        "distinterp demo: interrupted; rerun the same command to continue (complete chains are kept)"
    ], lines


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


# ─── issue 12: jobs from local sources, and every rough edge a new user hit ────────────────────────────


def test_set_takes_several_pairs_and_verbose_goes_anywhere(tmp_path, config, capsys):
    """Defects 1, 3 and 8 (`sample STORE`): the README's `--set a=… b=…`, then -v after it; the store alone
    continues the run."""
    argv = ["sample", str(config), "--set", "array_task.task_id=0", "array_task.task_count=2", "-v"]
    assert main(argv) == 0
    assert "1/2 chains complete" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "run.zarr")]) == 0  # a store given as CONFIG: --from-store
    assert "2/2 chains complete" in capsys.readouterr().out
    for argv in (["-v", "status", "x"], ["status", "x", "-v"], ["status", "-v", "x"]):
        assert parser().parse_args(argv).verbose is True
    assert parser().parse_args(["status", "x"]).verbose is False
    assert main(["sample", "--set", "sampler.lr=1", str(config)]) == 2
    assert "give CONFIG before --set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("/proc/x.zarr", "cannot create it under /proc"),
        ("/sys/x.zarr", "cannot create it under /sys"),
        ("{config}/x.zarr", "is a file, not a directory"),
    ],
)
def test_unwritable_output_paths_are_one_line(tmp_path, config, capsys, output, message):
    """Defect 2: checked before any work; one line naming output_path and the fix."""
    output = output.format(config=config)
    assert main(["sample", str(config), "--set", f"output_path={output}"]) == 2
    err = capsys.readouterr().err
    assert f"output_path={output!r}: " in err and message in err and "choose" in err, err
    assert len(err.splitlines()) == 2 and "Traceback" not in err


def test_unloadable_models_name_the_setting(tmp_path, config, capsys):
    """Defect 2: a missing directory, an uncached hub id: one line naming model.name and the fix."""
    assert main(["sample", str(config), "--set", "model={source: hf, name: /no/model}"]) == 2
    assert "model.name='/no/model': no such directory" in capsys.readouterr().err
    assert main(["sample", str(config), "--set", "model={source: hf, name: nobody/uncached}"]) == 2
    err = capsys.readouterr().err
    assert "model.name='nobody/uncached': cannot load it" in err and "local cache" in err
    assert len(err.splitlines()) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vocab", "1"], "--vocab: need at least 2 symbols, got 1"),
        (["--nproc", "0"], "--nproc: need at least 1 rank, got 0"),
        (["--output", "/proc/y.zarr"], "--output='/proc/y.zarr': cannot create it under /proc"),
    ],
)
def test_demo_validates_before_launching_workers(capsys, argv, message):
    """Defect 4: one message, exit 2, no torchrun."""
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distinterp demo: {message}") and len(err.splitlines()) == 2, err


def test_version_help_texts_and_status_exit_codes(capsys):
    """Defect 8: --version; every option of every command has a help text; status documents its exit codes."""
    from distinterp import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"distinterp {__version__}"
    p = parser()
    commands = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"demo", "sample", "llc", "bif", "susceptibilities", "aggregate", "status"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert "0 every chain is complete; 1 chains are still to run" in commands["status"].format_help()


def test_aggregate_writes_beside_the_store_and_checks_the_sampling_task(tmp_path, capsys):
    """Defect 6: --bif without --output goes beside the store (and says so); .nc works (scipy); no zarr
    FixedLengthUTF32 warning; --sampling-task must be an observable, defaults to the sampled data, and a
    probe instead is said."""
    import distinterp
    from tests.conftest import SMALL, tiny_gpt2, token_dataset

    ds, probe = token_dataset(), token_dataset(rows=16, seed=2)
    distinterp.susceptibilities(
        tiny_gpt2(),
        ds,
        {"train": ds, "probe": probe},
        {"full": None, "l0h0": "l0h0"},
        sampling_task="train",
        output_path=str(tmp_path / "s.zarr"),
        **{**SMALL, "num_chains": 2, "num_draws": 3},
    )
    full, head = str(tmp_path / "s_full.zarr"), f"l0h0={tmp_path / 's_l0h0.zarr'}"
    assert main(["aggregate", full, "--bif", "sequence"]) == 0
    assert f"-> {tmp_path / 's_full.bif.zarr'}" in capsys.readouterr().out
    assert xr.open_zarr(tmp_path / "s_full.bif.zarr", consolidated=False)["influences"].size > 0

    assert main(["aggregate", full, "--output", str(tmp_path / "llc.nc"), "--susceptibilities", head]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err, err  # no FixedLengthUTF32, and the default sampling task is 'train'
    assert float(xr.open_dataset(tmp_path / "llc.nc").llc_mean) == pytest.approx(
        float(distinterp.compute_llc(xr.open_datatree(full, engine="zarr", consolidated=False)).llc_mean)
    )
    sus = xr.open_datatree(tmp_path / "llc.susceptibilities.zarr", engine="zarr", consolidated=False)
    assert list(sus["susceptibilities"]["wr"].values) == ["l0h0"]

    assert main(["aggregate", full, "--susceptibilities", head, "--sampling-task", "code"]) == 2
    assert "--sampling-task 'code': not an observable of this store; its observables: ['train', 'probe']" in (
        capsys.readouterr().err
    )
    with warnings.catch_warnings():  # as a user sees it: main() prints each warning on one line
        warnings.simplefilter("default")
        assert main(["aggregate", full, "--susceptibilities", head, "--sampling-task", "probe"]) == 0
    assert (
        "warning: --sampling-task 'probe': the chains sampled on the data of ['train']"
        in capsys.readouterr().err
    )
    assert main(["aggregate", full, "--susceptibilities", "l0h0"]) == 2
    assert "expected NAME=STORE" in capsys.readouterr().err


def test_bad_s3_endpoint_fails_fast_in_one_line(tmp_path, config):
    """Defect 7: a loopback port where nothing listens: one line naming the store and endpoint, in seconds
    (was 64 s of silence, then ~95 lines of 'Exception ignored in <coroutine ...>')."""
    import time

    from distinterp.store import Location, StoreError, check_reachable
    from tests.fixtures import free_ports

    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    options = f"storage_options={{key: k, secret: s, client_kwargs: {{endpoint_url: '{endpoint}'}}}}"
    res = cli("sample", str(config), "--set", "output_path=s3://bucket/run.zarr", options, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert f"s3://bucket/run.zarr: cannot reach it at {endpoint}" in res.stderr
    assert len(res.stderr.splitlines()) == 2 and "Exception ignored" not in res.stderr, res.stderr
    start = time.perf_counter()
    location = Location(
        "s3://bucket/run.zarr", {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
    )
    with pytest.raises(StoreError, match="cannot reach it"):
        check_reachable(location)
    assert time.perf_counter() - start < 15  # ~1 s here; botocore's standard retries took 64 s


def test_docs_license_and_restriction_paths():
    """Defects 9 and 10: susceptibilities' files and the (dataset, batches_per_draw) form are documented;
    LICENSE is MIT as pyproject says; the README says the docker image is untested."""
    from distinterp.analyses.susceptibilities import restriction_path, susceptibilities

    assert restriction_path("sus.zarr", "l0h1") == Path("sus_l0h1.zarr")
    assert "sus_full.zarr" in susceptibilities.__doc__ and "sus_l0h1.zarr" in susceptibilities.__doc__
    readme = (ROOT / "README.md").read_text()
    assert "sus_l0h1.zarr" in readme and "(dataset, batches_per_draw)" in readme
    assert "untested" in readme[readme.index("docker compose") - 400 :][:1200]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_bif_and_susceptibilities_jobs(tmp_path, capsys):
    """`distinterp bif CONFIG` and `distinterp susceptibilities CONFIG`: sample, then the analysis; the
    results equal the analyses run on the stores they wrote."""
    import numpy as np

    from distinterp.analyses.bif import compute_bif
    from distinterp.analyses.susceptibilities import compute_susceptibilities

    cfg = {
        **TINY,
        "model": {"source": "builtin", "name": "tiny-gpt2"},
        "observables": {
            "train": {"source": "builtin", "name": "markov", "vocab_size": 3, "seq_len": 9, "num_rows": 32},
            "probe": {"source": "builtin", "vocab_size": 3, "seq_len": 9, "seed": 5, "num_rows": 8},
        },
        "bif": {"correlation_method": "sequence"},
        "susceptibilities": {"restrictions": {"l0h1": "l0h1"}},
        "output_path": str(tmp_path / "run.zarr"),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["bif", str(path)]) == 0
    out = capsys.readouterr().out
    assert "BIF {" in out and "2/2 chains complete" in out
    assert f"-> {tmp_path / 'run.bif.zarr'}" in out
    tree = xr.open_datatree(tmp_path / "run.zarr", engine="zarr", consolidated=False)
    got = xr.open_zarr(tmp_path / "run.bif.zarr", consolidated=False)["influences"].values
    np.testing.assert_array_equal(got, compute_bif(tree, correlation_method="sequence")["influences"].values)

    assert main(["susceptibilities", str(path)]) == 0
    assert f"-> {tmp_path / 'run.susceptibilities.zarr'}" in capsys.readouterr().out
    stores = {
        n: xr.open_datatree(tmp_path / f"run_{n}.zarr", engine="zarr", consolidated=False)
        for n in ("full", "l0h1")
    }
    expected = compute_susceptibilities(stores, "train")
    got = xr.open_datatree(tmp_path / "run.susceptibilities.zarr", engine="zarr", consolidated=False)
    np.testing.assert_array_equal(
        got["susceptibilities"]["sus"].values, expected["susceptibilities"]["sus"].values
    )

    assert main(["susceptibilities", str(path), "--set", "susceptibilities.sampling_task=code"]) == 2
    assert "susceptibilities.sampling_task='code': not one of the observables ['probe', 'train']" in (
        capsys.readouterr().err
    )


def _hub_cache(root: Path, repo: str, revisions: dict[str, torch.nn.Module], tokenizer) -> Path:
    """A HuggingFace hub cache holding `repo` at each revision (refs/<rev> -> a snapshot), built locally."""
    cache = root / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    for i, (rev, model) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        snapshot = repo_dir / "snapshots" / commit
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / rev).write_text(commit)
    return cache


def test_llc_job_from_a_cached_hub_revision_and_a_text_file(tmp_path):
    """`distinterp llc CONFIG` in a fresh process: model = a hub id at a revision from the local cache (no
    network), data = a text file tokenized with the model's tokenizer to a fixed context."""
    from distinterp import toy
    from distinterp.sampling import model_fingerprint
    from tests.conftest import TEXTS, word_tokenizer

    tok = word_tokenizer()
    old, new = (toy.tiny_gpt2(vocab_size=len(tok), n_positions=16, seed=s) for s in (1, 2))
    cache = _hub_cache(tmp_path, "lab/tiny", {"step1": old, "main": new}, tok)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 3) + "\n")
    cfg = {
        **TINY,
        "model": {"source": "hf", "name": "lab/tiny", "revision": "step1"},
        "dataset": {"source": "text", "name": str(tmp_path / "corpus.txt"), "context_length": 8},
        "output_path": str(tmp_path / "run.zarr"),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    res = cli("llc", "job.yaml", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LLC mean" in res.stdout and "2/2 chains complete" in res.stdout
    tree = xr.open_datatree(tmp_path / "run.zarr", engine="zarr", consolidated=False)
    assert tree.attrs["distinterp"]["identity"]["model"] == model_fingerprint(old) != model_fingerprint(new)
    assert tree.dataset.sizes["token_pos"] == 7  # context 8: 7 next-token losses
