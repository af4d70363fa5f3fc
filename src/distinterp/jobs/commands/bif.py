"""`distinterp bif`: a sampling job, then the BIF."""

from __future__ import annotations

import argparse
from typing import Any

from distinterp.jobs.commands.inputs import _job_settings
from distinterp.jobs.commands.output import _print_store
from distinterp.jobs.results import write_result


def cmd_bif(args: argparse.Namespace) -> int:
    from distinterp.jobs.runner import bif_output_path, run_bif
    from distinterp.parallel.distributed import runtime

    settings = _job_settings(args)
    tree, result = run_bif(settings)
    if runtime().is_coordinator:
        _print_store(tree, settings.output_path)
        if result is not None:
            out = bif_output_path(settings)
            if not _written(result):
                write_result(result, out)
            print(f"BIF {dict(result['influences'].sizes)} -> {out}")
    return 0


def _written(result: Any) -> bool:
    """A lazy result compute_bif already wrote to its output_path."""
    return bool(getattr(result, "encoding", {}).get("source"))
