"""logging.wandb: a CLI job logs per-step LLC estimates, loss traces, metrics, the diagnosis, the final
LLC and the report's figures to W&B; tested offline (no network): the offline run directory holds them."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import distinterp
from distinterp.jobs.cli import main
from distinterp.jobs.runner import run_sample
from distinterp.jobs.settings import load_settings
from tests.fixtures import poll_until
from tests.test_inspection import _config

wandb = pytest.importorskip("wandb")


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a .wandb file (W&B's log: a 7-byte header, then 32 KiB blocks of records
    each with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:
            break
        buf += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            out.append(pb.Record.FromString(buf))
            buf = b""
    return out


def _items(items: Any) -> dict[str, Any]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_offline_run_holds_the_logged_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path, save_metrics=True)
    sets = [
        "logging.wandb.mode=offline",
        f"logging.wandb.dir={tmp_path}",
        "logging.wandb.project=distinterp-test",
    ]
    assert (
        main(
            [
                "sample",
                str(config),
                *[a for s in sets for a in ("--set", s)],
                "--set",
                "logging.wandb.tags=[ci]",
            ]
        )
        == 0
    )
    capsys.readouterr()
    [run_file] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    # wandb's service process may still be flushing the file when finish() returns: wait for its exit record
    records = poll_until(
        lambda: (recs := wandb_records(run_file)) and recs[-1].WhichOneof("record_type") == "exit" and recs,
        timeout=60,
        what="the offline run's exit record",
    )
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "distinterp-test" and list(run.tags) == ["ci"] and run.display_name == "run"
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= _items(r.summary.update)

    store = tmp_path / "run.zarr"  # the numbers the run logged come from the store
    checks = distinterp.diagnose(store).checks
    res = distinterp.compute_llc(xr.open_datatree(store, engine="zarr", consolidated=False))
    steps = [h for h in history if "llc/estimate" in h]
    assert [h["_step"] for h in steps] == list(range(checks.sizes["step"]))
    np.testing.assert_allclose(steps[-1]["llc/estimate"], float(res.llc_mean), rtol=1e-4)
    np.testing.assert_allclose([h["loss/chain_0"] for h in steps], checks.loss_trace.values[0], rtol=1e-6)
    assert "metrics/distance" in steps[1] and "metrics/mala_acceptance" in steps[1]
    assert summary["llc_mean"] == pytest.approx(float(res.llc_mean)) and len(summary["llc_per_chain"]) == 2
    diag = distinterp.diagnose(store)
    assert summary["diagnosis/healthy"] is diag.healthy and summary["diagnosis/summary"] == diag.summary()
    images = [
        k.removesuffix("/_type")
        for h in history
        for k, v in h.items()
        if k.endswith("/_type") and v == "image-file"
    ]
    assert sorted(images) == [
        "report/llc_over_draws",
        "report/llc_per_chain",
        "report/loss_traces",
        "report/metrics",
    ]
    assert len(list(run_file.parent.glob("files/media/images/report/*.png"))) == 4


def test_missing_wandb_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises
    settings = load_settings(_config(tmp_path), ["logging.wandb.mode=offline"])
    with pytest.raises(
        ValueError, match=r"logging.wandb: needs the wandb package: pip install 'distinterp\[wandb\]'"
    ):
        run_sample(settings)
    assert not (tmp_path / "run.zarr").exists()
