"""`distinterp report STORE`: PNG figures and one self-contained HTML page (images embedded) for a store.

The page is built from `ReportFigure`s: render any matplotlib Figure with `render(...)`, and
`write_report(out, title, figures, header_html)` writes the PNGs and the page. Other reports (trajectories,
calibration sweeps) add their own figures the same way; `report()` is the one for a sampling store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from distinterp.analyses.diagnostics import Diagnosis, diagnose
from distinterp.jobs import figures
from distinterp.jobs.page import (  # noqa: F401 - the page kit's old home
    DPI,
    ReportFigure,
    diagnosis_html,
    html_page,
    new_figure,
    render,
    table_html,
    write_report,
)
from distinterp.paths import local_sibling
from distinterp.store.source import StoreSource, handle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """What report() made: the page, its figures and the diagnosis at its top."""

    path: Path
    figures: list[ReportFigure]
    diagnosis: Diagnosis


def default_out(url: str) -> Path:
    """`<store stem>.report/` beside a local store; in the working directory for a URL."""
    return Path(local_sibling(url, "report"))  # distinterp.paths' table


def report(
    samples: StoreSource | xr.DataTree,
    *,
    out: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
    bif: str | Path | xr.Dataset | None = None,
    susceptibilities: str | Path | xr.DataTree | None = None,
    tokenizer: Any = None,
) -> Report:
    """Figures and one HTML page for a sampling store (live or complete, local or a URL).

    A BIF result or susceptibilities are drawn when given, or when found beside the store
    (`<stem>.bif.zarr`, `<stem>.susceptibilities.zarr`); `tokenizer` (an object with `decode`, or a
    local/cached HF name) turns token ids into text, else the store's recorded HF model name is tried.
    """
    if isinstance(samples, xr.DataTree):
        tree, url = samples, str(samples.encoding.get("source", "") or "samples")
    else:
        store = handle(samples, storage_options)
        url = store.url
        if store.is_local and not store.exists():
            raise FileNotFoundError(f"report: no store at {store}")
        tree = store.open()
    ds = tree.dataset
    diagnosis = diagnose(ds)
    figs = figures.store_figures(ds, diagnosis)
    bif_ds = (
        figures.find_beside(url, "bif", storage_options)
        if bif is None
        else figures.open_result(bif, storage_options)
    )
    if bif_ds is not None:
        figs.append(figures.bif_figure(bif_ds))
    sus = (
        figures.find_beside(url, "susceptibilities", storage_options, tree=True)
        if susceptibilities is None
        else figures.open_result(susceptibilities, storage_options, tree=True)
    )
    if sus is not None:
        figs.append(figures.susceptibility_figure(sus, figures.resolve_tokenizer(tokenizer, ds)))
    c = diagnosis.checks
    summary = table_html(
        [
            ("store", url),
            ("LLC", f"{float(c.llc_mean):.4g} ± {float(c.llc_std):.3g} (std over chains used)"),
            (
                "chains",
                f"{int(c.complete.sum())}/{c.sizes['chain']} complete, {int((c.diverged_step >= 0).sum())} diverged",
            ),
            ("split R-hat / bulk ESS", f"{float(c.rhat):.4f} / {float(c.ess_bulk):.0f}"),
            (
                "d (sampled parameters)",
                str(int(c.num_sampled_params)) if int(c.num_sampled_params) >= 0 else "not recorded",
            ),
            ("n_beta", f"{float(c.n_beta):g}"),
        ]
    )
    path = write_report(
        out or default_out(url), f"distinterp report: {url}", figs, diagnosis_html(diagnosis) + summary
    )
    logger.info("report: wrote %s (%d figures)", path, len(figs))
    return Report(path=path, figures=figs, diagnosis=diagnosis)
