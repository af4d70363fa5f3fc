"""The `distinterp` command: demo; the jobs sample, llc, bif, susceptibilities, trajectory, calibrate, sweep;
aggregate, status, inspect, report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from typing import Any

from distinterp.jobs.commands.aggregate import cmd_aggregate
from distinterp.jobs.commands.aggregate import sampling_tasks as sampling_tasks
from distinterp.jobs.commands.bif import cmd_bif
from distinterp.jobs.commands.calibrate import cmd_calibrate
from distinterp.jobs.commands.demo import DEMO_STORE, cmd_demo
from distinterp.jobs.commands.inputs import _storage_options
from distinterp.jobs.commands.inspect import cmd_inspect
from distinterp.jobs.commands.report import cmd_report
from distinterp.jobs.commands.sample import cmd_sample
from distinterp.jobs.commands.status import cmd_status
from distinterp.jobs.commands.susceptibilities import cmd_susceptibilities
from distinterp.jobs.commands.sweep import cmd_sweep
from distinterp.jobs.commands.trajectory import cmd_trajectory
from distinterp.jobs.results import write_result

_write = write_result  # its old name

STATUS_EPILOG = """exit status: 0 every chain is complete; 1 chains are still to run (listed); 2 no store
there, or it cannot be read"""


def _job_arguments(s: argparse.ArgumentParser) -> None:
    """The arguments every job command (sample, llc, bif, susceptibilities) takes."""
    s.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="YAML settings file; or a STORE (a directory/URL/*.zarr) to rerun from the settings it recorded",
    )
    s.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override settings (highest priority), e.g. --set sampler.lr=1e-3 array_task.task_id=0",
    )
    s.add_argument(
        "--array-task-id", type=int, help="0-based task index in a job array (with --array-task-count)"
    )
    s.add_argument("--array-task-count", type=int, help="number of tasks in the job array")
    s.add_argument(
        "--from-store",
        metavar="STORE",
        help="rerun (continue) the job that created STORE, from its recorded settings",
    )
    s.add_argument(
        "--storage-options", help="fsspec options of the STORE, as JSON (credentials: prefer AWS_* variables)"
    )
    s.add_argument(
        "--chains-per-batch",
        type=int,
        help="chains each rank advances together, batched (parallel.chains_per_batch)",
    )
    s.add_argument(
        "--fsdp-size",
        type=int,
        help="ranks that shard each chain's model with FSDP (parallel.fsdp_size; divides the world size)",
    )


def parser() -> argparse.ArgumentParser:
    from distinterp._version import __version__

    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress details, and show the full traceback of an error",
    )
    p = argparse.ArgumentParser(prog="distinterp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help=verbose._actions[0].help)
    p.add_argument("--version", action="version", version=f"distinterp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo", parents=[verbose], help="LLC of a tiny built-in model (known answer) into a local store"
    )
    d.add_argument("--nproc", type=int, default=2, help="ranks to run on (torchrun, gloo on CPU; default 2)")
    d.add_argument(
        "--output", default=DEMO_STORE, help=f"the store (default {DEMO_STORE}); reruns continue it"
    )
    d.add_argument("--vocab", type=int, default=6, help="symbols V of the bigram model (true LLC V(V-1)/2)")
    d.add_argument("--fresh", action="store_true", help="delete an existing demo store first")
    d.set_defaults(func=cmd_demo)

    jobs = [
        ("sample", "run a sampling job from settings (then the settings' analyses)", cmd_sample),
        ("llc", "sample, then the LLC", cmd_sample),
        ("bif", "sample, then the BIF (settings: bif.*)", cmd_bif),
        (
            "susceptibilities",
            "one sampling run per weight restriction (settings: susceptibilities.*), then the susceptibilities",
            cmd_susceptibilities,
        ),
    ]
    for name, helptext, func in jobs:
        s = sub.add_parser(
            name,
            parents=[verbose],
            help=helptext + "; works under torchrun and Slurm arrays",
            description=helptext + ". Settings: YAML < DISTINTERP_* environment < --set.",
        )
        _job_arguments(s)
        if name in ("sample", "llc"):
            s.add_argument(
                "--rerun-chains",
                type=int,
                nargs="+",
                metavar="CHAIN",
                help="rewrite these chains from their start (those `inspect --verify` found damaged); the "
                "others stay untouched",
            )
        s.set_defaults(func=func)

    t = sub.add_parser(
        "trajectory",
        parents=[verbose],
        help="sample every checkpoint of a training run (one store each under output_path) and show the LLC",
    )
    t.add_argument("config", help="YAML settings file (sample's settings plus `checkpoints`)")
    t.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override settings, e.g. sampler.lr=1e-3",
    )
    t.add_argument("--array-task-id", type=int, help="this task's block of the (checkpoint, chain) list")
    t.add_argument("--array-task-count", type=int, help="number of tasks in the job array")
    t.set_defaults(func=cmd_trajectory)

    g = sub.add_parser(
        "sweep",
        parents=[verbose],
        help="a grid of checkpoints x weight restrictions x datasets x sampler settings (one store per cell)",
    )
    g.add_argument(
        "config", help="YAML settings file (sample's settings plus checkpoints, restrictions, ...)"
    )
    g.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override settings, e.g. sampler.lr=1e-3 parallel.fsdp_size=2",
    )
    g.add_argument("--array-task-id", type=int, help="this task's block of the (cell, chain) list")
    g.add_argument("--array-task-count", type=int, help="number of tasks in the job array")
    g.set_defaults(func=cmd_sweep)

    c = sub.add_parser(
        "calibrate",
        parents=[verbose],
        help="sweep sampler settings (short runs, one store per cell) and pick lr/localization",
    )
    c.add_argument("config", nargs="?", help="YAML settings file (sample's settings plus an optional grid)")
    c.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override settings, e.g. sampler.n_beta=30",
    )
    c.add_argument(
        "--grid", action="append", metavar="sampler.FIELD=V1,V2", help="sweep a sampler setting (repeatable)"
    )
    c.add_argument("--array-task-id", type=int, help="this task's block of the (cell, chain) list")
    c.add_argument("--array-task-count", type=int, help="number of tasks in the job array")
    c.set_defaults(func=cmd_calibrate)

    for name, helptext, func in [
        ("aggregate", "analyses of a complete store (LLC, BIF, susceptibilities)", cmd_aggregate),
        (
            "status",
            "per-chain progress of a store (exit 0: complete, 1: chains to run, 2: no store)",
            cmd_status,
        ),
        ("inspect", "what a store holds, and whether its chains can be trusted", cmd_inspect),
        ("report", "PNG figures and one HTML page of a store", cmd_report),
    ]:
        a = sub.add_parser(
            name,
            parents=[verbose],
            help=helptext,
            description=helptext,
            epilog=STATUS_EPILOG if name == "status" else None,
        )
        a.add_argument("store", help="store path or URL")
        a.add_argument(
            "--storage-options", help="fsspec options as JSON (credentials: prefer AWS_* variables)"
        )
        if name == "report":
            a.add_argument("--out", help="directory for the PNGs and index.html (default: <store>.report)")
            a.add_argument("--tokenizer", help="HF tokenizer name/path to decode tokens (local or cached)")
            a.add_argument("--bif", help="a BIF result to draw (default: <stem>.bif.zarr beside the store)")
            a.add_argument(
                "--susceptibilities",
                help="a susceptibilities result to draw (default: beside the store, or the susceptibilities "
                "job's <base>.susceptibilities.zarr for its <base>_<restriction>.zarr stores)",
            )
            a.add_argument("--log-step", action="store_true", help="trajectory root: log-scale step axis")
        if name == "inspect":
            a.add_argument("--strict", action="store_true", help="exit 1 when the diagnosis is not healthy")
            a.add_argument(
                "--verify",
                action="store_true",
                help="read every chunk of every array against its checksum; list damaged or missing ones "
                "(exit 1 when any)",
            )
        if name == "aggregate":
            a.add_argument("--allow-partial", action="store_true", help="use complete chains only")
            a.add_argument(
                "--output",
                help="write the LLC (.zarr, or .nc); BIF/susceptibilities go beside it as <stem>.bif.zarr / "
                "<stem>.susceptibilities.zarr (without --output: beside the store)",
            )
            a.add_argument(
                "--bif", choices=["token", "sequence"], help="also compute the BIF, token- or sequence-wise"
            )
            a.add_argument("--bif-average", action="store_true", help="average the token-wise BIF per pair")
            a.add_argument(
                "--bif-batch-size", type=int, default=32, help="sequences per streamed block (default 32)"
            )
            a.add_argument(
                "--susceptibilities",
                nargs="+",
                metavar="NAME=STORE",
                help="stores sampled with weight restriction NAME; the positional store is 'full'",
            )
            a.add_argument(
                "--sampling-task",
                help="the observable whose loss the chains sampled (--susceptibilities); default: the one "
                "whose data is the sampling dataset, as the store records it",
            )
        a.set_defaults(func=func)
    return p


def _describe(error: BaseException) -> str:
    """A user error in a few lines: pydantic's as `field: message` per error, others as their message."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        lines = []
        for e in error.errors():
            field = ".".join(str(part) for part in e["loc"]) or "settings"
            lines.append(f"  {field}: {e['msg'].removeprefix('Value error, ')}")
        return f"invalid settings ({error.error_count()} error(s)):\n" + "\n".join(lines)
    return str(error)


def _options_of(args: argparse.Namespace) -> dict[str, Any]:
    """--storage-options of a command, or {} when absent or not valid JSON (that error is said elsewhere)."""
    try:
        return _storage_options(getattr(args, "storage_options", None))
    except ValueError:
        return {}


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


INTERRUPTED = "interrupted; rerun the same command to continue (complete chains are kept)"


def _rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (bad settings, data, store) prints one message and exits 2, Ctrl-C one
    line and 130. Under torchrun rank 0 says it: every rank validates the same inputs and raises the same
    error, so other ranks print only errors of their own (rank-prefixed)."""
    from distinterp.store import StoreError

    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if (getattr(args, "array_task_id", None) is None) != (getattr(args, "array_task_count", None) is None):
        parser().error("--array-task-id and --array-task-count go together")
    rank = _rank()
    try:
        with warnings.catch_warnings():
            if not args.verbose:  # one line per warning, without the source line that raised it
                warnings.showwarning = _show_warning
            from distinterp.analyses.diagnostics import UnhealthyRunWarning

            warnings.simplefilter("ignore", UnhealthyRunWarning)  # the commands print the diagnosis
            try:
                return int(args.func(args) or 0)
            except (RuntimeError, ValueError) as e:  # a chunk failing its checksum: name it and what to do
                from distinterp.jobs.verification import damage_error

                damaged = damage_error(getattr(args, "store", None), _options_of(args), e)
                if damaged is None:
                    raise
                raise damaged from e
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        if rank == 0:
            print(f"\ndistinterp {args.command}: {INTERRUPTED}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, StoreError) as e:
        if args.verbose:  # the traceback, then the same one-line message and exit status
            traceback.print_exc()
        shared = isinstance(e, (ValueError, TypeError, StoreError))  # the same on every rank
        if rank == 0 or not shared:
            prefix = f"rank {rank}: " if rank else ""
            hint = "" if args.verbose else "\n(run with -v for the traceback)"
            print(f"{prefix}distinterp {args.command}: {_describe(e)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
