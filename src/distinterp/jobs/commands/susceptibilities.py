"""`distinterp susceptibilities`: one sampling run per weight restriction, then the susceptibilities."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _job_settings
from distinterp.jobs.commands.output import _print_store


def cmd_susceptibilities(args: argparse.Namespace) -> int:
    from distinterp.analyses.susceptibilities import restriction_path
    from distinterp.jobs.runner import result_path, run_susceptibilities
    from distinterp.parallel.distributed import runtime

    settings = _job_settings(args)
    trees, result = run_susceptibilities(settings)
    if runtime().is_coordinator:
        for name, tree in trees.items():
            print(f"{name}: ", end="")
            _print_store(tree, str(restriction_path(settings.output_path, name)))
        if result is not None:
            out = settings.susceptibilities.output_path or result_path(
                settings.output_path, "susceptibilities"
            )
            print(f"susceptibilities {dict(result['susceptibilities'].dataset.sizes)} -> {out}")
    return 0
