"""A grid job tests and real `torchrun` call: `python -m tests.sweep_job ROOT [json overrides]`.

The grid: 3 checkpoints (the tiny GPT-2 from seeds 0, 10, 200: stand-ins for training steps) x its 2
attention heads (the `l{L}h{H}` generator) x 2 datasets. Overrides: `array_task` [i, n]; `sleep` seconds
in each loader (so a test can kill the job mid-grid); `loads` a file each rank appends its loads to;
anything else replaces SMALL's sample() arguments.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

import distinterp
from distinterp.jobs.grid import sweep
from distinterp.parallel.distributed import runtime, solo
from tests.conftest import SMALL, tiny_gpt2, token_dataset

STEPS = (0, 10, 200)
HEADS = {"l{L}h{H}": "l{L}h{H}"}
OPTS = {**SMALL, "num_draws": 4}
"""3 chains of 4 draws: 36 (cell, chain) pairs, which no block split of 2 ranks leaves aligned to cells."""


def datasets() -> dict[str, Any]:
    return {"a": token_dataset(seed=1), "b": token_dataset(seed=2)}


def checkpoint(step: int) -> torch.nn.Module:
    return tiny_gpt2(seed=step)


def run(root: str, **overrides: Any) -> Any:
    """The grid into root (see the module's docstring for the overrides)."""
    task = overrides.pop("array_task", None)
    sleep = float(overrides.pop("sleep", 0.0))
    loads = overrides.pop("loads", None)
    steps = overrides.pop("steps", STEPS)

    def loader(step: int) -> Any:
        def load() -> torch.nn.Module:
            rank = runtime().rank
            if loads is not None:
                with Path(loads).open("a") as f:
                    f.write(f"{rank} {step}\n")
            time.sleep(sleep)
            return checkpoint(step)

        return load

    data = datasets()
    return sweep(
        {step: loader(step) for step in steps},
        data["a"],
        {"train": data["a"]},
        output_path=root,
        restrictions=HEADS,
        datasets=data,
        array_task=tuple(task) if task else None,
        **{**OPTS, **overrides},
    )


def main(root: str, overrides: dict[str, Any]) -> None:
    """What the test's one torchrun launch does: block 0 of 4 of the grid (its 9 pairs split 5/4 over
    the ranks, one cell shared by both), then a one-cell grid whose loader fails on rank 1: each rank
    writes the error it stopped with to ROOT.fail-RANK; then a 2-cell grid with fsdp_size 2 (ROOT.fsdp)
    and one of its cells as a standalone sample() (ROOT.fsdp-alone.zarr)."""
    run(root, array_task=[0, 4], loads=f"{root}.loads", **overrides)
    rank = runtime().rank
    with solo():  # what a rank's share runs under: one process, but only the job's rank 0 draws progress
        rt = runtime()
        Path(f"{root}.solo-{rank}").write_text(json.dumps([rt.rank, rt.world_size, rt.shows_progress]))

    def broken() -> torch.nn.Module:
        if runtime().rank == 1:
            raise RuntimeError("checkpoint 0 is corrupt on this node")
        return checkpoint(0)

    try:
        sweep({0: broken}, datasets()["a"], output_path=f"{root}.failing", **OPTS)
    except Exception as e:  # noqa: BLE001 - written for the test to read
        Path(f"{root}.fail-{runtime().rank}").write_text(f"{type(e).__name__}: {e}")
    # fsdp_size 2: every rank runs every cell, each chain sharded over both; and one cell standalone
    sharded = {**OPTS, "num_chains": 2, "fsdp_size": 2}
    data = datasets()["a"]
    sweep(checkpoint(0), data, output_path=f"{root}.fsdp", grid={"lr": [1e-3, 2e-3]}, **sharded)
    distinterp.sample(
        checkpoint(0), data, {}, output_path=f"{root}.fsdp-alone.zarr", **{**sharded, "lr": 2e-3}
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if args.pop("launch", False):
        main(sys.argv[1], args)
    else:
        run(sys.argv[1], **args)
