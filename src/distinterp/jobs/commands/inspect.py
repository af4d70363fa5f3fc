"""`distinterp inspect`: what a store holds, and whether its chains can be trusted."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _storage_options
from distinterp.jobs.commands.output import _print_diagnosis


def cmd_inspect(args: argparse.Namespace) -> int:
    """Config, schema, layout, progress, sizes, analyses beside the store, and the diagnosis."""
    from distinterp.jobs.inspection import describe
    from distinterp.jobs.verification import checksum_line, verify_store
    from distinterp.store import require_reachable

    options = _storage_options(args.storage_options)
    require_reachable(args.store, options)
    if args.verify:
        return verify_store(args.store, options)
    lines, diagnosis = describe(args.store, options)
    print("\n".join(lines))
    print(checksum_line(args.store, options))
    _print_diagnosis(diagnosis.summary(), diagnosis.problems, diagnosis.notes)
    return 1 if args.strict and not diagnosis.healthy else 0
