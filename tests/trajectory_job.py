"""A trajectory job tests and real `torchrun` call: `python -m tests.trajectory_job ROOT [json overrides]`.

Checkpoint label k is the tiny GPT-2 initialised from seed k (a stand-in for step k of a training run).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from distinterp.jobs.trajectory import trajectory
from tests.conftest import SMALL, tiny_gpt2, token_dataset

LABELS = (0, 10, 200)


def checkpoint(step: int) -> Any:
    return tiny_gpt2(seed=step)


def run(root: str, **overrides: Any) -> Any:
    """The trajectory of LABELS into root; overrides replace SMALL's arguments ('array_task' = [i, n])."""
    task = overrides.pop("array_task", None)
    labels = overrides.pop("labels", LABELS)
    ds = token_dataset()
    return trajectory(
        {step: (lambda s=step: checkpoint(s)) for step in labels},
        ds,
        {"train": ds},
        output_path=root,
        array_task=tuple(task) if task else None,
        **{**SMALL, **overrides},
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run(sys.argv[1], **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
