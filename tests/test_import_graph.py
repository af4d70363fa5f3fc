"""No import circles and nothing imported upward (scripts/import_graph.py, from the source with ast), and
every name that moved still imports from its old home."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-imports-in-functions"])
def test_no_import_circles_and_nothing_imported_upward(lazy):
    g = script()
    edges = g.graph(lazy=lazy)
    assert len(edges) > 50
    assert g.circles(edges) == []
    assert g.upward(edges) == []


def test_the_check_finds_a_circle_and_an_upward_import(tmp_path):
    """It can fail: a two-module circle through an import inside a function, and base importing jobs."""
    pkg = tmp_path / "distinterp"
    (pkg / "jobs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs" / "__init__.py").write_text("")
    (pkg / "store.py").write_text("def f():\n    from distinterp.jobs import cli\n")
    (pkg / "jobs" / "cli.py").write_text("from distinterp.store import f\n")
    g = script()
    edges = g.graph(lazy=True, src=tmp_path)
    assert g.circles(edges) == [["distinterp.jobs.cli", "distinterp.store"]]
    assert g.upward(edges) == [("distinterp.store", "distinterp.jobs.cli")]
    assert g.circles(g.graph(lazy=False, src=tmp_path)) == []  # the function-level import is the circle


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("distinterp.analyses.llc", "llc", "distinterp.api"),
        ("distinterp.analyses.llc", "chain_status", "distinterp.analyses.chains"),
        ("distinterp.analyses.llc", "llc_estimate", "distinterp.analyses.chains"),
        ("distinterp.analyses.llc", "usable_chains", "distinterp.analyses.chains"),
        ("distinterp.analyses.bif", "bif", "distinterp.api"),
        ("distinterp.analyses.susceptibilities", "susceptibilities", "distinterp.api"),
        ("distinterp.jobs.report", "ReportFigure", "distinterp.jobs.page"),
        ("distinterp.jobs.report", "write_report", "distinterp.jobs.page"),
        ("distinterp.sampling", "model_fingerprint", "distinterp.identity"),
        ("distinterp.jobs.runner", "RUN_SPECIFIC", "distinterp.identity"),
        ("distinterp.jobs.runner", "job_chains", "distinterp.jobs.route"),
        ("distinterp", "llc", "distinterp.api"),
        ("distinterp", "__version__", "distinterp._version"),
        ("distinterp.store", "StoreError", "distinterp.errors"),
        ("distinterp.store", "IncompleteStoreError", "distinterp.errors"),
        ("distinterp.analyses.bif", "AnalysisInputError", "distinterp.errors"),
        ("distinterp.jobs.sources", "SourceError", "distinterp.errors"),
        ("distinterp.analyses.diagnostics", "UnhealthyRunWarning", "distinterp.errors"),
    ],
)
def test_moved_names_import_from_their_old_homes(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)
