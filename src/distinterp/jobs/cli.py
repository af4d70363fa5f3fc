"""The `distinterp` command: demo; the jobs sample, llc, bif, susceptibilities, trajectory, calibrate;
aggregate, status, inspect, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from distinterp.jobs.results import write_result

_write = write_result  # its old name

DEMO_STORE = "runs/demo.zarr"


def _print_llc(res: Any, truth: float | None = None) -> None:
    per_chain = np.asarray(res.llc_per_chain.values)
    print(
        f"LLC mean  {float(res.llc_mean):.3f}  (std over chains {float(res.llc_std):.3f}, {per_chain.size} chains)"
    )
    print("per chain " + " ".join(f"{v:.2f}" for v in per_chain))
    if res.attrs.get("excluded_chains"):
        print(f"excluded  {res.attrs['excluded_chains']}")
    if "diagnosis" in res.attrs:
        _print_diagnosis(res.attrs["diagnosis"], res.attrs.get("diagnosis_problems", "").splitlines())
    if truth is not None:
        print(f"theory    {truth:.3f}  (relative error {abs(float(res.llc_mean) - truth) / truth:.1%})")


def _print_diagnosis(summary: str, problems: Sequence[str], notes: Sequence[str] = ()) -> None:
    """The verdict in one line, then each problem (check, chains, fix) on its own."""
    print(f"diagnosis {summary}")
    for line in problems:
        print(f"  - {line}")
    for line in notes:
        print(f"  note: {line}")


SPARK = "▁▂▃▄▅▆▇█"


def _print_trace(tree: Any, width: int = 48) -> None:
    """The LLC estimate over draws (mean over chains), as one line of text: has the run equilibrated?"""
    ds = tree.dataset
    if "sampling_loss" not in ds or "init_loss" not in ds:
        return
    n_beta = (
        float(ds.n_beta) if "n_beta" in ds else float(ds.attrs["metadata"]["config"]["sampler"]["n_beta"])
    )
    per_draw = ds.sampling_loss.mean(dim=[d for d in ds.sampling_loss.dims if d not in ("chain", "draw")])
    trace = n_beta * (per_draw - ds.init_loss.mean(dim="token_pos")).mean(dim="chain").values
    trace = trace[np.isfinite(trace)]
    if trace.size < 2:
        return
    windows = np.array_split(trace, min(width, trace.size))
    means = np.array([w.mean() for w in windows])
    lo, hi = float(means.min()), float(means.max())
    scale = (means - lo) / (hi - lo) if hi > lo else np.zeros_like(means)
    line = "".join(SPARK[int(v * (len(SPARK) - 1) + 0.5)] for v in scale)
    print(f"trace     {line}  (LLC estimate over {trace.size} draws, {lo:.2f} .. {hi:.2f})")


def cmd_demo(args: argparse.Namespace) -> int:
    """LLC of the built-in bigram model at its MLE, whose true learning coefficient is V(V-1)/2."""
    from distinterp import toy
    from distinterp.jobs.runner import check_output_path

    if args.nproc < 1:
        raise ValueError(f"--nproc: need at least 1 rank, got {args.nproc}")
    chains = int(toy.BIGRAM_LLC_SETTINGS["num_chains"])
    if args.nproc > chains:  # every rank holds a model and a process group: 99 of them ran out of memory
        raise ValueError(
            f"--nproc: at most {chains} (the demo's chains; more ranks would have none), got {args.nproc}"
        )
    cores = os.cpu_count() or 1
    if args.nproc > cores and "WORLD_SIZE" not in os.environ:
        warnings.warn(
            f"--nproc {args.nproc} on {cores} CPU core(s): ranks share cores and run slower", stacklevel=2
        )
    if args.vocab < 2:
        raise ValueError(f"--vocab: need at least 2 symbols, got {args.vocab}")
    check_output_path(args.output, "--output")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from distinterp.jobs.launch import command

        rest = [*(["-v"] if args.verbose else []), "demo", "--output", args.output]
        rest += ["--vocab", str(args.vocab)] + (["--fresh"] if args.fresh else [])
        child = subprocess.Popen(command(args.nproc, rest))
        try:
            return child.wait()
        except KeyboardInterrupt:  # the workers got it too; rank 0 says so
            return child.wait()
    from distinterp.api import llc
    from distinterp.parallel.distributed import runtime

    rt = runtime()
    if args.fresh and rt.is_coordinator and os.path.isdir(args.output):
        shutil.rmtree(args.output)
    rt.barrier()
    demo = toy.BIGRAM_DEMO
    transition = toy.markov_chain(args.vocab, seed=demo["chain_seed"])
    data = toy.markov_dataset(transition, demo["seq_len"], demo["n_rows"], demo["data_seed"])
    model = toy.bigram_mle(data, args.vocab)
    settings = dict(toy.BIGRAM_LLC_SETTINGS)
    res = llc(model, data, {"train": data}, output_path=args.output, **settings)
    if rt.is_coordinator:
        print(f"\nstore     {args.output}  ({rt.world_size} rank(s))")
        _print_llc(res, truth=toy.bigram_learning_coefficient(args.vocab))
        _print_trace(_open(args.output, {}))
        if (toy.bigram_counts(data, args.vocab) > 0).all():
            target = toy.bigram_expected_llc(data, args.vocab, settings["n_beta"])
            print(f"target    {target:.3f}  (exact at n_beta={settings['n_beta']:g}; theory + O(1/n_beta))")
    return 0


def _job_settings(args: argparse.Namespace) -> Any:
    """The job's settings: CONFIG (a YAML file, or a store to rerun from what it recorded) or --from-store,
    then the environment, then --set (and the flags that stand for settings)."""
    from distinterp.jobs.settings import load_settings

    overrides = _overrides(args)
    store = args.from_store
    if args.config and _is_store(args.config):
        if store:
            raise ValueError(f"{args.command}: give a CONFIG file or a STORE, not both")
        store = args.config
    elif args.from_store and args.config:
        raise ValueError(f"{args.command}: give a CONFIG file or --from-store STORE, not both")
    if store:
        return load_settings(None, overrides, base=_stored_settings(store, args.storage_options))
    return load_settings(args.config, overrides)


def _is_store(path: str) -> bool:
    """A store rather than a settings file: a URL, a directory, or a name ending in .zarr."""
    return "://" in path or os.path.isdir(path) or path.rstrip("/").endswith(".zarr")


def _print_store(tree: Any, url: str) -> int:
    """'store URL: k/n chains complete[, d diverged]'; 1 when every complete chain diverged, else 0."""
    from distinterp.analyses.chains import chain_status

    complete, _, diverged = chain_status(tree.dataset)
    finished = len([c for c in complete if c not in diverged])
    print(
        f"store {url}: {finished}/{tree.dataset.sizes['chain']} chains complete"
        + (f", {len(diverged)} diverged" if diverged else "")
    )
    if len(complete) < tree.dataset.sizes["chain"]:
        print(f"(the other chains are other tasks'; `distinterp aggregate {url}` once all are done)")
    return 1 if complete and not finished else 0


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


def cmd_bif(args: argparse.Namespace) -> int:
    from distinterp.jobs.runner import bif_output_path, run_bif
    from distinterp.parallel.distributed import runtime

    settings = _job_settings(args)
    tree, result = run_bif(settings)
    if runtime().is_coordinator:
        _print_store(tree, settings.output_path)
        if result is not None:
            out = bif_output_path(settings)
            if not _written(result):
                write_result(result, out)
            print(f"BIF {dict(result['influences'].sizes)} -> {out}")
    return 0


def cmd_susceptibilities(args: argparse.Namespace) -> int:
    from distinterp.analyses.susceptibilities import restriction_path
    from distinterp.jobs.runner import result_path, run_susceptibilities
    from distinterp.parallel.distributed import runtime

    settings = _job_settings(args)
    trees, result = run_susceptibilities(settings)
    if runtime().is_coordinator:
        for name, tree in trees.items():
            print(f"{name}: ", end="")
            _print_store(tree, str(restriction_path(settings.output_path, name)))
        if result is not None:
            out = settings.susceptibilities.output_path or result_path(
                settings.output_path, "susceptibilities"
            )
            print(f"susceptibilities {dict(result['susceptibilities'].dataset.sizes)} -> {out}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values plus --chains-per-batch, --fsdp-size and the --array-task-id/--array-task-count pair as
    settings."""
    overrides = list(args.set or [])
    for text in overrides:
        if "=" not in text:
            raise ValueError(
                f"--set {text!r}: expected key=value; give CONFIG before --set (--set takes every "
                "KEY=VALUE after it)"
            )
    if getattr(args, "chains_per_batch", None) is not None:
        overrides.append(f"parallel.chains_per_batch={args.chains_per_batch}")
    if getattr(args, "fsdp_size", None) is not None:
        overrides.append(f"parallel.fsdp_size={args.fsdp_size}")
    if args.array_task_id is not None:
        overrides += [
            f"array_task.task_id={args.array_task_id}",
            f"array_task.task_count={args.array_task_count}",
        ]
    return overrides


def _print_sweep(res: Any) -> None:
    """One line per checkpoint / cell: label, LLC mean +- std over chains, chains used."""
    dim = "checkpoint" if "checkpoint" in res.dims else "cell"
    for i, label in enumerate(res[dim].values):
        mean, std = float(res.llc_mean[i]), float(res.llc_std[i])
        health = ""
        if "healthy" in res:  # each cell's verdict, as the HTML shows it
            problems = str(res.problems.values[i]).splitlines() if "problems" in res else []
            health = (
                "  healthy"
                if bool(res.healthy[i])
                else "  UNHEALTHY" + (f": {problems[0]}" if problems else "")
            )
        print(f"{label:>24}  LLC {mean:9.3f} +- {std:7.3f}  ({int(res.num_chains_used[i])} chains){health}")
    if res.attrs.get("missing"):
        print(f"unfinished: {', '.join(res.attrs['missing'])}")


def cmd_trajectory(args: argparse.Namespace) -> int:
    """The same estimate at every checkpoint of a training run, one store each under output_path."""
    from distinterp.jobs.settings import load_settings
    from distinterp.jobs.trajectory import TrajectorySettings, run_trajectory
    from distinterp.parallel.distributed import runtime

    settings = load_settings(args.config, _overrides(args), cls=TrajectorySettings)
    res = run_trajectory(settings)  # type: ignore[arg-type]
    if runtime().is_coordinator:
        if res is None:
            print(f"trajectory {settings.output_path}: this job's share is done; other tasks are unfinished")
        else:
            print(f"trajectory {settings.output_path}:")
            _print_sweep(res)
    return 0


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
    if args.grid:  # --grid replaces the config's grid rather than adding fields to it
        settings.grid = grid
    cal = run_calibrate(settings)  # type: ignore[arg-type]
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


def _stored_settings(url: str, options_json: str | None) -> dict[str, Any]:
    """The settings a store's creating job recorded, pointed back at that store."""
    from distinterp.store import Location, read_root_attrs

    options = _storage_options(options_json)
    attrs = read_root_attrs(Location(url, options))
    if attrs is None:
        raise FileNotFoundError(f"--from-store: no store at {url}")
    recorded = attrs.get("distinterp", {}).get("run_settings")
    if recorded is None:
        raise ValueError(
            f"--from-store: {url} records no job settings (it was written through the Python API or by "
            "devinterp); rerun the script or config that wrote it"
        )
    return {**recorded, "output_path": url, "storage_options": options}


def _storage_options(text: str | None) -> dict[str, Any]:
    try:
        options = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"--storage-options: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise ValueError(f"--storage-options: expected a JSON object, got {text}")
    return options


def _open(url: str, storage_options: dict[str, Any]) -> Any:
    from distinterp.remote import require_store
    from distinterp.store import Location, open_tree

    location = Location(url, storage_options)
    require_store(location)  # one line, fast: unreachable endpoint, no bucket, no store
    return open_tree(location)


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


def _written(result: Any) -> bool:
    """A lazy result compute_bif already wrote to its output_path."""
    return bool(getattr(result, "encoding", {}).get("source"))


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Analyses of a finished store (LLC; BIF and susceptibilities on request); refuses an incomplete one."""
    from distinterp.analyses.bif import compute_bif
    from distinterp.analyses.llc import compute_llc
    from distinterp.analyses.susceptibilities import compute_susceptibilities
    from distinterp.jobs.runner import check_output_path, result_path
    from distinterp.remote import require_reachable
    from distinterp.store import IncompleteStoreError

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
        res = compute_llc(tree, allow_partial=args.allow_partial)
        _print_llc(res)
        _print_trace(tree)
        if args.output:
            write_result(res, args.output)
            print(f"wrote {args.output}")
        if args.bif:
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
            if not lazy:
                write_result(bif, out)
            print(f"BIF {dict(bif['influences'].sizes)} -> {out}")
        if args.susceptibilities:
            stores = dict(s.split("=", 1) for s in args.susceptibilities)
            wr_map = {"full": tree, **{name: _open(url, options) for name, url in stores.items()}}
            sus = compute_susceptibilities(wr_map, sampling_task, allow_partial=args.allow_partial)
            out = result_path(base, "susceptibilities")
            write_result(sus, out)
            print(f"susceptibilities {dict(sus['susceptibilities'].dataset.sizes)} -> {out}")
    except IncompleteStoreError as e:
        print(f"distinterp aggregate: {e}\n(--allow-partial uses the complete chains only)", file=sys.stderr)
        return 2
    return 0


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


def _is_sweep_root(url: str, options: dict[str, Any]) -> bool:
    from distinterp.jobs.sweep import read_record
    from distinterp.store import Location

    return read_record(Location(url, options)) is not None


def _aggregate_sweep(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """aggregate of a trajectory / calibration root: the LLC of every store, over `checkpoint` / `cell`."""
    from distinterp.jobs.sweep import aggregate_sweep
    from distinterp.store import IncompleteStoreError

    if args.bif or args.susceptibilities:
        raise ValueError(
            f"aggregate: {args.store} is a trajectory/calibration root; --bif and "
            "--susceptibilities work on one of its stores (<root>/<label>.zarr)"
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


def cmd_inspect(args: argparse.Namespace) -> int:
    """Config, schema, layout, progress, sizes, analyses beside the store, and the diagnosis."""
    from distinterp.jobs.inspection import describe
    from distinterp.jobs.verification import checksum_line, verify_store
    from distinterp.remote import require_reachable

    options = _storage_options(args.storage_options)
    require_reachable(args.store, options)
    if args.verify:
        return verify_store(args.store, options)
    lines, diagnosis = describe(args.store, _storage_options(args.storage_options))
    print("\n".join(lines))
    print(checksum_line(args.store, options))
    _print_diagnosis(diagnosis.summary(), diagnosis.problems, diagnosis.notes)
    return 1 if args.strict and not diagnosis.healthy else 0


def cmd_report(args: argparse.Namespace) -> int:
    """PNG figures and one self-contained HTML page for a store (live or complete)."""
    from distinterp.jobs.report import report
    from distinterp.jobs.runner import check_output_path
    from distinterp.remote import require_reachable

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


def _existing(url: str | None, flag: str, options: dict[str, Any]) -> str | None:
    """A result path given on the command line, checked before any work."""
    from distinterp.store import Location

    if url is not None:
        location = Location(url, options)
        if location.is_local and not (location.local_path / "zarr.json").is_file():
            raise FileNotFoundError(f"{flag} {url}: no zarr result there")
    return url


def cmd_status(args: argparse.Namespace) -> int:
    """Per-chain progress of a store: steps done, diverged chains, completion."""
    from distinterp.analyses.chains import chain_status

    ds = _open(args.store, _storage_options(args.storage_options)).dataset
    complete, incomplete, diverged = chain_status(ds)
    steps = ds.chain_steps_done.values if "chain_steps_done" in ds else None
    print(f"{args.store}: {len(complete)}/{ds.sizes['chain']} chains complete, {ds.sizes['step']} steps each")
    for c in incomplete:
        print(f"  chain {c}: {int(steps[c]) if steps is not None else '?'} steps done")
    for c, s in sorted(diverged.items()):
        print(f"  chain {c}: diverged at step {s}")
    return 0 if not incomplete else 1


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
