"""Location answers what callers used to decide themselves: paths beside a store (one table), existence,
atomic writes (issue 19)."""

from __future__ import annotations

from pathlib import Path

from distinterp.paths import SIBLINGS, result_candidates, sibling
from distinterp.store import Location


def test_siblings_come_from_one_table(tmp_path: Path) -> None:
    store = Location(str(tmp_path / "run.zarr"), {"anon": True})
    assert store.sibling("checkpoints").url == f"{tmp_path}/run.zarr.checkpoints"
    assert store.sibling("bif").url == f"{tmp_path}/run.bif.zarr"
    assert store.sibling("child", "step10").url == f"{tmp_path}/run.zarr/step10.zarr"
    assert store.sibling("numerics").storage_options == {"anon": True}
    assert sibling("s3://b/x/run.zarr/", "report") == "s3://b/x/run.report"
    assert set(SIBLINGS) >= {"checkpoints", "numerics", "report", "bif", "susceptibilities", "restriction"}
    assert result_candidates("d/sus_l0h1.zarr", "susceptibilities") == [
        "d/sus_l0h1.susceptibilities.zarr",
        "d/sus.susceptibilities.zarr",
    ]


def test_atomic_write_and_existence(tmp_path: Path) -> None:
    target = Location(str(tmp_path / "deep" / "record.json"))
    assert not target.exists()
    target.write_atomic(b"one")
    target.write_atomic(b"two")
    assert target.exists() and target.local_path.read_bytes() == b"two"
    assert [p.name for p in target.local_path.parent.iterdir()] == ["record.json"]  # no temp file left
