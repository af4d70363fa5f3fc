"""provenance: the creator records the numeric environment once; continuing under another one warns and
writes that writer's own record beside the store, never touching the store's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import xarray as xr

import distinterp
from distinterp.provenance import NumericEnvironmentWarning
from tests.conftest import SMALL, tiny_gpt2, token_dataset


def _attrs(path: Path) -> dict:
    return xr.open_datatree(path, engine="zarr", consolidated=False).attrs["distinterp"]


def test_creator_records_the_numeric_environment(model, dataset, tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    distinterp.sample(model, dataset, {"train": dataset}, output_path=out, **SMALL)
    env = _attrs(out)["numerics"]
    assert env == {
        "device": "cpu",
        "device_kind": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cuda": None,
        "threads_per_process": torch.get_num_threads(),
        "dtype": "float32",
        "deterministic_algorithms": False,
        "engine": "serial",
        "compile": False,
    }
    assert not Path(f"{out}.numerics").exists()


def test_continuing_under_other_threads_warns_and_records_it(tmp_path: Path) -> None:
    model, ds = tiny_gpt2(), token_dataset()
    out = tmp_path / "run.zarr"
    distinterp.sample(model, ds, {"train": ds}, output_path=out, chains=[0], **SMALL)
    meta = (out / "zarr.json").read_bytes()
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        with pytest.warns(NumericEnvironmentWarning, match=r"threads_per_process \d+ -> \d+.*chains \[1\]"):
            distinterp.sample(model, ds, {"train": ds}, output_path=out, chains=[1], **SMALL)
    finally:
        torch.set_num_threads(before)
    assert (out / "zarr.json").read_bytes() == meta  # the creator's metadata, untouched
    (record,) = Path(f"{out}.numerics").iterdir()
    rec = json.loads(record.read_text())
    assert rec["differs"] == {"threads_per_process": {"created": before, "now": before + 1}}
    assert rec["chains"] == {"1": {"from_step": 0}} and rec["rank"] == 0
    # the creator's environment again: nothing to say, nothing written
    distinterp.sample(model, ds, {"train": ds}, output_path=out, **SMALL)
    assert len(list(Path(f"{out}.numerics").iterdir())) == 1
    assert _attrs(out)["numerics"]["threads_per_process"] == before
