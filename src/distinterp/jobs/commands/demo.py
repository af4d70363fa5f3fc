"""`distinterp demo`: the LLC of a built-in model with a known answer."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import warnings

from distinterp.jobs.commands.inputs import _open
from distinterp.jobs.commands.output import _print_llc, _print_trace

DEMO_STORE = "runs/demo.zarr"


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
