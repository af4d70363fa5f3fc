"""The `distinterp` command: demo, sample, aggregate, status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

DEMO_STORE = "runs/demo.zarr"


def _print_llc(res: Any, truth: float | None = None) -> None:
    per_chain = np.asarray(res.llc_per_chain.values)
    print(
        f"LLC mean  {float(res.llc_mean):.3f}  (std over chains {float(res.llc_std):.3f}, {per_chain.size} chains)"
    )
    print("per chain " + " ".join(f"{v:.2f}" for v in per_chain))
    if res.attrs.get("excluded_chains"):
        print(f"excluded  {res.attrs['excluded_chains']}")
    if truth is not None:
        print(f"theory    {truth:.3f}  (relative error {abs(float(res.llc_mean) - truth) / truth:.1%})")


def cmd_demo(args: argparse.Namespace) -> int:
    """LLC of the built-in bigram model at its MLE, whose true learning coefficient is V(V-1)/2."""
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
        ]
        rest = ["-m", "distinterp", "demo", "--output", args.output, "--vocab", str(args.vocab)]
        return subprocess.call([*torchrun, *rest] + (["--fresh"] if args.fresh else []))
    from distinterp import toy
    from distinterp.distributed import runtime
    from distinterp.llc import llc

    rt = runtime()
    if args.fresh and rt.is_coordinator and os.path.isdir(args.output):
        shutil.rmtree(args.output)
    rt.barrier()
    transition = toy.markov_chain(args.vocab, seed=0)
    data = toy.markov_dataset(transition, seq_len=65, n_rows=512, seed=1)
    model = toy.bigram_mle(data, args.vocab)
    settings = dict(toy.BIGRAM_LLC_SETTINGS)
    res = llc(model, data, {"train": data}, output_path=args.output, **settings)
    if rt.is_coordinator:
        print(f"\nstore     {args.output}  ({rt.world_size} rank(s))")
        _print_llc(res, truth=toy.bigram_learning_coefficient(args.vocab))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from distinterp.distributed import runtime
    from distinterp.runner import run_sample
    from distinterp.settings import load_settings

    overrides = list(args.set or [])
    if args.array_task_id is not None:
        overrides += [
            f"array_task.task_id={args.array_task_id}",
            f"array_task.task_count={args.array_task_count}",
        ]
    settings = load_settings(args.config, overrides)
    tree, results = run_sample(settings)
    if runtime().is_coordinator:
        steps = tree.dataset.chain_steps_done.values
        print(
            f"store {settings.output_path}: {int((steps >= tree.dataset.sizes['step']).sum())}/{steps.size} chains complete"
        )
        if "llc" in results:
            _print_llc(results["llc"])
    return 0


def _open(url: str, storage_options: dict[str, Any]) -> Any:
    from distinterp.store import Location, open_tree

    return open_tree(Location(url, storage_options))


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Analyses of a finished store; refuses an incomplete one, listing what is missing."""
    from distinterp.llc import compute_llc
    from distinterp.store import IncompleteStoreError

    tree = _open(args.store, json.loads(args.storage_options or "{}"))
    try:
        res = compute_llc(tree, allow_partial=args.allow_partial)
    except IncompleteStoreError as e:
        print(f"distinterp aggregate: {e}", file=sys.stderr)
        return 2
    _print_llc(res)
    if args.output:
        res.to_netcdf(args.output) if args.output.endswith(".nc") else res.to_zarr(args.output, mode="w")
        print(f"wrote {args.output}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per-chain progress of a store: steps done, diverged chains, completion."""
    from distinterp.llc import chain_status

    ds = _open(args.store, json.loads(args.storage_options or "{}")).dataset
    complete, incomplete, diverged = chain_status(ds)
    steps = ds.chain_steps_done.values if "chain_steps_done" in ds else None
    print(f"{args.store}: {len(complete)}/{ds.sizes['chain']} chains complete, {ds.sizes['step']} steps each")
    for c in incomplete:
        print(f"  chain {c}: {int(steps[c]) if steps is not None else '?'} steps done")
    for c, s in sorted(diverged.items()):
        print(f"  chain {c}: diverged at step {s}")
    return 0 if not incomplete else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distinterp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="LLC of a tiny built-in model (known answer) into a local store")
    d.add_argument("--nproc", type=int, default=2, help="ranks to run on (torchrun, gloo on CPU)")
    d.add_argument("--output", default=DEMO_STORE)
    d.add_argument("--vocab", type=int, default=6)
    d.add_argument("--fresh", action="store_true", help="delete an existing demo store first")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "sample", help="run a sampling job from a YAML config (works under torchrun / Slurm arrays)"
    )
    s.add_argument("config", nargs="?", help="YAML settings file")
    s.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. sampler.lr=1e-3"
    )
    s.add_argument("--array-task-id", type=int)
    s.add_argument("--array-task-count", type=int)
    s.set_defaults(func=cmd_sample)

    for name, helptext, func in [
        ("aggregate", "analyses of a complete store (LLC)", cmd_aggregate),
        ("status", "per-chain progress of a store", cmd_status),
    ]:
        a = sub.add_parser(name, help=helptext)
        a.add_argument("store", help="store path or URL")
        a.add_argument(
            "--storage-options", help="fsspec options as JSON (credentials: prefer AWS_* variables)"
        )
        if name == "aggregate":
            a.add_argument("--allow-partial", action="store_true", help="use complete chains only")
            a.add_argument("--output", help="write the result (.nc or .zarr)")
        a.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "sample" and (args.array_task_id is None) != (args.array_task_count is None):
        parser().error("--array-task-id and --array-task-count go together")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
