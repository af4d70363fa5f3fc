"""`distinterp sample` and `distinterp llc`: a sampling job, then its analyses."""

from __future__ import annotations

import argparse

from distinterp.jobs.commands.inputs import _job_settings
from distinterp.jobs.commands.output import _print_diagnosis, _print_llc, _print_store


def cmd_sample(args: argparse.Namespace) -> int:
    """`sample` and `llc`: a sampling job, then its analyses (`llc` adds the LLC)."""
    from distinterp.jobs.runner import run_sample
    from distinterp.parallel.distributed import runtime

    settings = _job_settings(args)
    if args.command == "llc" and "llc" not in settings.analyses:
        settings = settings.model_copy(update={"analyses": [*settings.analyses, "llc"]})
    tree, results = run_sample(settings, rerun_chains=getattr(args, "rerun_chains", None))
    if runtime().is_coordinator:
        from distinterp.analyses.diagnostics import diagnose

        status = _print_store(tree, settings.output_path)
        if "llc" in results:
            _print_llc(results["llc"])
        elif tree.dataset.attrs.get("completed") == 1:  # no finite chain for the LLC: say why
            d = diagnose(tree)
            _print_diagnosis(d.summary(), d.problems)
        return status
    return 0
