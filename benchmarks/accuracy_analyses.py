"""compute_bif / compute_susceptibilities / compute_llc: how far distinterp and devinterp 2.x are from a
float64 evaluation of the same formulas (tests' numpy references), on stores sampled from a tiny GPT-2.

    PYTHONPATH=src:. python benchmarks/accuracy_analyses.py [--json out.json] [--chains 4] [--draws 100]
        [--rows 16] [--ctx 16] [--lr 1e-3] [--smoke]

Prints, per analysis and option, the largest absolute difference of each implementation from float64
and between the two. Both read the same float32 store; the differences are the analyses' own arithmetic.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import harness
import numpy as np

LR = 1e-3


def sample_stores(out: Path, chains: int, draws: int, rows: int, ctx: int, lr: float) -> dict[str, Any]:
    """Stores of the full model and of head l0h1 (for susceptibilities), with observables train / probe."""
    import distinterp
    from distinterp import toy
    from tests.conftest import token_dataset

    model = toy.tiny_gpt2(vocab_size=64, n_layer=2, n_embd=32, n_head=4)
    train = token_dataset(rows=64, seq=ctx + 1, vocab_size=64, seed=1)
    probe = token_dataset(rows=64, seq=ctx + 1, vocab_size=64, seed=2)
    kw = dict(lr=lr, n_beta=30.0, num_chains=chains, num_draws=draws, batch_size=rows // 2)
    obs = {"train": (train, 2), "probe": (probe, 2)}
    masks = {"full": None, "l0h1": distinterp.create_param_masks(model, "l0h1")}
    return {
        name: distinterp.sample(model, train, obs, param_masks=m, output_path=out / f"{name}.zarr", **kw)
        for name, m in masks.items()
    }


def measure(trees: dict[str, Any]) -> list[dict[str, Any]]:
    from devinterp.slt.bif import compute_bif as dv_bif
    from devinterp.slt.llc import compute_llc as dv_llc
    from devinterp.slt.susceptibilities import compute_susceptibilities as dv_sus

    import distinterp
    from tests.test_bif import numpy_bif
    from tests.test_susceptibilities import numpy_sus

    full = trees["full"]
    losses = {k.removeprefix("loss_"): full.dataset[k].values for k in ("loss_probe", "loss_train")}
    rows = []

    def row(name: str, ours: np.ndarray, theirs: np.ndarray, ref: np.ndarray) -> None:
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        rows.append(
            {
                "analysis": name,
                "ours_vs_float64": float(np.max(np.abs(ours - ref))),
                "devinterp_vs_float64": float(np.max(np.abs(theirs - ref))),
                "ours_vs_devinterp": float(np.max(np.abs(ours - theirs))),
                "scale": float(np.max(np.abs(ref))),
            }
        )

    for method in ("token", "sequence"):
        for reduce in ("stack", "mean"):
            for cov in (False, True):
                opts = dict(
                    correlation_method=method, reduce_chain_dimension_method=reduce, compute_covariance=cov
                )
                ref = numpy_bif(losses, token=method == "token", mean=reduce == "mean", covariance=cov)
                ours = distinterp.compute_bif(full, device="cpu", **opts)["influences"].values
                theirs = dv_bif(full, device="cpu", **opts)["influences"].values
                row(f"bif {method} {reduce}{' covariance' if cov else ''}", ours, theirs, ref)

    ours_s = distinterp.compute_susceptibilities(trees, "train")["susceptibilities"].to_dataset()
    theirs_s = dv_sus(trees, "train")["susceptibilities"].to_dataset()
    expected = numpy_sus(trees, "train", "probe")["l0h1"]
    sel = ours_s["dataset_id"].values == ours_s.attrs["dataset_id_to_name"].index("probe")
    ref = expected[ours_s["batch"].values[sel], ours_s["target_position"].values[sel] - 1]
    row(
        "susceptibilities",
        ours_s["sus"].sel(wr="l0h1").values[sel],
        theirs_s["sus"].sel(wr="l0h1").values[sel],
        ref,
    )

    micro = full.dataset["sampling_loss_micro"].values.astype(np.float64)
    n_beta = float(full.dataset["n_beta"].values)
    l0 = full.dataset["init_loss"].values.astype(np.float64).mean()
    ref = n_beta * (micro.mean(axis=(1, 2, 3)) - l0)
    row(
        "llc_per_chain",
        distinterp.compute_llc(full)["llc_per_chain"].values,
        dv_llc(full)["llc_per_chain"].values,
        ref,
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--rows", type=int, default=16, help="rows per observable (two observables)")
    p.add_argument("--ctx", type=int, default=16)
    p.add_argument(
        "--lr", type=float, default=LR, help="SGLD step: smaller means less loss variance per mean"
    )
    p.add_argument("--smoke", action="store_true", help="tiny stores (seconds; checks the script)")
    args = p.parse_args()
    if args.smoke:
        args.chains, args.draws, args.rows, args.ctx = 2, 4, 4, 4
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        trees = sample_stores(Path(tmp), args.chains, args.draws, args.rows, args.ctx, args.lr)
        rows = measure(trees)
    title = (
        f"{args.chains} chains x {args.draws} draws, 2 x {args.rows} rows x {args.ctx} tokens, lr {args.lr}"
    )
    harness.print_table(f"largest |difference| ({title})", rows)
    harness.write_json(args.json, {"accuracy": {"args": vars(args), "rows": rows}})


if __name__ == "__main__":
    main()
