"""Several sampling runs in one real torchrun job (one start-up for many checks):
`python -m tests.sharded_jobs OUT_DIR JSON` with JSON {name: overrides}. Run `name` writes OUT_DIR/name.zarr;
(or OUT_DIR/<overrides["into"]>.zarr); a run that raises writes its error to OUT_DIR/name.error (rank 0)
and the job goes on."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tests.jobs import run

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    out = Path(sys.argv[1])
    for name, overrides in json.loads(sys.argv[2]).items():
        try:
            run(str(out / f"{overrides.pop('into', name)}.zarr"), **overrides)
        except Exception as e:  # noqa: BLE001 - the test reads the message
            import torch.distributed as dist

            if not dist.is_initialized() or dist.get_rank() == 0:
                (out / f"{name}.error").write_text(f"{type(e).__name__}: {e}")
