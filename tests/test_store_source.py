"""One reading handle (issue 19): SampleStore.at(url) answers what a reader asks (exists, require, planned),
and every reader (analyses, integrity, inspection, verification, status) takes it, a path, a URL or the
samples sample() returned, with the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import distinterp
from distinterp.integrity import store_locations, verify
from distinterp.jobs.inspection import describe
from distinterp.jobs.verification import checksum_line, verify_store
from distinterp.store import Location, SampleStore
from distinterp.store.source import handle, handles_of, samples_of, store_of
from tests.conftest import SMALL, tiny_gpt2, token_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.DataTree]:
    """One small sampling store (observables train and probe) shared by the module's tests."""
    out = tmp_path_factory.mktemp("source") / "run.zarr"
    data = token_dataset()
    tree = distinterp.sample(
        tiny_gpt2(), data, {"train": data, "probe": token_dataset(rows=16, seed=3)}, output_path=out, **SMALL
    )
    return out, tree


def test_the_handle_answers_what_a_reader_asks(store: tuple[Path, xr.DataTree], tmp_path: Path) -> None:
    out, _ = store
    h = SampleStore.at(out)
    assert h.url == str(out) and h.is_local and h.exists() and h.require() is h
    assert h.planned()["num_chains"] == SMALL["num_chains"]
    assert h.planned()["num_draws"] == SMALL["num_draws"]
    assert SampleStore.at(h) is h and SampleStore.at(Location(str(out))) == h
    missing = SampleStore.at(tmp_path / "nowhere.zarr")
    assert not missing.exists() and missing.planned() == {}
    with pytest.raises(FileNotFoundError, match=r"no store at .*nowhere\.zarr"):
        missing.require()
    with pytest.raises(ValueError, match=r"writer\(\) needs the run's schema"):
        h.writer()
    remote = SampleStore.at("s3://user:hunter22@bucket/run.zarr", {"anon": True})
    assert not remote.is_local and "hunter22" not in str(remote)
    assert remote.location.storage_options == {"anon": True}


def test_sources_become_one_handle_or_pass_through(store: tuple[Path, xr.DataTree]) -> None:
    out, tree = store
    h = SampleStore.at(out)
    for source in (out, str(out), Location(str(out)), h):
        assert store_of(source) == h and handle(source) == h
        assert isinstance(samples_of(source), xr.DataTree)
    ds = tree.dataset
    assert store_of(tree) is tree and store_of(ds) is ds
    assert handles_of({"full": tree, "w": h}) == [h, h]
    assert store_locations({"full": tree, "w": str(out)}) == [h.location] * 2
    with pytest.raises(TypeError, match="got int"):
        store_of(3)  # type: ignore[arg-type]


def test_every_reader_takes_the_handle_with_the_same_numbers(store: tuple[Path, xr.DataTree]) -> None:
    out, tree = store
    h = SampleStore.at(out)
    ref = distinterp.compute_llc(tree, check=False)
    for source in (str(out), h):
        got = distinterp.compute_llc(source, check=False)
        np.testing.assert_array_equal(got.llc_per_chain.values, ref.llc_per_chain.values)
    assert distinterp.diagnose(h).healthy == distinterp.diagnose(tree).healthy
    bif = {"correlation_method": "sequence", "device": "cpu"}
    ref_bif = distinterp.compute_bif(tree, **bif)
    got_bif = distinterp.compute_bif(h, **bif)
    assert ref_bif is not None and got_bif is not None
    xr.testing.assert_equal(got_bif, ref_bif)
    susc = {"sampling_task": "train", "include_sampling_task": True}
    ref_s = distinterp.compute_susceptibilities({"full": tree, "w": tree}, **susc)
    got_s = distinterp.compute_susceptibilities({"full": str(out), "w": h}, **susc)
    xr.testing.assert_equal(got_s, ref_s)
    assert verify(h).problems == verify(str(out)).problems == []
    assert verify_store(h, {}) == 0 and "checksum" in checksum_line(h, {})
    lines, _ = describe(h)
    assert lines == describe(str(out))[0]
