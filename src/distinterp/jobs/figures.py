"""The report's figures of a sampling store: loss traces, the LLC over draws, LLC per chain, metrics_*
traces, a BIF heatmap and per-token susceptibilities over the text. Each returns a ReportFigure."""

from __future__ import annotations

import logging
from typing import Any

import fsspec
import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import TwoSlopeNorm

from distinterp.analyses.chains import llc_estimate
from distinterp.analyses.diagnostics import Diagnosis
from distinterp.jobs.page import ReportFigure, new_figure, render
from distinterp.paths import result_candidates
from distinterp.store import Location

logger = logging.getLogger(__name__)

MAX_BIF_ROWS = 64
"""The BIF heatmap shows at most this many sequences per side (the first ones)."""


def running_llc(trace: np.ndarray, init_loss: float, n_beta: float) -> np.ndarray:
    """Per chain, the LLC estimate from the first t steps (cumulative mean), NaN where a chain has no data."""
    finite = np.isfinite(trace)
    csum = np.cumsum(np.where(finite, trace, 0.0), axis=-1)
    count = np.cumsum(finite, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, csum / count, np.nan)
    return np.asarray(llc_estimate(mean, init_loss, n_beta))


def rolling_mean(trace: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps along the last axis (shorter at the start; NaN stays NaN)."""
    x = np.asarray(trace, dtype=np.float64)
    finite = np.isfinite(x)
    csum = np.cumsum(np.where(finite, x, 0.0), axis=-1)
    count = np.cumsum(finite, axis=-1)
    pad = [(0, 0)] * (x.ndim - 1) + [(window, 0)]
    csum, count = np.pad(csum, pad), np.pad(count, pad)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[..., window:] - csum[..., :-window]) / (count[..., window:] - count[..., :-window])
    return np.where(finite, out, np.nan)


def _burnin(ds: xr.Dataset) -> int:
    return int(
        ds.attrs.get("metadata", {}).get("config", {}).get("sampler", {}).get("num_burnin_steps", 0) or 0
    )


def _shade_burnin(ax: Any, burnin: int) -> None:
    if burnin > 0:
        ax.axvspan(0, burnin, color="0.9", label=f"burn-in ({burnin} steps)")


def loss_traces_figure(ds: xr.Dataset, checks: xr.Dataset) -> ReportFigure:
    """Per-chain mean minibatch loss per step, with the initial loss."""
    trace = checks.loss_trace.values
    init = float(checks.init_loss)
    fig, ax = new_figure()
    ax = ax[0, 0]
    _shade_burnin(ax, _burnin(ds))
    window = max(1, trace.shape[1] // 50)
    smooth = rolling_mean(trace, window)
    for c in range(trace.shape[0]):
        (line,) = ax.plot(trace[c], lw=0.5, alpha=0.25)
        ax.plot(smooth[c], lw=1.5, color=line.get_color(), label=f"chain {c}")
    ax.axhline(init, color="k", ls="--", lw=1.2, label=f"initial loss {init:.4g}")
    finite = trace[np.isfinite(trace)]
    if finite.size and finite.min() > 0 and finite.max() / max(init, finite.min()) > 1e3:
        ax.set_yscale("log")  # a blown-up run: the initial loss stays visible
    ax.set(xlabel="SGLD step", ylabel="mean per-token loss (minibatch)")
    ax.legend(loc="best", fontsize=8, ncol=2)
    return render(
        fig,
        "loss_traces",
        "Sampling loss per chain",
        f"Each chain's minibatch loss at every step (faint) and its rolling mean over {window} steps, "
        "burn-in shaded, against the loss at the checkpoint. A healthy chain rises a little above it and "
        "stays level.",
        trace=trace,
        smooth=smooth,
        init_loss=init,
    )


def llc_over_draws_figure(ds: xr.Dataset, checks: xr.Dataset) -> ReportFigure:
    """The LLC estimate from the first t steps, per chain and its mean over chains."""
    run = running_llc(checks.loss_trace.values, float(checks.init_loss), float(checks.n_beta))
    use = checks.attrs.get("chains_used", list(range(run.shape[0])))
    mean = (
        np.nanmean(run[use], axis=0) if use and np.isfinite(run[use]).any() else np.full(run.shape[1], np.nan)
    )
    fig, ax = new_figure()
    ax = ax[0, 0]
    _shade_burnin(ax, _burnin(ds))
    for c in range(run.shape[0]):
        ax.plot(run[c], lw=0.8, alpha=0.7, label=f"chain {c}")
    ax.plot(mean, color="k", lw=2, label="mean over chains")
    ax.set(xlabel="SGLD step", ylabel="LLC estimate so far")
    ax.legend(loc="best", fontsize=8, ncol=2)
    return render(
        fig,
        "llc_over_draws",
        "LLC estimate over draws",
        "n_beta (mean loss of the first t steps - initial loss), per chain and their mean: it should settle.",
        running=run,
        mean=mean,
    )


def llc_per_chain_figure(checks: xr.Dataset) -> ReportFigure:
    """Each chain's LLC with its Monte Carlo error, and the mean +- std over the chains used."""
    llc, err = checks.llc.values, checks.llc_mcse.values
    mean, std = float(checks.llc_mean), float(checks.llc_std)
    chains = np.arange(llc.size)
    fig, ax = new_figure(width=7.0, height=3.5)
    ax = ax[0, 0]
    ax.axhspan(
        mean - std, mean + std, color="tab:blue", alpha=0.15, label=f"mean ± std {mean:.4g} ± {std:.3g}"
    )
    ax.axhline(mean, color="tab:blue")
    bad = checks.flagged.any("check").values
    ax.errorbar(
        chains[~bad], llc[~bad], yerr=err[~bad], fmt="o", color="k", capsize=3, label="chain (± MCSE)"
    )
    if bad.any():
        ax.errorbar(
            chains[bad], llc[bad], yerr=err[bad], fmt="x", color="tab:red", capsize=3, label="flagged"
        )
    ax.set(xlabel="chain", ylabel="LLC", xticks=chains)
    ax.legend(loc="best", fontsize=8)
    return render(
        fig,
        "llc_per_chain",
        "LLC per chain",
        "Each chain's estimate with its Monte Carlo standard error; flagged chains in red.",
        llc=llc,
        mcse=err,
        mean=mean,
        std=std,
    )


def metrics_figure(ds: xr.Dataset) -> ReportFigure | None:
    """Every metrics_* trace (save_metrics=True), one panel each, all chains."""
    values_of = {
        n: np.asarray(ds[n].values, dtype=np.float64)
        for n in sorted(str(v) for v in ds.data_vars)
        if n.startswith("metrics_")
    }
    names = [n for n, v in values_of.items() if np.nan_to_num(v).any()]  # all-zero: a term that is off
    off = [n.removeprefix("metrics_") for n in values_of if n not in names]
    if not names:
        return None
    cols = 2
    rows = -(-len(names) // cols)
    fig, axes = new_figure(rows, cols, width=10.0, height=2.4)
    data: dict[str, np.ndarray] = {}
    for k, name in enumerate(names):
        ax = axes[k // cols, k % cols]
        values = values_of[name]
        data[name] = values
        is_mala = name == "metrics_mala_acceptance"
        for c in range(values.shape[0]):
            if is_mala:  # near 0/1 step to step: its rolling mean says more
                (line,) = ax.plot(values[c], lw=0.4, alpha=0.15)
                smooth = rolling_mean(values[c : c + 1, 1:], max(1, values.shape[1] // 50))[0]
                ax.plot(
                    np.arange(1, values.shape[1]), smooth, lw=1.2, color=line.get_color(), label=f"chain {c}"
                )
            else:
                ax.plot(values[c], lw=0.6, alpha=0.8, label=f"chain {c}")
        bad = ~np.isfinite(values[:, 1:] if is_mala else values)  # (mala: no previous point at step 0)
        if bad.any():
            first = int(np.argmax(bad.any(axis=0))) + int(is_mala)
            ax.text(
                0.5,
                0.5,
                f"non-finite from step {first}",
                transform=ax.transAxes,
                ha="center",
                color="tab:red",
            )
        if k == 0:
            ax.legend(fontsize=7, ncol=2)
        ax.set_title(name.removeprefix("metrics_"), fontsize=9)
        if is_mala:
            ax.set_title("mala_acceptance (rolling mean; ~0.9 aimed for)", fontsize=9)
            ax.axhline(0.9, color="k", ls="--", lw=1)
            ax.set_ylim(-0.02, 1.02)
    for k in range(len(names), rows * cols):
        axes[k // cols, k % cols].set_visible(False)
    return render(
        fig,
        "metrics",
        "Sampler metrics per step",
        "save_metrics traces, all chains: norms of the update's terms, distance from the checkpoint, "
        "dot products"
        + (", MALA acceptance (aim ~0.9)" if "metrics_mala_acceptance" in ds else "")
        + (f". Zero throughout (not drawn): {', '.join(off)}." if off else "."),
        **data,
    )


def store_figures(ds: xr.Dataset, diagnosis: Diagnosis) -> list[ReportFigure]:
    """The figures every sampling store gets."""
    c = diagnosis.checks
    figs = [loss_traces_figure(ds, c), llc_over_draws_figure(ds, c), llc_per_chain_figure(c)]
    m = metrics_figure(ds)
    return figs + ([m] if m is not None else [])


# ─── results beside the store ───────────────────────────────────────────────


def open_result(source: Any, storage_options: dict[str, Any] | None, tree: bool = False) -> Any:
    """A BIF Dataset / susceptibilities DataTree, given as itself or as a path/URL."""
    if isinstance(source, (xr.Dataset, xr.DataTree)):
        return source
    location = Location(str(source), dict(storage_options or {}))
    options = None if location.is_local else location.fsspec_options()
    if tree:
        return xr.open_datatree(str(source), engine="zarr", consolidated=False, storage_options=options)
    return xr.open_dataset(str(source), engine="zarr", consolidated=False, storage_options=options)


def find_beside(url: str, name: str, storage_options: dict[str, Any] | None, tree: bool = False) -> Any:
    """The `name` result beside the store (`<stem>.<name>.zarr`, or the susceptibilities job's one result
    for all its `<base>_<restriction>.zarr` stores), opened, or None when there is none."""
    for candidate in result_candidates(url, name):
        location = Location(candidate, dict(storage_options or {}))
        fs, path = fsspec.core.url_to_fs(candidate, **location.fsspec_options())
        if fs.exists(f"{path}/zarr.json"):  # not SampleStore.exists: a missing bucket here means no result
            return open_result(candidate, storage_options, tree=tree)
    return None


def bif_figure(bif: xr.Dataset) -> ReportFigure:
    """The BIF between sequences as a heatmap (token-wise results averaged over positions)."""
    inf = bif["influences"]
    n1, n2 = min(inf.sizes["batch_1"], MAX_BIF_ROWS), min(inf.sizes["batch_2"], MAX_BIF_ROWS)
    block = np.asarray(inf.isel(batch_1=slice(0, n1), batch_2=slice(0, n2)).values, dtype=np.float64)
    if block.ndim == 4:
        block = np.nanmean(block, axis=(2, 3))
    fig, ax = new_figure(width=6.5, height=5.5)
    ax = ax[0, 0]
    lim = float(np.nanmax(np.abs(block))) or 1.0
    im = ax.imshow(block, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="BIF" + (" (mean over positions)" if inf.ndim == 4 else ""))
    ax.set(xlabel="sequence (batch_2)", ylabel="sequence (batch_1)")
    shown = (
        f"the first {n1} x {n2} sequences"
        if (n1, n2) != (inf.sizes["batch_1"], inf.sizes["batch_2"])
        else "all sequences"
    )
    return render(
        fig,
        "bif",
        "Bayesian influence between sequences",
        f"Correlation of losses over draws; {shown}.",
        matrix=block,
    )


def resolve_tokenizer(tokenizer: Any, ds: xr.Dataset) -> Any:
    """The tokenizer to decode ids with: the given object or HF name, else the store's recorded HF model."""
    if tokenizer is not None and hasattr(tokenizer, "decode"):
        return tokenizer
    name = tokenizer
    if name is None:
        model = ds.attrs.get("distinterp", {}).get("run_settings", {}).get("model", {})
        name = model.get("name") if model.get("source") == "hf" else None
    if name is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(name), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - no tokenizer is fine: token ids are drawn instead
        logger.info("report: no tokenizer %r (%s); drawing token ids", name, e)
        return None


def _token_labels(ids: np.ndarray, tokenizer: Any) -> list[str]:
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return [tokenizer.decode([int(i)]).replace("\n", "⏎") or "·" for i in ids]


def susceptibility_figure(sus: xr.DataTree, tokenizer: Any = None) -> ReportFigure:
    """Per-token susceptibility of the first sequence, one row of coloured tokens per restriction."""
    s = sus["susceptibilities"].dataset
    ctx = sus["context"].dataset
    first = (s.dataset_id.values == 0) & (s.batch.values == 0)
    values = np.asarray(s.sus.values[first], dtype=np.float64)  # (target positions, wr)
    positions = s.target_position.values[first]
    cfirst = (ctx.dataset_id.values == 0) & (ctx.batch.values == 0)
    ids = np.asarray(ctx.input_ids.values[cfirst])[positions]  # the predicted tokens
    labels = _token_labels(ids, tokenizer)
    wrs = [str(w) for w in s.wr.values]
    lim = float(np.nanmax(np.abs(values))) or 1.0
    norm, cmap = TwoSlopeNorm(0.0, -lim, lim), colormaps["RdBu_r"]
    per_line = 16
    lines = -(-len(labels) // per_line)
    fig, axes = new_figure(len(wrs), 1, width=11.0, height=0.45 * lines + 0.6)
    for r, wr in enumerate(wrs):
        ax = axes[r, 0]
        ax.set_axis_off()
        ax.set_title(f"restriction {wr}", fontsize=9, loc="left")
        for k, label in enumerate(labels):
            x, y = (k % per_line) / per_line, 1 - (k // per_line + 0.5) / lines
            ax.text(
                x,
                y,
                label[:10],
                fontsize=8,
                family="monospace",
                va="center",
                color="white" if abs(values[k, r]) > 0.6 * lim else "black",
                bbox={
                    "boxstyle": "round,pad=0.2",
                    "facecolor": cmap(norm(values[k, r])),
                    "edgecolor": "none",
                },
            )
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes[:, 0].tolist(), shrink=0.8, label="susceptibility")
    return render(
        fig,
        "susceptibilities",
        "Per-token susceptibilities (first sequence)",
        ("Decoded tokens" if tokenizer is not None else "Token ids (no tokenizer known)")
        + f", coloured by susceptibility (red > 0 > blue, |max| {lim:.3g}).",
        values=values,
        labels=labels,
        restrictions=wrs,
    )
