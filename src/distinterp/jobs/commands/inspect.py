"""`distinterp inspect`: what a store holds, and whether its chains can be trusted."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _storage_options
from distinterp.jobs.commands.output import _print_diagnosis


def cmd_inspect(args: argparse.Namespace) -> int:
    """Config, schema, layout, progress, sizes, analyses beside the store, and the diagnosis."""
    from distinterp.jobs.inspection import describe

    lines, diagnosis = describe(args.store, _storage_options(args.storage_options))
    print("\n".join(lines))
    _print_diagnosis(diagnosis.summary(), diagnosis.problems, diagnosis.notes)
    return 1 if args.strict and not diagnosis.healthy else 0
