"""Integrity of stored data: a damaged chunk fails on read, is named by chain and draws, and a rerun of
that chain repairs the store byte for byte; damaged checkpoints are skipped; S3 read errors are one line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import distinterp
from distinterp.checkpoint import ChainCheckpoint, CheckpointStore
from distinterp.integrity import (
    DamagedCheckpoint,
    DamagedStoreError,
    covers,
    draws_before,
    expected,
    seal,
    store_locations,
    unseal,
    verify,
)
from distinterp.jobs.cli import main
from distinterp.store import STEPS_DONE, Location
from tests.conftest import SMALL, devinterp_sample
from tests.fixtures.s3 import S3Server
from tests.test_sampling import tree_hash


def damage(chunk: Path) -> None:
    """Flip 8 bytes in the middle of a chunk, size unchanged (as bit rot or a bad copy leaves it)."""
    data = bytearray(chunk.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    chunk.write_bytes(bytes(data))


def test_what_a_chunk_covers_and_whether_it_must_exist() -> None:
    dims, shape, chunks = ("chain", "draw", "batch", "token_pos"), (4, 120, 2, 8), (1, 50, 2, 8)
    assert covers(dims, shape, chunks, (3, 2, 0, 0)) == (3, "chain 3, draws 100-119")
    assert covers(("batch_train", "token"), (5, 9), (5, 9), (0, 0)) == (
        None,
        "the whole array (shared by every chain)",
    )
    assert draws_before(10, burnin=2, every=2, num_draws=100) == 4  # draws at steps 2, 4, 6, 8
    sampler = {"num_burnin_steps": 0, "num_steps_bw_draws": 1}
    progress = {0: 120, 1: 50, 2: 0}
    assert expected("sampling_loss", dims, shape, chunks, (0, 2, 0, 0), progress, sampler)
    assert expected("sampling_loss", dims, shape, chunks, (1, 0, 0, 0), progress, sampler)
    assert not expected("sampling_loss", dims, shape, chunks, (1, 1, 0, 0), progress, sampler)
    assert not expected("init_loss", ("chain", "token_pos"), (4, 8), (1, 8), (2, 0), progress, sampler)
    assert not expected(STEPS_DONE, ("chain",), (4,), (1,), (2,), progress, sampler)


def test_damaged_chunk_is_named_and_a_rerun_of_its_chain_repairs_the_store(model, dataset, tmp_path) -> None:
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    before = tree_hash(out)
    assert verify(Location(str(out))).problems == []
    damage(out / "sampling_loss_micro" / "c" / "1" / "0" / "0" / "0")
    with pytest.raises(RuntimeError, match="checksum"):  # zarr itself refuses the chunk: no numbers
        zarr.open_array(out / "sampling_loss_micro", mode="r")[1]
    (out / "init_loss" / "c" / "2" / "0").unlink()
    result = verify(Location(str(out)))
    assert [p.line() for p in result.problems] == [
        "missing init_loss chunk 2/0: chain 2 (not in the store)",
        "damaged sampling_loss_micro chunk 1/0/0/0: chain 1, steps 0-5 (checksum mismatch)",
    ]
    with pytest.raises(ValueError, match=r"rerun_chains: \[3\] out of range"):
        distinterp.sample(model, dataset, {"train": dataset}, output_path=out, rerun_chains=[3], **SMALL)
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, rerun_chains=[1, 2], **SMALL)
    assert tree_hash(out) == before  # exactly those chains rewritten, with the same bytes


def test_a_resumed_run_restarts_a_chain_whose_chunks_are_damaged(model, dataset, tmp_path) -> None:
    kwargs = dict(SMALL, num_chains=2, num_draws=60)  # two chunks of 50 steps per chain
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **kwargs)
    before = tree_hash(out)
    group = zarr.open_group(out, mode="r+")
    del group.attrs["completed"]  # as if chain 1 had been stopped after its first chunk
    zarr.open_array(out / STEPS_DONE, mode="r+")[1:2] = np.array([50])
    damage(out / "sampling_loss" / "c" / "1" / "0" / "0" / "0")
    with pytest.warns(
        UserWarning, match="chain 1 has damaged sampling_loss chunk 1/0/0/0: chain 1, draws 0-49"
    ):
        distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **kwargs)
    assert tree_hash(out) == before


def test_cli_verify_names_damage_and_read_commands_say_what_to_do(model, dataset, tmp_path, capsys) -> None:
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    assert main(["inspect", str(out), "--verify"]) == 0
    assert "all good" in capsys.readouterr().out
    damage(out / "sampling_loss" / "c" / "2" / "0" / "0" / "0")
    assert main(["inspect", str(out), "--verify"]) == 1
    printed = capsys.readouterr().out
    assert "damaged sampling_loss chunk 2/0/0/0: chain 2, draws 0-5 (checksum mismatch)" in printed
    assert f"--from-store {out} --rerun-chains 2" in printed
    assert main(["aggregate", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: 1 chunk(s) damaged or missing" in err and "chain 2, draws 0-5" in err
    assert "Traceback" not in err


def test_analyses_name_a_damaged_chunk_and_the_rerun_that_repairs_it(model, dataset, tmp_path) -> None:
    out = tmp_path / "run.zarr"
    llc = distinterp.compute_llc(
        distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL), check=False
    ).llc_mean.item()
    damage(out / "sampling_loss_micro" / "c" / "1" / "0" / "0" / "0")
    damage(out / "loss_train" / "c" / "2" / "0" / "0" / "0")
    tree = xr.open_datatree(out, engine="zarr", consolidated=False)  # opened after: xarray caches reads
    named = [
        "damaged sampling_loss_micro chunk 1/0/0/0: chain 1, steps 0-5 (checksum mismatch)",
        "damaged loss_train chunk 2/0/0/0: chain 2, draws 0-5 (checksum mismatch)",
        f"--from-store {out} --rerun-chains 1 2",
        "rerun_chains=[1, 2]",
    ]
    reads = {
        "compute_llc(tree)": lambda: distinterp.compute_llc(tree),
        "diagnose(path)": lambda: distinterp.diagnose(str(out)),
        "compute_bif(dataset)": lambda: distinterp.compute_bif(tree.dataset, device="cpu"),
        "compute_susceptibilities(trees)": lambda: distinterp.compute_susceptibilities(
            {"full": tree, "w": tree}, "train", include_sampling_task=True
        ),
    }
    for what, read in reads.items():
        with pytest.raises(DamagedStoreError) as caught:
            read()
            pytest.fail(f"{what} returned numbers from a damaged store")
        assert all(words in str(caught.value) for words in named), (what, str(caught.value))
        assert f"{out}: 2 chunk(s) damaged or missing" in str(caught.value)
    bare = xr.Dataset(dict(tree.dataset.data_vars), attrs=tree.dataset.attrs)  # no record of its store
    with pytest.raises(DamagedStoreError, match=r"which store is unknown.*inspect STORE --verify"):
        distinterp.compute_llc(bare)
    assert store_locations({"full": tree, "l0": str(out)}) == [Location(str(out))] * 2
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, rerun_chains=[1, 2], **SMALL)
    repaired = xr.open_datatree(out, engine="zarr", consolidated=False)
    assert distinterp.compute_llc(repaired, check=False).llc_mean.item() == llc  # the same numbers


def test_stores_written_before_checksums_stay_readable(tmp_path, capsys) -> None:
    from tests.conftest import tiny_gpt2, token_dataset

    out = tmp_path / "old.zarr"
    devinterp_sample(tiny_gpt2(), token_dataset(), out, **{**SMALL, "num_chains": 2})
    result = verify(Location(str(out)))
    assert result.problems == [] and "sampling_loss" in result.unchecksummed
    assert main(["inspect", str(out)]) == 0
    assert "no checksum (written before checksums)" in capsys.readouterr().out


def test_checksummed_stores_read_in_tensorstore(model, dataset, tmp_path) -> None:
    ts = pytest.importorskip("tensorstore")
    out = tmp_path / "run.zarr"
    tree = distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / "sampling_loss")}}
    values = ts.open(spec, read=True).result().read().result()
    np.testing.assert_array_equal(values, tree.dataset.sampling_loss.values)
    damage(out / "sampling_loss" / "c" / "0" / "0" / "0" / "0")
    with pytest.raises(ValueError, match=r"(?i)checksum|corrupt|zstd|decod"):
        ts.open(spec, read=True).result().read().result()


def _ckpt(step: int) -> ChainCheckpoint:
    return ChainCheckpoint(step=step, params={"w": torch.full((2,), float(step))}, square_avg={}, rng={})


def test_damaged_checkpoints_are_skipped_with_a_warning(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "run.zarr"))
    sharded = CheckpointStore(loc, shard=(0, 1))
    for step in (50, 100):
        sharded.save(0, _ckpt(step))
    damage(tmp_path / "run.zarr.checkpoints" / "chain_0" / "step_000000100.shard_0_of_1.pt")
    with pytest.warns(UserWarning, match="chain 0 is damaged"):
        assert sharded.load(0).step == 50  # type: ignore[union-attr]  # the previous good one
    plain = CheckpointStore(loc)
    plain.save(1, _ckpt(50))
    damage(tmp_path / "run.zarr.checkpoints" / "chain_1.pt")
    with pytest.warns(UserWarning, match="chain 1 is damaged"):
        assert plain.load(1) is None  # the chain starts from its beginning
    plain.save(1, _ckpt(100))  # the damaged one moves aside as the previous; the new one is read
    assert plain.load(1).step == 100  # type: ignore[union-attr]
    with pytest.raises(DamagedCheckpoint):
        unseal(seal(b"state")[:-1] + b"X")


def test_a_checkpoint_ahead_of_the_store_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    """Killed between a checkpoint and the progress that covers it, a chain resumes from the checkpoint
    before (not from its start): the plain layout keeps the previous one until the next save."""
    plain = CheckpointStore(Location(str(tmp_path / "run.zarr")))
    for step in (50, 100):
        plain.save(0, _ckpt(step))
    assert plain.load(0).step == 100  # type: ignore[union-attr]
    assert plain.load(0, at_most=99).step == 50  # type: ignore[union-attr]
    assert plain.load(0, at_most=49) is None
    plain.save(0, _ckpt(150))
    assert sorted(p.name for p in (tmp_path / "run.zarr.checkpoints").iterdir()) == [
        "chain_0.prev.pt",
        "chain_0.pt",
    ]
    damage(tmp_path / "run.zarr.checkpoints" / "chain_0.pt")
    with pytest.warns(UserWarning, match="chain 0 is damaged"):
        assert plain.load(0).step == 100  # type: ignore[union-attr]
    assert unseal(b"PK older checkpoint") == b"PK older checkpoint"


def test_unreadable_s3_stores_fail_fast_in_one_line(s3_server: S3Server, s3_url: str, capsys) -> None:
    from tests.fixtures import free_ports

    dead = f'{{"key": "k", "secret": "s", "client_kwargs": {{"endpoint_url": "http://127.0.0.1:{free_ports(1)[0]}"}}}}'
    for command in ("status", "inspect", "aggregate", "report"):
        start = time.perf_counter()
        assert main([command, "s3://lab/run.zarr", "--storage-options", dead]) == 2
        err = capsys.readouterr().err
        assert "cannot reach it at http://127.0.0.1:" in err and len(err.splitlines()) == 2, err
        assert time.perf_counter() - start < 15
    import json

    live = json.dumps(s3_server.storage_options)
    assert main(["status", f"{s3_url}/none.zarr", "--storage-options", live]) == 2
    assert f"no store at {s3_url}/none.zarr" in capsys.readouterr().err
    assert main(["status", "s3://nobucket-here/run.zarr", "--storage-options", live]) == 2
    assert "bucket 'nobucket-here' does not exist" in capsys.readouterr().err


def test_an_analysis_of_an_s3_store_names_its_damaged_chunk(
    model, dataset, s3_server: S3Server, s3_url: str
) -> None:
    import fsspec

    url, options = f"{s3_url}/run.zarr", s3_server.storage_options
    run = dict(SMALL, num_chains=1)  # few chunks: naming them reads every chunk over S3
    distinterp.sample(model, dataset, {"train": dataset}, output_path=url, storage_options=options, **run)
    fs, root = fsspec.core.url_to_fs(url, **options)
    chunk = f"{root}/sampling_loss_micro/c/0/0/0/0"
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    tree = xr.open_datatree(url, engine="zarr", consolidated=False, storage_options=options)
    with pytest.raises(DamagedStoreError) as caught:  # the tree records its URL; the options are recalled
        distinterp.compute_llc(tree)
    assert "damaged sampling_loss_micro chunk 0/0/0/0: chain 0, steps 0-5" in str(caught.value)
    assert f"--from-store {url} --rerun-chains 0" in str(caught.value)
    assert s3_server.secret not in str(caught.value)
