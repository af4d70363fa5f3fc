"""`distinterp.slt.*` exposes the names devinterp's modules do (issue 19, item 10), and `demo --nproc` is
bounded before any rank starts."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from distinterp.jobs.cli import main

NAMES = {
    "sampling": [
        "SamplerConfig",
        "SAMPLING_METHODS",
        "ZarrSchema",
        "ZarrWriter",
        "DataArraySpec",
        "Observable",
        "Metrics",
        "calculate_num_steps",
        "sample_single_chain",
        "set_seed",
        "make_evaluate_fn",
        "compute_per_token_loss",
        "is_transformer_lens_model",
        "SAMPLES_LOSS_DTYPE_STR",
        "ZARR_MAX_WRITE_THREADS",
    ],
    "bif": ["batch_corrcoef", "batch_cov", "sample", "xr_corrcoef_with_torch_backend"],
    "llc": ["sample"],
    "observables": ["compute_per_token_loss"],
    "susceptibilities": ["sample", "to_obs_id"],
    "weight_restrictions": ["HEAD_STRUCTURES", "is_transformer_lens_model"],
    "writing": ["validate_dtype_str_torch_numpy_compat"],
    "zarr_schema": ["validate_dtype_str_torch_numpy_compat"],
}


@pytest.mark.parametrize("module", sorted(NAMES))
def test_devinterp_names_import_from_our_modules(module):
    ours = importlib.import_module(f"distinterp.slt.{module}")
    missing = [n for n in NAMES[module] if not hasattr(ours, n)]
    assert not missing and set(NAMES[module]) <= set(ours.__all__), missing


def test_every_name_devinterp_defines_is_ours_too():
    """Against the installed devinterp (the reference extra): its own classes, functions and constants."""
    slt = pytest.importorskip("devinterp.slt")
    missing = []
    for info in pkgutil.iter_modules(slt.__path__):
        if info.name.startswith("_"):
            continue
        theirs = importlib.import_module(f"devinterp.slt.{info.name}")
        ours = importlib.import_module(f"distinterp.slt.{info.name}")
        for name, obj in vars(theirs).items():
            home = getattr(obj, "__module__", None)
            defined = str(home).startswith("devinterp") if home is not None else name.isupper()
            if not name.startswith("_") and not inspect.ismodule(obj) and defined and not hasattr(ours, name):
                missing.append(f"{info.name}.{name}")
    assert not missing, missing


def test_demo_nproc_is_bounded_before_launching(capsys):
    assert main(["demo", "--nproc", "99"]) == 2
    assert "--nproc: at most 4 (the demo's chains" in capsys.readouterr().err
