"""Launching ranks: torchrun without its own failure report, and processes that end a Ctrl-C with one line
(rank 0's) even while they are still importing, instead of a traceback per process. `distinterp demo` uses
it; `distinterp-run` (= `python -m distinterp.jobs.launch`) takes torchrun's arguments, for any job:
`distinterp-run --standalone --nproc-per-node=2 -m distinterp sample CONFIG` (Ctrl-C: one line, exit 130;
plain torchrun adds its own traceback and exits 1)."""

from __future__ import annotations

import logging
import sys

QUIET = """
import os, sys
try:
    {call}
except KeyboardInterrupt:
    if {speak} and os.environ.get("RANK", "0") == "0":
        print("\\ndistinterp: interrupted; rerun the same command to continue", file=sys.stderr)
    sys.exit(130)
"""


def quiet_python(call: str, speak: bool) -> list[str]:
    """`python -c` running `call` (imports, then sys.exit(...)); Ctrl-C exits 130, rank 0 saying so if `speak`."""
    return [sys.executable, "-c", QUIET.format(call=call, speak=speak)]


def command(nproc: int, args: list[str]) -> list[str]:
    """torchrun (quiet) of `distinterp ARGS` on nproc local ranks."""
    launcher = quiet_python(
        "from distinterp.jobs.launch import main; sys.exit(main(sys.argv[1:]))", speak=False
    )
    worker = quiet_python("from distinterp.jobs.cli import main; sys.exit(main(sys.argv[1:]))", speak=True)
    return [*launcher, "--standalone", f"--nproc-per-node={nproc}", "--no-python", *worker, *args]


def main(argv: list[str]) -> int:
    """torchrun with these arguments; the workers' exit status (130 after Ctrl-C), without its report."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # each has its own level (torch's LOGLEVEL)
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))  # type: ignore[no-untyped-call]  # torch.distributed.run is untyped
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c > 0), 130 if any(c < 0 for c in codes) else 1)
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


def cli() -> None:
    """`distinterp-run ARGS`: torchrun ARGS, quiet (see the module's docstring)."""
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # while torch was still importing
        sys.exit(130)


if __name__ == "__main__":
    cli()
