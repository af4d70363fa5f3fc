"""One chain sharded over an FSDP group (real torchrun, gloo, FSDP2): the same chain as unsharded with the
layout-invariant noise, every sampler option, 2 x 2 meshes, resume after a kill, and the engine contract
(resume, divergence agreed by every shard, masks, metrics, checkpoints) that serial and batched pass.
One 2-rank job makes every store these tests read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import distinterp
from distinterp.config import SamplerConfig
from distinterp.parallel.distributed import Runtime
from distinterp.parallel.plan import Plan, PlanError
from distinterp.parallel.sharded import ShardedEngine
from tests.conftest import tiny_gpt2
from tests.jobs import run
from tests.test_distributed import ROOT, descendants, finish
from tests.test_engine_contract import CASES, EngineContract, Stores
from tests.test_sampling import tree_hash

pytestmark = pytest.mark.distributed

OPTIONS = {
    "sampling_method": "rmsprop_sgld",
    "localization": 5.0,
    "llc_weight_decay": 0.01,
    "bounding_box_size": 0.05,
    "init_noise": 0.01,
    "save_metrics": True,
    "gradient_accumulation_steps": 2,
    "batch_size": 3,  # split 2 + 1 over the two shards
    "vocab_size": 33,  # the (33, 16) tied embedding is sharded 17 + 16 rows
    "num_chains": 2,
}
COMPARED = {
    "plain": {},
    "options": OPTIONS,
    "restricted": {"restriction": "l0h1", "save_metrics": True, "localization": 1.0, "init_noise": 0.01},
    "long": {"num_chains": 2, "num_draws": 60},
}
TWO_RANK = {
    **{name: {"fsdp_size": 2, **o} for name, o in COMPARED.items()},
    "dropout": {"fsdp_size": 2, "dropout": 0.1, "num_chains": 1},
    "dropout_again": {"fsdp_size": 2, "dropout": 0.1, "num_chains": 1},
    "refused_layout": {"into": "plain", "noise": "blocked"},  # the plain store, at fsdp_size=1
    "bad_noise": {"fsdp_size": 2, "noise": "devinterp"},
    "bad_batch": {"fsdp_size": 2, "batch_size": 1},
    "bad_size": {"fsdp_size": 4},
    **{f"contract_{case}": {"contract": case, "fsdp_size": 2} for case in CASES},
}


def launch(nproc: int, out: Path, cases: dict) -> subprocess.Popen:
    """tests.sharded_jobs on nproc real torchrun ranks (gloo, one thread each)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "tests.sharded_jobs", str(out), json.dumps(cases)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-rank job's stores (fsdp_size=2) beside the same runs unsharded (fsdp_size=1, blocked noise)."""
    out = tmp_path_factory.mktemp("sharded")
    proc = launch(2, out / "two", TWO_RANK)
    for name, o in COMPARED.items():
        run(str(out / "one" / f"{name}.zarr"), noise="blocked", **o)
    run(str(out / "one" / "dropout.zarr"), noise="blocked", dropout=0.1, num_chains=1)
    finish(proc)
    return out


def data(path: Path) -> xr.Dataset:
    return xr.open_datatree(path, engine="zarr", consolidated=False).dataset


@pytest.mark.parametrize("name", ["plain", "options", "restricted"])
def test_sharded_chain_equals_the_unsharded_one(stores: Path, name: str) -> None:
    """fsdp_size=2 and fsdp_size=1 with the layout-invariant noise: same inputs, losses within 1e-4."""
    one, two = data(stores / "one" / f"{name}.zarr"), data(stores / "two" / f"{name}.zarr")
    assert set(one.data_vars) == set(two.data_vars)
    for var in one.data_vars:
        a, b = one[var].values, two[var].values
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=var)
        else:
            np.testing.assert_array_equal(b, a, err_msg=var)
    if name != "plain":
        assert any(v.startswith("metrics_") for v in two.data_vars)
    assert json.loads(json.dumps(two.attrs["distinterp"]["identity"]["layout"]))["fsdp_size"] == 2


def test_long_run_llc_agrees_within_the_chain_spread(stores: Path) -> None:
    one = distinterp.compute_llc(
        xr.open_datatree(stores / "one" / "long.zarr", engine="zarr", consolidated=False)
    )
    two = distinterp.compute_llc(
        xr.open_datatree(stores / "two" / "long.zarr", engine="zarr", consolidated=False)
    )
    spread = float(one.llc_per_chain.std())
    assert abs(float(one.llc_mean) - float(two.llc_mean)) < max(spread, 1e-6)
    np.testing.assert_allclose(two.llc_per_chain.values, one.llc_per_chain.values, rtol=1e-3)


def test_dropout_is_reproducible_for_a_layout_but_not_layout_invariant(stores: Path) -> None:
    """Dropout masks come from each shard's own stream: the same layout repeats bitwise, another differs."""
    assert tree_hash(stores / "two" / "dropout.zarr") == tree_hash(stores / "two" / "dropout_again.zarr")
    one, two = data(stores / "one" / "dropout.zarr"), data(stores / "two" / "dropout.zarr")
    np.testing.assert_array_equal(two.init_loss.values, two.init_loss.values)
    assert not np.allclose(one.sampling_loss.values, two.sampling_loss.values, rtol=1e-4)


class TestShardedEngine(EngineContract):
    """The engine contract with fsdp_size=2: every case was made by the module's one 2-rank job."""

    @pytest.fixture
    def contract(self, stores: Path) -> Stores:
        def made(case: str) -> Path:
            error = stores / "two" / f"contract_{case}.error"
            assert not error.exists(), error.read_text()
            return stores / "two" / f"contract_{case}"

        return made


def test_bad_layouts_are_refused_clearly(stores: Path) -> None:
    def error(name: str) -> str:
        return (stores / "two" / f"{name}.error").read_text()

    assert "StoreConfigMismatch" in error("refused_layout") and "fsdp_size" in error("refused_layout")
    assert "noise='devinterp' with fsdp_size=2" in error("bad_noise")
    assert "batch_size=1 < fsdp_size=2" in error("bad_batch")
    assert "fsdp_size=4 must divide the world size 2" in error("bad_size")
    with pytest.raises(PlanError, match="batch_size=2 < fsdp_size=4"):
        plan = Plan.build(Runtime(0, 4), 2, fsdp_size=4)
        ShardedEngine.working_model(
            tiny_gpt2(), {}, SamplerConfig(lr=1e-3, n_beta=1.0, batch_size=2), None, plan
        )  # type: ignore[arg-type]


@pytest.mark.slow
def test_two_chain_groups_write_the_same_stores(stores: Path, tmp_path: Path) -> None:
    """A 2 x 2 mesh (4 ranks: 2 chain groups of 2 shards) writes byte-identical stores to 1 group of 2."""
    cases = {name: TWO_RANK[name] for name in ("plain", "options")}
    finish(launch(4, tmp_path, cases))
    for name in cases:
        assert tree_hash(tmp_path / f"{name}.zarr") == tree_hash(stores / "two" / f"{name}.zarr"), name


@pytest.mark.slow
def test_one_shard_killed_mid_chain_resumes_bitwise(stores: Path, tmp_path: Path) -> None:
    """SIGKILL one rank of a sharded chain after a complete checkpoint; the rerun continues it mid-way and
    writes the same bytes as the uninterrupted run of the same layout."""
    cases = {"long": {**TWO_RANK["long"], "checkpoint_every": 50}}
    ckpts = tmp_path / "long.zarr.checkpoints"

    def complete_step() -> bool:
        names = [p.name.split(".shard_")[0] for p in ckpts.glob("chain_*/step_*.shard_*_of_2.pt")]
        return any(names.count(n) == 2 for n in names)

    proc = launch(2, tmp_path, cases)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not complete_step():
        time.sleep(0.02)
    workers = [
        p for p in descendants(proc.pid) if b"tests.sharded_jobs" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert workers and proc.poll() is None, "the job ended before a checkpoint was complete"
    os.kill(workers[-1], signal.SIGKILL)
    proc.communicate(timeout=60)
    (tmp_path / "long.error").unlink(missing_ok=True)  # the survivor's error when its peer died
    log = finish(launch(2, tmp_path, cases))
    assert "continues from its checkpoint at step" in log, log[-3000:]
    assert not (tmp_path / "long.error").exists()
    assert tree_hash(tmp_path / "long.zarr") == tree_hash(stores / "two" / "long.zarr")
    assert not ckpts.exists()
