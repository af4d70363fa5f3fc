"""`distinterp report`: PNG figures and one HTML page of a store."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _existing, _is_sweep_root, _storage_options


def cmd_report(args: argparse.Namespace) -> int:
    """PNG figures and one self-contained HTML page for a store (live or complete)."""
    from distinterp.jobs.report import report
    from distinterp.jobs.runner import check_output_path
    from distinterp.store import require_reachable

    options = _storage_options(args.storage_options)
    if args.out:
        check_output_path(args.out, "--out")
    if args.tokenizer:  # given, so it must load (it was silently unused when it did not)
        from distinterp.jobs.sources import load_tokenizer

        load_tokenizer(args.tokenizer, "--tokenizer")
    require_reachable(args.store, options)
    if _is_sweep_root(args.store, options):  # a trajectory or calibration root
        from distinterp.jobs.sweep_report import sweep_report

        print(
            f"wrote {sweep_report(args.store, out=args.out, storage_options=options, log_step=args.log_step)}"
        )
        return 0
    rep = report(
        args.store,
        out=args.out,
        storage_options=_storage_options(args.storage_options),
        tokenizer=args.tokenizer,
        bif=_existing(args.bif, "--bif", options),
        susceptibilities=_existing(args.susceptibilities, "--susceptibilities", options),
    )
    print(f"diagnosis {rep.diagnosis.summary()}")
    print(f"wrote {rep.path} ({len(rep.figures)} figures: {', '.join(f.name for f in rep.figures)})")
    return 0
