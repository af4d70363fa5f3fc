"""`distinterp aggregate`: analyses of a finished store or sweep root."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from distinterp.jobs.commands.inputs import _is_sweep_root, _open, _storage_options
from distinterp.jobs.commands.output import _print_llc, _print_sweep, _print_trace
from distinterp.jobs.results import write_result


def sampling_tasks(tree: Any) -> list[str] | None:
    """The observables that are the data the chains sampled on (same content fingerprint), from the store's
    recorded identity; None when the store does not record it (written by devinterp)."""
    identity = tree.attrs.get("distinterp", {}).get("identity")
    if not identity:
        return None
    return [o["name"] for o in identity.get("observables", []) if o.get("data") == identity.get("dataset")]


def _sampling_task(tree: Any, given: str | None) -> str:
    """--sampling-task, checked against the store's observables; default: the observable whose data is the
    sampling dataset (as the store records it). Another observable is allowed (e.g. held-out rows of the
    same distribution) but said, since it changes the result."""
    identity = tree.attrs.get("distinterp", {}).get("identity") or {}
    names = [o["name"] for o in identity.get("observables", [])] or None
    tasks = sampling_tasks(tree)
    if given is None:
        if tasks and len(tasks) == 1:
            return tasks[0]
        raise ValueError(
            "--sampling-task: give the observable whose loss the chains sampled"
            + (f" (the store's observables: {names})" if names else "")
        )
    if names is not None and given not in names:
        raise ValueError(
            f"--sampling-task {given!r}: not an observable of this store; its observables: {names}"
        )
    if tasks and given not in tasks:
        warnings.warn(
            f"--sampling-task {given!r}: the chains sampled on the data of {tasks}, not on {given!r}'s; the "
            f"susceptibilities use {given!r}'s losses as the sampling loss (omit --sampling-task for {tasks[0]!r})",
            stacklevel=2,
        )
    return given


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Analyses of a finished store (LLC; BIF and susceptibilities on request); refuses an incomplete one.
    Its jobs, each a function: check every flag, a sweep root's table, the LLC, the BIF, the susceptibilities."""
    from distinterp.jobs.runner import check_output_path
    from distinterp.store import IncompleteStoreError, require_reachable

    options = _storage_options(args.storage_options)
    require_reachable(args.store, options)
    _check_aggregate_flags(args)
    if args.output:
        check_output_path(args.output, "--output")
    if _is_sweep_root(args.store, options):
        return _aggregate_sweep(args, options)
    tree = _open(args.store, options)
    sampling_task = _sampling_task(tree, args.sampling_task) if args.susceptibilities else None
    base = args.output or args.store  # other results go beside it (a URL's: into this directory)
    try:
        _aggregate_llc(tree, args)
        if args.bif:
            _aggregate_bif(tree, args, base)
        if sampling_task is not None:
            _aggregate_susceptibilities(tree, args, base, options, sampling_task)
    except IncompleteStoreError as e:
        print(f"distinterp aggregate: {e}\n(--allow-partial uses the complete chains only)", file=sys.stderr)
        return 2
    return 0


def _aggregate_llc(tree: Any, args: argparse.Namespace) -> None:
    """The LLC of the store, printed with its trace; written to --output when given."""
    from distinterp.analyses.llc import compute_llc

    res = compute_llc(tree, allow_partial=args.allow_partial)
    _print_llc(res)
    _print_trace(tree)
    if args.output:
        write_result(res, args.output)
        print(f"wrote {args.output}")


def _aggregate_bif(tree: Any, args: argparse.Namespace, base: str) -> None:
    """The BIF (--bif), written beside `base`; the lazy token-wise one streams into its result as computed."""
    from distinterp.analyses.bif import compute_bif
    from distinterp.jobs.runner import check_output_path, result_path

    out = result_path(base, "bif")
    check_output_path(out, "--output")
    lazy = args.bif == "token" and not args.bif_average
    bif = compute_bif(
        tree,
        correlation_method=args.bif,
        average_tokenwise_bif=args.bif_average,
        batch_size=args.bif_batch_size,
        allow_partial=args.allow_partial,
        output_path=out if lazy else None,
    )
    assert bif is not None  # None only on a distributed run's other ranks; aggregate is one process
    if not lazy:
        write_result(bif, out)
    print(f"BIF {dict(bif['influences'].sizes)} -> {out}")


def _aggregate_susceptibilities(
    tree: Any, args: argparse.Namespace, base: str, options: dict[str, Any], sampling_task: str
) -> None:
    """The susceptibilities of the store ('full') and the --susceptibilities NAME=STORE stores, beside `base`."""
    from distinterp.analyses.susceptibilities import compute_susceptibilities
    from distinterp.jobs.runner import result_path

    stores = dict(s.split("=", 1) for s in args.susceptibilities)
    wr_map = {"full": tree, **{name: _open(url, options) for name, url in stores.items()}}
    sus = compute_susceptibilities(wr_map, sampling_task, allow_partial=args.allow_partial)
    out = result_path(base, "susceptibilities")
    write_result(sus, out)
    print(f"susceptibilities {dict(sus['susceptibilities'].dataset.sizes)} -> {out}")


def _check_aggregate_flags(args: argparse.Namespace) -> None:
    """Every flag of `aggregate`, before any analysis runs (not after the LLC)."""
    if args.bif_batch_size < 1:
        raise ValueError(f"--bif-batch-size: need at least 1 sequence per block, got {args.bif_batch_size}")
    bad = [s for s in args.susceptibilities or [] if "=" not in s or s.startswith("=")]
    if bad:
        raise ValueError(f"--susceptibilities {bad[0]!r}: expected NAME=STORE, e.g. l0h1=runs/l0h1.zarr")
    if args.sampling_task is not None and not args.susceptibilities:
        raise ValueError(
            "--sampling-task: used only with --susceptibilities NAME=STORE; add them, or remove --sampling-task"
        )
    if args.output and not args.output.rstrip("/").endswith((".zarr", ".nc")):
        raise ValueError(
            f"--output {args.output!r}: results are written as zarr or netCDF; name it *.zarr or *.nc"
        )


def _aggregate_sweep(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """aggregate of a trajectory / calibration / grid root: the LLC of every store, over `checkpoint` / `cell`."""
    from distinterp.jobs.sweep import aggregate_sweep
    from distinterp.store import IncompleteStoreError

    if args.bif or args.susceptibilities:
        raise ValueError(
            f"aggregate: {args.store} is a sweep root; --bif and --susceptibilities work on one of its "
            "stores (<root>/<label>.zarr); a grid's BIF summaries and susceptibility table come from "
            "distinterp sweep with analyses: [llc, bif, susceptibilities] (<root>.sweep.zarr)"
        )
    try:
        res = aggregate_sweep(args.store, storage_options=options, allow_partial=args.allow_partial)
    except IncompleteStoreError as e:
        print(f"distinterp aggregate: {e}", file=sys.stderr)
        return 2
    _print_sweep(res)
    if args.output:
        write_result(res, args.output)
        print(f"wrote {args.output}")
    return 0
