"""`distinterp trajectory`: the same estimate at every checkpoint of a training run."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _overrides
from distinterp.jobs.commands.output import _print_grid


def cmd_trajectory(args: argparse.Namespace) -> int:
    """The same estimate at every checkpoint of a training run, one store each under output_path."""
    from distinterp.jobs.settings import load_settings
    from distinterp.jobs.trajectory import TrajectorySettings, run_trajectory
    from distinterp.parallel.distributed import runtime

    settings = load_settings(args.config, _overrides(args), cls=TrajectorySettings)
    assert isinstance(settings, TrajectorySettings)
    res = run_trajectory(settings)
    if runtime().is_coordinator:
        _print_grid("trajectory", settings.output_path, res)
    return 0
