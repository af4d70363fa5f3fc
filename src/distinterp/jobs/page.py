"""The report's page kit: figures rendered to PNG (`ReportFigure`, `new_figure`, `render`) and one
self-contained HTML page (`write_report`). Apart from the figures and report(), so neither imports the other.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from distinterp.analyses.diagnostics import Diagnosis

DPI = 110


@dataclass(frozen=True)
class ReportFigure:
    """One rendered figure: its file stem, title, PNG bytes, caption, and the arrays it draws (for tests)."""

    name: str
    title: str
    png: bytes
    caption: str = ""
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def new_figure(
    rows: int = 1, cols: int = 1, *, width: float = 9.0, height: float = 4.0
) -> tuple[Figure, Any]:
    """A matplotlib Figure (no pyplot: no global state, no GUI backend) and its axes."""
    fig = Figure(figsize=(width, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def render(fig: Figure, name: str, title: str, caption: str = "", **data: Any) -> ReportFigure:
    """PNG bytes of a finished figure, wrapped with what it shows."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return ReportFigure(name=name, title=title, png=buf.getvalue(), caption=caption, data=data)


def diagnosis_html(diagnosis: Diagnosis) -> str:
    """The verdict, problems and notes as an HTML block for the top of a page."""
    ok = diagnosis.healthy
    parts = [
        f'<div class="verdict {"ok" if ok else "bad"}">diagnosis: {html.escape(diagnosis.summary())}</div>'
    ]
    if diagnosis.problems:
        parts.append("<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in diagnosis.problems) + "</ul>")
    if diagnosis.notes:
        parts.append(
            '<ul class="notes">'
            + "".join(f"<li>note: {html.escape(n)}</li>" for n in diagnosis.notes)
            + "</ul>"
        )
    return "\n".join(parts)


def table_html(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column key/value table."""
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
.verdict { font-size: 1.2em; font-weight: bold; padding: .5em .8em; border-radius: 4px; }
.ok { background: #e3f4e3; } .bad { background: #fbe3e3; }
.notes { color: #666; } table { border-collapse: collapse; margin: 1em 0; }
th, td { text-align: left; padding: .2em 1em .2em 0; } img { max-width: 100%; }
figure { margin: 2em 0; } figcaption { color: #555; }
"""


def html_page(title: str, figures: Sequence[ReportFigure], header_html: str = "") -> str:
    """One self-contained page: the header, then every figure embedded as a base64 PNG with its caption."""
    body = [f"<h1>{html.escape(title)}</h1>", header_html]
    for f in figures:
        b64 = base64.b64encode(f.png).decode()
        body.append(
            f'<figure id="{html.escape(f.name)}"><h2>{html.escape(f.title)}</h2>'
            f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(out: str | Path, title: str, figures: Sequence[ReportFigure], header_html: str = "") -> Path:
    """Write each figure as out/<name>.png and the page as out/index.html; returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in figures:
        (out / f"{f.name}.png").write_bytes(f.png)
    page = out / "index.html"
    page.write_text(html_page(title, figures, header_html), encoding="utf-8")
    return page
