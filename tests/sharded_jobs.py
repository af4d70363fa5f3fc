"""Several sampling runs in one real torchrun job (one start-up for many checks):
`python -m tests.sharded_jobs OUT_DIR JSON` with JSON {name: overrides}. Run `name` writes OUT_DIR/name.zarr
(or OUT_DIR/<overrides["into"]>.zarr); with overrides["contract"] = CASE it makes the engine-contract case
CASE (tests/test_engine_contract.py) in OUT_DIR/name/ with the other overrides as the engine's options.
A run that raises writes its error to OUT_DIR/name.error (rank 0) and the job goes on."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

from tests.jobs import run
from tests.test_engine_contract import CASES

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    out = Path(sys.argv[1])
    for name, overrides in json.loads(sys.argv[2]).items():
        try:
            if "contract" in overrides:
                CASES[overrides.pop("contract")](out / name, overrides)
            else:
                run(str(out / f"{overrides.pop('into', name)}.zarr"), **overrides)
        except Exception as e:  # noqa: BLE001 - the test reads the message
            import torch.distributed as dist

            if not dist.is_initialized() or dist.get_rank() == 0:
                (out / f"{name}.error").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
