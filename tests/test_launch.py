"""`distinterp-run` (python -m distinterp.jobs.launch): torchrun's arguments for any job, and Ctrl-C ends
with one line and exit 130 (plain torchrun adds its own traceback and exits 1; issue 19, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_cli import TINY, interrupt_while_sampling


@pytest.mark.distributed
def test_ctrl_c_under_distinterp_run_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    config = {**TINY, "model": {"name": "tiny-gpt2"}, "output_path": str(store)}
    config["sampler"] = {**TINY["sampler"], "num_draws": 4000}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    launch = ["-m", "distinterp.jobs.launch", "--standalone", "--nproc-per-node=2"]
    args = [*launch, "-m", "distinterp", "sample", str(tmp_path / "c.yaml")]
    code, lines = interrupt_while_sampling(args, store, tmp_path, 120)
    assert code == 130, lines
    assert lines == [
        "distinterp sample: interrupted; rerun the same command to continue (complete chains are kept)"
    ], lines
