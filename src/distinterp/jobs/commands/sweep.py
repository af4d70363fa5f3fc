"""`distinterp sweep`: a grid of checkpoints x weight restrictions x datasets x sampler settings."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from distinterp.jobs.commands.inputs import _overrides
from distinterp.jobs.commands.output import _print_grid

if TYPE_CHECKING:  # the CLI imports its commands at start-up: torch and xarray load with the command
    import xarray as xr

    from distinterp.jobs.grid import SweepSettings
    from distinterp.store.location import Location

logger = logging.getLogger(__name__)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every cell of the grid, one store each under output_path; the LLC per cell printed, and the whole
    table (with the BIF summaries and susceptibility table when asked) written beside the root as
    `<root>.sweep.zarr`, the token x component susceptibility vectors as `<root>.token_vectors.zarr`."""
    from distinterp.jobs.grid import SweepSettings, run_grid
    from distinterp.jobs.settings import load_settings
    from distinterp.parallel.distributed import runtime

    settings = load_settings(args.config, _overrides(args), cls=SweepSettings)
    assert isinstance(settings, SweepSettings)
    res = run_grid(settings)
    if runtime().is_coordinator:
        _print_grid("sweep", settings.output_path, res)
        if res is not None:
            for where in write_grid_results(settings, res):
                print(f"wrote {where}")
    return 0


def write_grid_results(settings: SweepSettings, table: xr.Dataset) -> list[Location]:
    """The finished grid's table beside its root, and its susceptibility vectors when they were asked for
    (token text from the model's tokenizer when one is at hand, else the token ids)."""
    from distinterp.analyses.grid import write_susceptibility_vectors
    from distinterp.errors import SourceError
    from distinterp.jobs.results import write_result
    from distinterp.jobs.sources import load_tokenizer, tokenizer_name
    from distinterp.store.location import Location

    root = Location(settings.output_path, dict(settings.storage_options or {}))
    target = root.sibling("sweep_table")
    write_result(table, target)
    out = [target]
    if "susceptibilities" in settings.analyses:
        name = tokenizer_name(settings.model)
        try:
            tokenizer = load_tokenizer(name) if name else None
        except SourceError as e:
            logger.info("sweep: no tokenizer for the token text (%s); token ids instead", e)
            tokenizer = None
        out.append(write_susceptibility_vectors(root, table, tokenizer=tokenizer))
    return out
