"""Sharded checkpoints: a step counts only when every shard of it is durable; pruning keeps one usable."""

from __future__ import annotations

from pathlib import Path

import torch

from distinterp.checkpoint import ChainCheckpoint, CheckpointStore
from distinterp.store import Location


def ckpt(step: int, rank: int) -> ChainCheckpoint:
    return ChainCheckpoint(step=step, params={"w": torch.full((2,), float(rank))}, square_avg={}, rng={})


def test_a_step_counts_once_every_shard_is_saved(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "run.zarr"))
    ranks = [CheckpointStore(loc, shard=(r, 2)) for r in range(2)]
    assert ranks[0].load(3) is None
    ranks[1].save(3, ckpt(50, 1))  # the non-writer is ahead: step 50 is not complete yet
    assert ranks[1].load(3) is None
    ranks[0].save(3, ckpt(50, 0))
    loaded = [r.load(3) for r in ranks]
    assert [c.step for c in loaded if c] == [50, 50]
    assert [float(c.params["w"][0]) for c in loaded if c] == [0.0, 1.0]  # each rank reads its own shard
    for step in (100, 150):
        ranks[1].save(3, ckpt(step, 1))
        ranks[0].save(3, ckpt(step, 0))
    assert ranks[0].load(3).step == 150  # type: ignore[union-attr]
    assert ranks[0].load(3, at_most=149).step == 100  # type: ignore[union-attr]
    files = {p.name for p in (tmp_path / "run.zarr.checkpoints" / "chain_3").iterdir()}
    # rank 0 saved last: it kept the two newest complete steps; rank 1 prunes step 50 at its next save
    assert files == {f"step_{s:09d}.shard_{r}_of_2.pt" for s in (100, 150) for r in (0, 1)} | {
        "step_000000050.shard_1_of_2.pt"
    }
    assert CheckpointStore(loc, shard=(0, 4)).load(3) is None  # another layout's shards never count
    ranks[0].clear()
    assert not (tmp_path / "run.zarr.checkpoints").exists()
