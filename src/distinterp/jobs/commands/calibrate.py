"""`distinterp calibrate`: a grid of short runs over sampler settings."""

from __future__ import annotations

import argparse
import json

from distinterp.jobs.commands.inputs import _overrides
from distinterp.jobs.commands.output import _print_sweep


def cmd_calibrate(args: argparse.Namespace) -> int:
    """A grid of short runs over sampler settings, and the setting the documented rule picks."""
    import yaml

    from distinterp.jobs.calibrate import CalibrateSettings, parse_grid, run_calibrate
    from distinterp.jobs.settings import load_settings
    from distinterp.parallel.distributed import runtime

    overrides = _overrides(args)
    if args.grid:
        grid = parse_grid(args.grid)
        overrides += [f"grid.{name}={json.dumps(values)}" for name, values in grid.items()]
    settings = load_settings(args.config, overrides, cls=CalibrateSettings)
    assert isinstance(settings, CalibrateSettings)
    if args.grid:  # --grid replaces the config's grid rather than adding fields to it
        settings.grid = grid
    cal = run_calibrate(settings)
    if runtime().is_coordinator:
        if cal is None:
            print(f"calibration {settings.output_path}: this job's share is done; other tasks are unfinished")
            return 0
        _print_sweep(cal.table)
        print(cal)
        if cal.best is not None:
            print("sampler settings to use:")
            print(yaml.safe_dump({"sampler": cal.best}, sort_keys=False).rstrip())
        if cal.extrapolate:
            runs = ", ".join(", ".join(f"{k}={v:g}" for k, v in run.items()) for run in cal.extrapolate)
            print(f"the estimate {cal.estimate:.4g} is the line to lr -> 0 through this lr and {runs}")
    return 0
