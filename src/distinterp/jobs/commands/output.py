"""What the commands print: the LLC, a diagnosis, the LLC trace, a store's chains, a sweep's table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distinterp.analyses.chains import llc_estimate


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
    trace = llc_estimate(per_draw, ds.init_loss.mean(dim="token_pos"), n_beta).mean(dim="chain").values
    trace = trace[np.isfinite(trace)]
    if trace.size < 2:
        return
    windows = np.array_split(trace, min(width, trace.size))
    means = np.array([w.mean() for w in windows])
    lo, hi = float(means.min()), float(means.max())
    scale = (means - lo) / (hi - lo) if hi > lo else np.zeros_like(means)
    line = "".join(SPARK[int(v * (len(SPARK) - 1) + 0.5)] for v in scale)
    print(f"trace     {line}  (LLC estimate over {trace.size} draws, {lo:.2f} .. {hi:.2f})")


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


def _print_grid(kind: str, output_path: Any, res: Any) -> None:
    """What a grid-shaped command (sweep, trajectory) prints on the coordinator: its table, or that this
    job's share is done while other array tasks are not."""
    if res is None:
        print(f"{kind} {output_path}: this job's share is done; other tasks are unfinished")
        return
    print(f"{kind} {output_path}:")
    _print_sweep(res)


def _print_sweep(res: Any) -> None:
    """One line per checkpoint / cell: label, LLC mean +- std over chains, chains used. A grid's axes
    (more than one dim besides `chain`) print as one line per cell, labelled axis=value,..."""
    axes = [str(d) for d in res.llc_mean.dims]
    if len(axes) > 1:
        shown = [a for a in axes if res.sizes[a] > 1] or axes  # a one-value axis names no cell apart
        res = res.drop_vars([c for c in res.coords if c not in axes]).stack(cell=axes)
        names = [",".join(f"{a}={v}" for a, v in zip(axes, key) if a in shown) for key in res.cell.values]
        res = res.drop_vars(["cell", *axes]).assign_coords(cell=names)
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
        sem = f" (s.e. {float(res.llc_sem[i]):.3g})" if dim == "cell" and "llc_sem" in res else ""
        print(
            f"{label:>24}  LLC {mean:9.3f} +- {std:7.3f}{sem}  ({int(res.num_chains_used[i])} chains){health}"
        )
    estimate = float(res.attrs.get("estimate", float("nan")))
    if dim == "cell" and math.isfinite(estimate):  # a calibration: the rule's number and its precision
        se = float(res.attrs.get("estimate_se", float("nan")))
        z = float(res.attrs.get("estimate_z", 2.0))  # 95 %: Student's t over the chains
        share = (
            f"; 95 % interval +- {z:.3g} s.e. = +- {z * se / abs(estimate):.1%} of it"
            if math.isfinite(se) and estimate
            else ""
        )
        print(f"{'rule estimate':>24}  LLC {estimate:9.3f} +- {se:7.3g} (s.e.{share})")
    if res.attrs.get("missing"):
        print(f"unfinished: {', '.join(res.attrs['missing'])}")
