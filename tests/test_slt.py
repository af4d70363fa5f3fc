"""distinterp.slt / distinterp.optim / distinterp.utils: devinterp 2.x's module paths, so that replacing the
word devinterp with distinterp in a devinterp script runs it with the same results."""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import distinterp
from tests.conftest import SMALL, tiny_gpt2, token_dataset

SCRIPTS = Path(__file__).parent / "assets" / "devinterp_scripts"

API = {
    "slt.bif": ["bif", "compute_bif"],
    "slt.config": ["SamplerConfig", "SAMPLING_METHODS"],
    "slt.covariance": ["batch_corrcoef", "batch_cov", "xr_corrcoef_with_torch_backend"],
    "slt.llc": ["compute_llc", "llc"],
    "slt.lm_loss": [
        "NonFiniteLogitsError",
        "compute_per_token_loss",
        "lm_cross_entropy_loss",
        "lm_forward_logits",
        "make_evaluate_fn",
    ],
    "slt.observables": ["DeterministicShuffledSampler", "Observable", "to_obs_id"],
    "slt.sampler": [
        "MicroCallback",
        "StepCallback",
        "sample_single_chain",
        "calculate_num_steps",
        "set_seed",
    ],
    "slt.sampling": ["sample"],
    "slt.susceptibilities": ["compute_susceptibilities", "susceptibilities"],
    "slt.weight_restrictions": ["create_param_masks", "preview_weight_restriction"],
    "slt.writing": ["ZarrWriter"],
    "slt.zarr_schema": ["DataArraySpec", "ZarrSchema"],
    "optim": ["SGLD", "SGMCMC"],
    "utils": ["default_nbeta", "tokenize_and_concatenate"],
}
"""devinterp 2.0.1's public names (the reference API), by module under devinterp / distinterp."""

METHODS = {
    "ZarrWriter": ["open", "write", "push", "flush_full_buffers", "flush_all_buffers", "wait_for_writes"],
    "ZarrSchema": ["create_hierarchy"],
    "SGMCMC": ["sgld", "rmsprop_sgld", "step", "get_metrics"],
    "SGLD": ["step", "get_metrics"],
    "Observable": ["compute_loss"],
}


def _same_default(a: Any, b: Any) -> bool:
    if a is b or (isinstance(a, type) and isinstance(b, type) and a.__qualname__ == b.__qualname__):
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - tensors and other odd defaults
        return False


def assert_compatible(theirs: Any, ours: Any, where: str) -> None:
    """Every parameter of theirs exists in ours with the same kind and default (positional ones in the same
    order); ours may add keyword-only parameters with defaults."""
    ps, po = inspect.signature(theirs).parameters, inspect.signature(ours).parameters
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert [n for n, p in po.items() if p.kind in positional] == [
        n for n, p in ps.items() if p.kind in positional
    ], where
    for name, p in ps.items():
        assert name in po, f"{where}: no parameter {name}"
        q = po[name]
        assert q.kind == p.kind, f"{where}({name}): kind {q.kind} != {p.kind}"
        assert _same_default(p.default, q.default), f"{where}({name}): default {q.default!r} != {p.default!r}"
    for name in set(po) - set(ps):
        q = po[name]
        assert q.kind is q.KEYWORD_ONLY and q.default is not q.empty, f"{where}: extra parameter {name}"


@pytest.mark.reference
@pytest.mark.parametrize("module", list(API))
def test_every_devinterp_name_exists_with_its_signature(module: str) -> None:
    pytest.importorskip("devinterp")
    theirs_mod = importlib.import_module(f"devinterp.{module}")
    ours_mod = importlib.import_module(f"distinterp.{module}")
    for name in API[module]:
        theirs, ours = getattr(theirs_mod, name), getattr(ours_mod, name)
        where = f"distinterp.{module}.{name}"
        if name == "SamplerConfig":
            assert {k: f.default for k, f in ours.model_fields.items()} == {
                k: f.default for k, f in theirs.model_fields.items()
            }
        elif name == "SAMPLING_METHODS":
            assert sorted(ours) == sorted(theirs)
        elif name == "NonFiniteLogitsError":
            assert issubclass(ours, ValueError)
        elif name in ("MicroCallback", "StepCallback"):
            assert_compatible(theirs.__call__, ours.__call__, where)
        else:
            assert_compatible(theirs, ours, where)
        for method in METHODS.get(name, []):
            assert_compatible(getattr(theirs, method), getattr(ours, method), f"{where}.{method}")


@pytest.fixture
def devinterp_without_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """devinterp runs gc.collect() twice per chain (~1 s each in a test process); numbers do not depend on it."""
    sampler = pytest.importorskip("devinterp.slt.sampler")
    monkeypatch.setattr(sampler, "_gc_and_empty_cache", lambda: None)


def run_script(name: str, package: str, out: Path) -> dict[str, Any]:
    """Run a devinterp script with every 'devinterp' replaced by `package`; return its RESULTS."""
    source = (SCRIPTS / name).read_text().replace("devinterp", package)
    namespace: dict[str, Any] = {"OUT": str(out), "__name__": f"{package}_{name}"}
    out.mkdir()
    with warnings.catch_warnings():
        if package == "devinterp":
            warnings.simplefilter("ignore")  # its FutureWarnings and tqdm; ours must run warning-free
        exec(compile(source, f"{package}/{name}", "exec"), namespace)
    return namespace["RESULTS"]


def _compare(theirs: dict[str, Any], ours: dict[str, Any], close: dict[str, float]) -> None:
    assert sorted(theirs) == sorted(k for k in ours if k in theirs)
    for key, a in theirs.items():
        b = ours[key]
        if isinstance(a, str):
            assert a == b, key
        elif key in close:
            np.testing.assert_allclose(b, a, rtol=0, atol=close[key], err_msg=key)
        else:
            np.testing.assert_array_equal(b, a, err_msg=key, strict=True)


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.usefixtures("devinterp_without_gc")
def test_quickstart_script_gives_devinterps_results(tmp_path: Path) -> None:
    """tokenize_and_concatenate, default_nbeta, sample -> compute_llc and compute_bif (token; sequence with
    chains averaged), susceptibilities() with create_param_masks. Stores and LLCs bitwise; the BIF and
    susceptibilities to devinterp's float32 error (ours accumulate in float64)."""
    pytest.importorskip("devinterp")
    theirs = run_script("quickstart.py", "devinterp", tmp_path / "devinterp")
    ours = run_script("quickstart.py", "distinterp", tmp_path / "distinterp")
    _compare(theirs, ours, close={"sus/sus": 1e-7, "token_bif": 2e-6, "seq_bif": 2e-5})


@pytest.mark.reference
@pytest.mark.usefixtures("devinterp_without_gc")
def test_custom_loop_script_gives_devinterps_results(tmp_path: Path) -> None:
    """sample_single_chain with custom evaluate callables, SGMCMC.sgld / rmsprop_sgld / SGLD, callbacks,
    an Observable, and a ZarrSchema store written by ZarrWriter: every number and every store byte equal."""
    pytest.importorskip("devinterp")
    theirs = run_script("custom_loop.py", "devinterp", tmp_path / "devinterp")
    ours = run_script("custom_loop.py", "distinterp", tmp_path / "distinterp")
    _compare(theirs, ours, close={})
    _assert_same_store_but_checksums(
        tmp_path / "devinterp" / "custom.zarr", tmp_path / "distinterp" / "custom.zarr"
    )


def _assert_same_store_but_checksums(theirs: Path, ours: Path) -> None:
    """Every array's metadata and every value equal; ours differ only in carrying zstd's frame checksum
    (every array distinterp writes does, so damage is found on read; devinterp reads them as they are)."""

    def metadata(root: Path) -> dict[str, Any]:
        out = {}
        for f in sorted(root.rglob("zarr.json")):
            meta = json.loads(f.read_text())
            for codec in meta.get("codecs", []):
                if codec.get("name") == "zstd":
                    assert codec["configuration"].pop("checksum") is (root == ours), f
            out[str(f.relative_to(root))] = meta
        return out

    assert metadata(theirs) == metadata(ours)
    for key, meta in metadata(theirs).items():
        if meta["node_type"] == "array":
            name = str(Path(key).parent)
            a = zarr.open_array(str(theirs), path=name, mode="r")[...]
            b = zarr.open_array(str(ours), path=name, mode="r")[...]
            np.testing.assert_array_equal(b, a, err_msg=name, strict=True)


@pytest.mark.reference
@pytest.mark.usefixtures("devinterp_without_gc")
def test_store_mismatch_message_keeps_devinterps_wording(tmp_path: Path) -> None:
    """Code that matches devinterp's "has a different sampler config" keeps working; ours names the field."""
    dv = pytest.importorskip("devinterp.slt.sampling")
    model, ds = tiny_gpt2(), token_dataset()
    ds_t = ds.with_format("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dv.sample(model, ds_t, {"train": ds_t}, output_path=tmp_path / "d.zarr", device="cpu", **SMALL)
        with pytest.raises(RuntimeError, match="has a different sampler config") as theirs:
            dv.sample(
                model,
                ds_t,
                {"train": ds_t},
                output_path=tmp_path / "d.zarr",
                device="cpu",
                **{**SMALL, "lr": 2e-3},
            )
    distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / "o.zarr", **SMALL)
    for path in ("d.zarr", "o.zarr"):
        with pytest.raises(distinterp.StoreConfigMismatch, match="has a different sampler config") as ours:
            distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / path, **{**SMALL, "lr": 2e-3})
        assert isinstance(ours.value, RuntimeError)
        assert "lr: stored=0.001, current=0.002" in str(ours.value) and str(tmp_path / path) in str(
            ours.value
        )
    assert "lr: stored=0.001, current=0.002" in str(theirs.value)
    with pytest.raises(
        distinterp.StoreConfigMismatch, match=r"has a different sampler config:\n  dataset: stored="
    ):
        distinterp.sample(
            model, token_dataset(seed=4), {"train": ds}, output_path=tmp_path / "o.zarr", **SMALL
        )


def test_observable_and_sampler_rows_are_samples_rows(tmp_path: Path) -> None:
    """slt.observables.Observable evaluates the rows sample() stores for that observable, to the bit."""
    from distinterp.slt.observables import Observable

    model, ds = tiny_gpt2(), token_dataset()
    tree = distinterp.sample(model, ds, {"probe set": (ds, 2)}, output_path=tmp_path / "s.zarr", **SMALL)
    obs = Observable(
        dataset=ds, task_name="probe set", batches_per_draw=2, batch_size=4, context_length=8,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert obs.obs_id == "probe_set" and obs.n_samples == 8
    np.testing.assert_array_equal(obs.input_ids.numpy(), tree.dataset["input_ids_probe_set"].values)
    with torch.no_grad():
        loss = obs.compute_loss(model)
    assert loss.shape == (8, 8) and loss.dtype == torch.float32
