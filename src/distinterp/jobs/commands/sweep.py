"""`distinterp sweep`: a grid of checkpoints x weight restrictions x datasets x sampler settings."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _overrides
from distinterp.jobs.commands.output import _print_grid


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every cell of the grid, one store each under output_path, and the LLC per cell."""
    from distinterp.jobs.grid import SweepSettings, run_grid
    from distinterp.jobs.settings import load_settings
    from distinterp.parallel.distributed import runtime

    settings = load_settings(args.config, _overrides(args), cls=SweepSettings)
    assert isinstance(settings, SweepSettings)
    res = run_grid(settings)
    if runtime().is_coordinator:
        _print_grid("sweep", settings.output_path, res)
    return 0
