"""sweep(): a 3-checkpoint x 2-head x 2-dataset grid; every cell equals a standalone sample() of it; 2
torchrun ranks (sharing a cell, each running its chains alone) plus array tasks write the reference's
bytes; a killed grid resumes; a changed axis is refused before anything is written; a failing rank stops
every rank; a finished grid loads no checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import distinterp
from distinterp.jobs.grid import cell_label, expand_restrictions, sweep
from distinterp.jobs.sweep import RECORD, aggregate_sweep
from distinterp.masks import create_param_masks
from distinterp.store import Location, StoreConfigMismatch, open_tree
from tests.conftest import tiny_gpt2, token_dataset
from tests.sweep_job import HEADS, OPTS, STEPS, checkpoint, datasets, run
from tests.test_distributed import PYTHONPATH, ROOT, finish, kill_tree, torchrun
from tests.test_sampling import tree_hash

JOB = "tests.sweep_job"
CELLS = [(step, head, name) for step in STEPS for head in ("l0h0", "l0h1") for name in ("a", "b")]


def label(step: int, head: str, name: str) -> str:
    return cell_label({"checkpoint": step, "restriction": head, "dataset": name})


def hashes(root: Path) -> dict[str, str]:
    return {label(*c): tree_hash(root / f"{label(*c)}.zarr") for c in CELLS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The whole grid in this process."""
    root = tmp_path_factory.mktemp("grid") / "ref"
    table = run(str(root))
    assert table is not None
    return root


def test_every_cell_equals_a_standalone_sample(reference, tmp_path):
    """Cell (checkpoint, head, dataset) is byte for byte sample() of that checkpoint, with that head's
    masks, on that dataset; the aggregate has a dim per axis with the user's labels."""
    data = datasets()
    for step, head, name in CELLS:
        model = checkpoint(step)
        out = tmp_path / f"{label(step, head, name)}.zarr"
        distinterp.sample(
            model,
            data[name],
            {"train": data["a"]},
            param_masks=create_param_masks(model, head),
            output_path=str(out),
            **OPTS,
        )
        assert tree_hash(out) == tree_hash(reference / out.name), out.name
    table = aggregate_sweep(str(reference))
    assert table.llc_mean.dims == ("checkpoint", "restriction", "dataset")
    assert list(table.checkpoint.values) == ["0", "10", "200"] and list(table.step.values) == [0, 10, 200]
    assert list(table.restriction.values) == ["l0h0", "l0h1"] and list(table.dataset.values) == ["a", "b"]
    assert table.llc_per_chain.sizes["chain"] == 3 and table.attrs["kind"] == "sweep"
    one = distinterp.compute_llc(open_tree(Location(str(tmp_path / f"{label(10, 'l0h1', 'b')}.zarr"))))
    np.testing.assert_array_equal(
        table.llc_per_chain.sel(checkpoint="10", restriction="l0h1", dataset="b").values,
        one.llc_per_chain.values,
    )
    record = json.loads((reference / RECORD).read_text())
    assert record["version"] == 2 and record["restrictions"] == {"l0h0": "l0h0", "l0h1": "l0h1"}
    assert [a[0] for a in record["axes"]] == ["checkpoint", "restriction", "dataset"]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_and_array_tasks_write_the_reference(reference, tmp_path):
    """Array task 0 of 4 on 2 torchrun ranks (9 pairs: 5 and 4, one cell shared) while tasks 1-3 run in
    this process: the reference's bytes. Each rank loads each checkpoint it runs once. In the same
    launch, a grid whose loader fails on rank 1 stops both ranks, rank 0 naming rank 1 and the error, and
    a grid with fsdp_size 2 runs each cell over both ranks, equal to the standalone sharded sample()."""
    root = tmp_path / "grid"
    proc = torchrun(2, root, {"launch": True}, module=JOB)
    for task in range(1, 4):
        run(str(root), array_task=[task, 4])
    finish(proc)
    assert hashes(root) == hashes(reference)
    assert [json.loads((tmp_path / f"grid.solo-{r}").read_text()) for r in (0, 1)] == [
        [0, 1, True],
        [0, 1, False],
    ]
    loads = (tmp_path / "grid.loads").read_text().split("\n")
    assert sorted(x for x in loads if x) == ["0 0", "1 0"], loads  # block 0: cells of checkpoint 0 only
    assert (tmp_path / "grid.fail-1").read_text() == "RuntimeError: checkpoint 0 is corrupt on this node"
    assert (tmp_path / "grid.fail-0").read_text().startswith("SweepError: rank 1 failed while sampling")
    assert "checkpoint 0 is corrupt" in (tmp_path / "grid.fail-0").read_text()
    table = aggregate_sweep(str(root))
    assert table.llc_per_chain.equals(aggregate_sweep(str(reference)).llc_per_chain)
    cell = tmp_path / "grid.fsdp" / "checkpoint=model+lr=0.002.zarr"  # fsdp_size 2: the collective path
    assert tree_hash(cell) == tree_hash(tmp_path / "grid.fsdp-alone.zarr")
    assert aggregate_sweep(str(tmp_path / "grid.fsdp")).llc_mean.dims == (
        "checkpoint",
        "restriction",
        "dataset",
        "lr",
    )


@pytest.mark.slow
def test_killed_grid_resumes_to_the_reference(reference, tmp_path):
    """SIGKILL a grid once its first cells are written (`distinterp status ROOT` exits 1); the rerun
    finishes it with the same bytes (status 0)."""
    root = tmp_path / "killed"
    env = {"PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", JOB, str(root), json.dumps({"sleep": 0.5})],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(list(root.glob("*.zarr"))) < 2:
        time.sleep(0.02)
    kill_tree(proc)
    done = [p for p in root.glob("*.zarr") if zarr.open_group(str(p), mode="r").attrs.get("completed") == 1]
    assert len(list(root.glob("*.zarr"))) > 0 and len(done) < len(CELLS), "the kill did not land mid-grid"
    from distinterp.jobs.cli import main

    assert main(["status", str(root)]) == 1  # the root's stores, the unfinished ones named
    assert run(str(root)) is not None
    assert hashes(root) == hashes(reference)
    assert main(["status", str(root)]) == 0


def test_finished_grid_loads_nothing_and_changed_axes_are_refused(reference, tmp_path):
    """A rerun of the finished grid loads no checkpoint; another dataset, head list or setting is refused
    naming it, with the root untouched; bad input is refused before a byte is written."""
    loads = tmp_path / "loads"
    again = run(str(reference), loads=str(loads))
    assert not loads.exists() or loads.read_text() == ""
    assert again is not None and again.llc_mean.equals(aggregate_sweep(str(reference)).llc_mean)
    before = tree_hash(reference)
    data = datasets()
    models = {s: checkpoint(s) for s in STEPS}
    with pytest.raises(StoreConfigMismatch, match="labels"):
        sweep(models, data["a"], {"train": data["a"]}, output_path=str(reference), restrictions=HEADS,
              datasets={**data, "c": token_dataset(seed=3)}, **OPTS)  # fmt: skip
    with pytest.raises(StoreConfigMismatch, match=r"lr: stored=0.001, current=0.002"):
        sweep(models, data["a"], {"train": data["a"]}, output_path=str(reference), restrictions=HEADS,
              datasets=data, **{**OPTS, "lr": 2e-3})  # fmt: skip
    assert tree_hash(reference) == before
    fresh = tmp_path / "bad"
    with pytest.raises(TypeError, match="'lrr'"):
        sweep(models, data["a"], output_path=str(fresh), grid={"lrr": [1e-3]}, **OPTS)
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['X'\]"):
        sweep(models, data["a"], output_path=str(fresh), restrictions={"l{X}": "l{X}"}, **OPTS)
    with pytest.raises(ValueError, match=r"restrictions\['late'\]: restriction 'l5h0': .*l0 to l0"):
        sweep(models, data["a"], output_path=str(fresh), restrictions={"late": "l5h0"}, **OPTS)
    with pytest.raises(ValueError, match="restriction name 'l0 mlp'"):
        sweep(models, data["a"], output_path=str(fresh), restrictions={"l0 mlp": "l0 mlp"}, **OPTS)
    assert not fresh.exists()


def test_sampler_grid_and_generators(tmp_path):
    """A bare model and a sampler grid: cells named by the axes given, one dim per grid field; the
    generators expand to every layer / head of the model."""
    torch.manual_seed(0)
    model = tiny_gpt2(seed=3)
    ds = token_dataset()
    out = sweep(model, ds, output_path=str(tmp_path / "g"), grid={"lr": [1e-3, 2e-3]}, **OPTS)
    assert out is not None and out.llc_mean.dims == ("checkpoint", "restriction", "dataset", "lr")
    assert list(out.lr.values) == [1e-3, 2e-3] and list(out.checkpoint.values) == ["model"]
    assert (tmp_path / "g" / "checkpoint=model+lr=0.002.zarr").is_dir()
    alone = distinterp.sample(model, ds, {}, output_path=str(tmp_path / "a.zarr"), **{**OPTS, "lr": 2e-3})
    assert alone is not None
    assert tree_hash(tmp_path / "a.zarr") == tree_hash(tmp_path / "g" / "checkpoint=model+lr=0.002.zarr")
    two = tiny_gpt2(seed=0)
    assert expand_restrictions({"l{L}": "l{L}"}, lambda: two) == {"l0": "l0"}
    assert expand_restrictions({"L{L}H{H}": "l{L}h{H}", "all": None}, lambda: two) == {
        "L0H0": "l0h0",
        "L0H1": "l0h1",
        "all": None,
    }
    with pytest.raises(ValueError, match="same placeholders"):
        expand_restrictions({"l{L}h{H}": "l0h1"}, lambda: two)


def test_cli_sweep_cells_equal_distinterp_sample_and_trajectory_takes_a_restriction(tmp_path, capsys):
    """`distinterp sweep CONFIG`: 2 state-dict checkpoints x every head, parallel.chains_per_batch
    honoured; a cell's store equals `distinterp sample` of it with that weight_restriction (same recorded
    settings). weight_restriction is refused by name for a sweep, and honoured by calibrate and trajectory."""
    import yaml

    from distinterp import toy
    from distinterp.jobs.cli import main
    from tests.test_cli import TINY

    for step in (20, 300):
        torch.save(toy.tiny_gpt2(vocab_size=3, seed=step).state_dict(), tmp_path / f"step{step}.pt")
    root = tmp_path / "grid"
    config = {
        **TINY,
        "model": {"name": "tiny-gpt2"},
        "checkpoints": {"state_dicts": str(tmp_path / "step*.pt")},
        "restrictions": {"l{L}h{H}": "l{L}h{H}"},
        "parallel": {"chains_per_batch": 2},
        "output_path": str(root),
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(config))
    assert main(["sweep", str(tmp_path / "g.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [
        f"checkpoint={c},restriction={h}" for c in ("step20", "step300") for h in ("l0h0", "l0h1")
    ], lines
    assert lines[-1] == f"wrote {root}.sweep.zarr"  # the table, as sweep() returned it on rank 0
    table = xr.open_zarr(f"{root}.sweep.zarr", consolidated=False)
    assert dict(table.llc_mean.sizes) == {"checkpoint": 2, "restriction": 2, "dataset": 1}
    cell = root / "checkpoint=step300+restriction=l0h1.zarr"
    assert json.loads((cell / "zarr.json").read_text())["attributes"]["distinterp"]["numerics"]["engine"] == (
        "batched"
    )
    alone = {k: v for k, v in config.items() if k not in ("checkpoints", "restrictions")}
    alone |= {"model": {"name": "tiny-gpt2", "state_dict": str(tmp_path / "step300.pt")}}
    alone |= {"weight_restriction": "l0h1", "output_path": str(tmp_path / "alone.zarr")}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(alone))
    assert main(["sample", str(tmp_path / "s.yaml")]) == 0
    assert tree_hash(cell) == tree_hash(tmp_path / "alone.zarr")
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "g.yaml"), "--set", "weight_restriction=l0h1"]) == 2
    assert "weight_restriction: a sweep job sets its own per cell" in capsys.readouterr().err
    cal = {k: v for k, v in alone.items() if k != "weight_restriction"} | {"weight_restriction": "l0h1"}
    cal |= {"output_path": str(tmp_path / "cal"), "grid": {"lr": [1e-3]}, "scale_draws": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cal))
    assert main(["calibrate", str(tmp_path / "c.yaml")]) == 0  # every cell samples head l0h1 only
    attrs = json.loads((tmp_path / "cal" / "lr=0.001.zarr" / "zarr.json").read_text())["attributes"]
    assert (
        attrs["distinterp"]["identity"]["param_masks"]
        == json.loads((tmp_path / "alone.zarr" / "zarr.json").read_text())["attributes"]["distinterp"][
            "identity"
        ]["param_masks"]
    )
    traj = {k: v for k, v in config.items() if k != "restrictions"} | {"weight_restriction": "l0h1"}
    traj["output_path"] = str(tmp_path / "traj")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(traj))
    assert main(["trajectory", str(tmp_path / "t.yaml")]) == 0
    assert tree_hash(tmp_path / "traj" / "step300.zarr") == tree_hash(tmp_path / "alone.zarr")


def test_pairs_are_balanced_over_ranks_whatever_the_chains_per_cell():
    """4 cells x 3 chains over 2 ranks: 6 pairs each (a store-at-a-time split would give rank 0 eight
    chains and rank 1 four); blocks stay contiguous, so a checkpoint's cells stay together on a rank."""
    from distinterp.jobs.sweep import by_label, share

    pairs = [(cell, c) for cell in "abcd" for c in range(3)]
    ranks = [by_label(share(pairs, (r, 2))) for r in range(2)]
    assert ranks == [[("a", (0, 1, 2)), ("b", (0, 1, 2))], [("c", (0, 1, 2)), ("d", (0, 1, 2))]]
    three = [sum(len(c) for _, c in by_label(share(pairs[:9], (r, 2)))) for r in range(2)]
    assert three == [5, 4] and by_label(share(pairs[:9], (1, 2)))[0] == ("b", (2,))


def test_a_store_whose_creator_died_between_an_array_folder_and_its_metadata_resumes(tmp_path):
    """A kill between an array's folder and its zarr.json (as a killed grid can leave): the rerun
    recreates that array instead of failing on zarr's warning about the unknown folder."""
    import shutil

    ds = token_dataset()
    out = tmp_path / "a.zarr"
    distinterp.sample(tiny_gpt2(), ds, {}, output_path=str(out), **OPTS)
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"]["completed"]
    (out / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(out / "sampling_input_ids_micro")
    (out / "sampling_input_ids_micro").mkdir()
    distinterp.sample(tiny_gpt2(), ds, {}, output_path=str(out), **OPTS)
    assert (out / "sampling_input_ids_micro" / "zarr.json").is_file()
    assert json.loads((out / "zarr.json").read_text())["attributes"]["completed"] == 1


def test_cli_sweep_writes_its_table_and_the_susceptibility_vectors(tmp_path, capsys):
    """`distinterp sweep` with analyses llc, susceptibilities and bif writes what sweep() returns on rank 0
    beside the root (`<root>.sweep.zarr`: LLC, BIF summaries, susceptibility table) and the token x
    component vectors (`<root>.token_vectors.zarr`, token ids as text: the built-in model has no tokenizer);
    the vectors equal write_susceptibility_vectors' of the same table."""
    import yaml

    from distinterp.analyses.grid import open_susceptibility_vectors, write_susceptibility_vectors
    from distinterp.jobs.cli import main
    from tests.test_cli import TINY

    root = tmp_path / "grid"
    config = {
        **TINY,
        "model": {"name": "tiny-gpt2"},
        "restrictions": {"full": None, "l0h0": "l0h0"},
        "analyses": ["llc", "susceptibilities", "bif"],
        "output_path": str(root),
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(config))
    assert main(["sweep", str(tmp_path / "g.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"wrote {root}.sweep.zarr", f"wrote {root}.token_vectors.zarr"], lines
    table = xr.open_zarr(f"{root}.sweep.zarr", consolidated=False).load()
    assert {"llc_mean", "bif_mean", "susceptibility"} <= set(table.data_vars)
    vectors = open_susceptibility_vectors(str(root)).load()
    assert vectors.vectors.dims == ("token", "component") and list(vectors.component.values) == [
        "checkpoint=model+dataset=default+restriction=l0h0"
    ], vectors.component.values
    again = tmp_path / "again"
    shutil.copytree(root, again)
    write_susceptibility_vectors(str(again), table)
    np.testing.assert_array_equal(
        open_susceptibility_vectors(str(again)).vectors.values, vectors.vectors.values
    )
