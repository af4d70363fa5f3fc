"""A sampling job both tests and real `torchrun` call: `python -m tests.jobs OUT [json overrides]`."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import distinterp
from tests.conftest import SMALL, tiny_gpt2, token_dataset


def run(output_path: str, **overrides: Any) -> None:
    """Sample the tiny GPT-2 into output_path; overrides replace SMALL's arguments."""
    model = tiny_gpt2(
        vocab_size=int(overrides.pop("vocab_size", 32)), dropout=float(overrides.pop("dropout", 0.0))
    )
    ds = token_dataset()
    kwargs = {**SMALL, **overrides}
    if "restriction" in kwargs:  # a create_param_masks pattern
        kwargs["param_masks"] = distinterp.create_param_masks(model, kwargs.pop("restriction"))
    distinterp.sample(
        model, ds, {"train": ds, "probe": (token_dataset(seed=2), 2)}, output_path=output_path, **kwargs
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run(sys.argv[1], **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
