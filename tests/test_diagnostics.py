"""diagnose(): each check on synthetic stores with a known flaw, the known-answer bigram (healthy) and its
lr blow-up, all-diverged and incomplete stores, devinterp-written stores, S3 URLs, chunk-wise reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import distinterp
from distinterp import toy
from distinterp.analyses.diagnostics import (
    Diagnosis,
    Thresholds,
    diagnose,
    geweke_z,
    loo_prediction_t,
    outlier_threshold,
    split_rhat_ess,
)
from distinterp.analyses.equilibration import distance_growth, localized, nested_rhat, running_llc_plateau
from tests.conftest import SMALL, devinterp_sample, tiny_gpt2, token_dataset

INIT = 1.0


def synthetic(
    traces: np.ndarray,
    *,
    n_beta: float = 100.0,
    d: int | None = 1000,
    row_noise: float = 0.05,
    steps_done: list[int] | None = None,
    diverged: dict[int, int] | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """A store in memory whose per-step mean loss is exactly `traces` (chain, step), rows noisy around it."""
    rng = np.random.default_rng(seed)
    n_chains, n_steps = traces.shape
    noise = rng.normal(0, row_noise, (n_chains, n_steps, 8, 4))
    noise -= noise.mean(axis=(2, 3), keepdims=True)
    micro = (traces[:, :, None, None] + noise).astype(np.float32)
    done = np.array(steps_done if steps_done is not None else [n_steps] * n_chains)
    div = np.full(n_chains, -1)
    for c, s in (diverged or {}).items():
        div[c], done[c] = s, n_steps
        micro[c, s:] = np.nan
    for c in range(n_chains):
        micro[c, done[c] :] = np.nan
    attrs: dict[str, Any] = {"metadata": {"config": {"sampler": {"n_beta": n_beta, "num_burnin_steps": 0}}}}
    if d is not None:
        attrs["distinterp"] = {"num_sampled_params": d}
    return xr.Dataset(
        {
            "sampling_loss_micro": (("chain", "step", "batch_sampling", "token_pos"), micro),
            "init_loss": (("chain", "token_pos"), np.full((n_chains, 4), INIT, np.float32)),
            "chain_steps_done": ("chain", done),
            "chain_diverged_step": ("chain", div),
        },
        attrs=attrs,
    )


def ar1(n_chains: int, n_steps: int, rho: float = 0.5, sd: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n_chains, n_steps))
    e = rng.normal(0, sd, (n_chains, n_steps))
    for s in range(1, n_steps):
        x[:, s] = rho * x[:, s - 1] + e[:, s]
    return x


def healthy_traces(**kw: Any) -> np.ndarray:
    return INIT + 0.05 + ar1(4, 400, **kw)  # LLC = n_beta * 0.05 = 5


def failed(diag: Diagnosis) -> dict[str, list[int]]:
    """check -> flagged chains."""
    f = diag.checks.flagged
    return {
        str(c): np.flatnonzero(f.sel(check=c).values).tolist() for c in f.check.values if f.sel(check=c).any()
    }


def test_pure_statistics_have_known_answers() -> None:
    x = ar1(4, 4000, rho=0.5, sd=1.0)
    rhat, ess = split_rhat_ess(x)
    assert rhat < 1.01
    assert ess == pytest.approx(x.size * (1 - 0.5) / (1 + 0.5), rel=0.15)  # AR(1): N (1-rho)/(1+rho)
    assert split_rhat_ess(x + np.arange(4)[:, None])[0] > 1.2  # chains offset by 1 sd
    assert abs(geweke_z(x[0])) < 3
    assert geweke_z(x[0] + np.linspace(0, 3, 4000)) < -3  # rising: first window below the last
    t = loo_prediction_t(np.array([1.0, 1.1, 0.9, 1.05, 40.0]))
    cut = outlier_threshold(5, 1e-3)
    assert abs(t[4]) > cut and (abs(t[:4]) < cut).all()


def test_equilibration_statistics_have_known_answers() -> None:
    """The plateau statistics of a stationary run are ~0; of a run still relaxing, the transient's share of
    the all-steps mean; nested R-hat is ~1 for exchangeable chains and sees one offset superchain."""
    flat = 1.0 + 0.05 + ar1(4, 4000, sd=0.001)
    p = running_llc_plateau(flat, 1.0, 100.0)
    assert p.llc_all == pytest.approx(5.0, rel=0.02) and p.equilibrated(0.05, 2.0)
    assert abs(p.transient) < 0.01 and abs(p.drift) < 0.01
    steps = np.arange(4000)
    rising = 1.0 + 0.05 * (1 - np.exp(-steps / 1000.0))[None, :] + 0 * flat
    r = running_llc_plateau(rising, 1.0, 100.0)
    tail = 5 * (1 - np.exp(-steps[2000:] / 1000.0)).mean()
    assert r.llc_tail == pytest.approx(tail) and r.transient == pytest.approx(r.llc_all / tail - 1)
    assert r.drift > 0.05 and not r.equilibrated(0.05, 2.0)
    x = ar1(8, 1000, sd=1.0)
    assert nested_rhat(x, 4) == pytest.approx(1.0, abs=0.01)
    shifted = x.copy()
    shifted[:2] += 2.0
    assert nested_rhat(shifted, 4) > 1.1
    assert np.isnan(nested_rhat(x[:7], 4))  # chains must split evenly


def test_healthy_synthetic_store() -> None:
    diag = diagnose(synthetic(healthy_traces()))
    assert diag.healthy, diag.problems
    assert diag.problems == [] and diag.summary().startswith("healthy")
    np.testing.assert_allclose(diag.checks.llc.values, 5.0, atol=0.3)
    assert set(diag.checks.attrs["checks_run"]) >= {"stationarity", "rhat", "ess", "below_init", "bounds"}


@pytest.mark.parametrize(
    ("flaw", "check", "chains", "fix"),
    [
        ("trend", "plateau", [0, 1, 2, 3], "more draws"),
        ("rising", "plateau", [0, 1, 2, 3], "longer at smaller lr"),
        ("group_offset", "nested_rhat", list(range(8)), "more draws per chain"),
        ("offset", "outlier", [3], "lower lr"),
        ("offset", "rhat", [0, 1, 2, 3], "more draws"),
        ("below", "below_init", [0, 1, 2, 3], "raise localization"),
        ("below", "bounds", [0, 1, 2, 3], "raise localization"),
        ("above_d", "bounds", [0, 1, 2, 3], "lower lr"),
        ("short", "ess", [0, 1, 2, 3], "more draws"),
        ("diverged", "diverged", [1], "lower lr"),
        ("incomplete", "incomplete", [1], "rerun the same command"),
    ],
)
def test_each_check_flags_its_flaw(flaw: str, check: str, chains: list[int], fix: str) -> None:
    """Each flaw fails its check for exactly the chains concerned, and the problem names the fix."""
    traces, kw = healthy_traces(), {}
    if flaw == "trend":
        traces[2] += np.linspace(0, 0.2, traces.shape[1])
    elif flaw == "rising":  # every chain still relaxing towards LLC 5, in step: R-hat cannot see it
        traces = INIT + 0.05 * (1 - np.exp(-np.arange(400) / 150.0)) + ar1(4, 400, sd=0.001)
    elif flaw == "group_offset":  # 8 chains; the second superchain's pair sits above the rest
        traces = INIT + 0.05 + ar1(8, 400)
        traces[2:4] += 0.004
    elif flaw == "offset":
        traces[3] += 1.0
    elif flaw == "below":
        traces = INIT - 0.05 + ar1(4, 400, sd=0.001)
        kw = {"row_noise": 0.001}
    elif flaw == "above_d":
        kw = {"d": 4}  # LLC 5 > d/2 = 2
    elif flaw == "short":
        traces = INIT + 0.05 + ar1(4, 60, rho=0.95)
    elif flaw == "diverged":
        kw = {"diverged": {1: 150}}
    elif flaw == "incomplete":
        kw = {"steps_done": [400, 120, 400, 400]}
    diag = diagnose(synthetic(traces, **kw))
    assert not diag.healthy
    assert failed(diag)[check] == chains, diag.problems
    problem = next(p for p in diag.problems if p.startswith(f"{check}:"))
    assert fix in problem
    if len(chains) < 4:
        assert (f"chain {chains[0]}" if len(chains) == 1 else f"chains {chains}") in problem


def warned(diag: Diagnosis) -> dict[str, list[int]]:
    """check -> chains with a warning (a note, not a failure)."""
    w = diag.checks.warned
    return {
        str(c): np.flatnonzero(w.sel(check=c).values).tolist() for c in w.check.values if w.sel(check=c).any()
    }


def test_strict_checks_warn_and_the_plateau_fails() -> None:
    """Geweke's trend in one chain, R-hat > 1.01 and ESS < 100 per chain are warnings (notes); a trend that
    moves the all-steps LLC fails `plateau`, and a run shorter than the localization prior's relaxation
    time fails it whatever the differences say."""
    traces = healthy_traces()
    traces[2] += np.linspace(0, 0.2, traces.shape[1])
    diag = diagnose(synthetic(traces))
    assert warned(diag)["stationarity"] == [2] and "stationarity" not in failed(diag)
    assert any(n.startswith("stationarity: chain 2") for n in diag.notes)
    assert failed(diag)["plateau"] == [0, 1, 2, 3]
    slow = INIT + 0.05 + ar1(4, 400, rho=0.7, sd=0.001)  # ESS ~ 70 per chain, R-hat ~ 1.01: noted
    diag = diagnose(synthetic(slow))
    assert diag.healthy, diag.problems
    assert "ess" in warned(diag) and any(n.startswith("ess:") for n in diag.notes)
    assert diag.summary().startswith("healthy (") and diag.summary().endswith("; warnings: rhat, ess")
    ds = synthetic(healthy_traces())
    ds.attrs["metadata"]["config"]["sampler"].update(lr=1e-3, localization=1.0)  # 0.2 relaxations
    diag = diagnose(ds)
    assert failed(diag) == {"plateau": [0, 1, 2, 3]}
    assert float(diag.checks.relaxations) == pytest.approx(0.2)
    assert "relaxation times" in diag.problems[0] and "to 2500 steps" in diag.problems[0]
    ds.attrs["metadata"]["config"]["sampler"].update(lr=1e-2)  # 2 relaxations
    assert diagnose(ds).healthy


def test_incomplete_store_uses_durable_steps() -> None:
    diag = diagnose(synthetic(healthy_traces(), steps_done=[400, 120, 400, 400]))
    c = diag.checks
    assert c.steps_done.values.tolist() == [400, 120, 400, 400]
    assert c.complete.values.tolist() == [True, False, True, True]
    assert np.isfinite(c.llc.values).all() and np.isnan(c.loss_trace.values[1, 120:]).all()


def bigram_run(path: Path, **overrides: Any) -> xr.DataTree:
    """The 3-symbol bigram at its MLE (true LLC 3): 4 chains x 300 draws, ~2 s."""
    data = toy.markov_dataset(toy.markov_chain(3, seed=0), 33, 256, 1)
    settings = dict(lr=1e-3, n_beta=1000.0, num_chains=4, num_draws=300, num_burnin_steps=100)
    settings.update(batch_size=16, num_init_loss_batches=16, **overrides)
    return distinterp.sample(
        toy.bigram_mle(data, 3), data, {"train": (data, 1)}, output_path=path, **settings
    )


def test_bigram_at_its_mle_is_healthy_with_the_known_llc(tmp_path: Path) -> None:
    """Long enough to equilibrate: at bigram_run's 400 steps of lr 1e-3 the all-steps LLC (3.06) was the
    transient (-19 % against the last half's 3.76) cancelling the step-size bias, and the plateau check
    flags it; 2200 steps of lr 5e-4 settle (3.10, last half 3.01)."""
    tree = bigram_run(tmp_path / "run.zarr", lr=5e-4, num_draws=2000, num_burnin_steps=200)
    diag = diagnose(tree)
    assert diag.healthy, diag.problems
    c = diag.checks
    assert int(c.num_sampled_params) == 9  # d = V^2 logits
    assert abs(float(c.llc_mean) - toy.bigram_learning_coefficient(3)) < 0.3
    res = distinterp.compute_llc(tree)
    np.testing.assert_allclose(c.llc.values, res.llc_per_chain.values, rtol=1e-4)  # float32 sums


def test_huge_lr_is_unhealthy_not_a_number(tmp_path: Path) -> None:
    """lr=1e30 gave an LLC of 3.4e34 with no warning: it lies beyond d/2 = 4.5."""
    diag = diagnose(bigram_run(tmp_path / "run.zarr", lr=1e30, num_draws=100, num_burnin_steps=0))
    assert not diag.healthy
    assert "bounds" in failed(diag)
    assert any("d/2 = 4.5" in p and "lower lr" in p for p in diag.problems)


def test_all_diverged_store(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="diverged"):
        bigram_run(tmp_path / "run.zarr", lr=1e38, num_draws=60)
    diag = diagnose(str(tmp_path / "run.zarr"))
    assert not diag.healthy
    assert failed(diag) == {"diverged": [0, 1, 2, 3]}
    assert diag.problems[0].startswith("diverged: 4/4 chains (chains 0, 1, 2, 3)")


def test_reads_chunk_by_chunk(tmp_path: Path) -> None:
    """The losses are read block by block: the lazily opened array is never loaded whole."""
    distinterp.sample(
        tiny_gpt2(), token_dataset(), {"train": token_dataset()}, output_path=tmp_path / "r.zarr", **SMALL
    )
    tree = xr.open_datatree(tmp_path / "r.zarr", engine="zarr", consolidated=False)
    diagnose(tree)
    assert not tree.dataset.sampling_loss_micro.variable._in_memory


def test_bad_input_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no store at"):
        diagnose(tmp_path / "missing.zarr")
    with pytest.raises(TypeError, match="DataTree"):
        diagnose(42)  # type: ignore[arg-type]


@pytest.mark.reference
def test_devinterp_written_store(tmp_path: Path) -> None:
    """A store written by devinterp 2.0.1 diagnoses like the same run written by distinterp."""
    model, ds = tiny_gpt2(), token_dataset()
    ours = distinterp.sample(model, ds, {"train": ds}, output_path=tmp_path / "a.zarr", **SMALL)
    theirs = devinterp_sample(model, ds, str(tmp_path / "b.zarr"), **SMALL)
    a, b = diagnose(ours), diagnose(str(tmp_path / "b.zarr"))
    assert "chain_steps_done" not in theirs.dataset
    np.testing.assert_array_equal(a.checks.loss_trace.values, b.checks.loss_trace.values)
    np.testing.assert_array_equal(a.checks.llc.values, b.checks.llc.values)
    assert [p.split(":")[0] for p in a.problems] == [p.split(":")[0] for p in b.problems]
    assert any("not recorded" in n for n in b.notes)


@pytest.mark.s3
def test_s3_url_equals_local(s3_server: Any, s3_url: str, tmp_path: Path) -> None:
    from tests.jobs import run

    url = f"{s3_url}/run.zarr"
    run(url, storage_options=s3_server.storage_options, num_chains=2)
    run(str(tmp_path / "local.zarr"), num_chains=2)
    remote = diagnose(url, storage_options=s3_server.storage_options)
    local = diagnose(tmp_path / "local.zarr")
    assert remote.problems == local.problems
    xr.testing.assert_identical(remote.checks, local.checks)


def diffusing(n_chains: int, n_steps: int, dim: int = 1, seed: int = 0) -> np.ndarray:
    """(chain, step) distances from the start of a random walk: an improper, flat direction."""
    rng = np.random.default_rng(seed)
    return np.linalg.norm(np.cumsum(rng.normal(size=(n_chains, n_steps, dim)), axis=1), axis=2)


def confined(n_chains: int, n_steps: int, dim: int = 1, rho: float = 0.5, seed: int = 0) -> np.ndarray:
    """(chain, step) distances of a chain the loss holds near the start (AR(1), equilibrated at once)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_chains, n_steps, dim))
    e = rng.normal(size=x.shape)
    for s in range(1, n_steps):
        x[:, s] = rho * x[:, s - 1] + e[:, s]
    return np.linalg.norm(x, axis=2)


def test_distance_growth_tells_a_diffusing_chain_from_a_confined_one() -> None:
    """Mean squared distance, last quarter over first: ~7 for a random walk, ~1 for a chain held near
    the checkpoint, over 4 chains of one or several flat directions; NaN past a chain's end is ignored;
    a non-finite distance is inf; nothing measured is NaN and counts as localized."""
    for dim in (1, 3):
        for seed in range(3):
            g, pooled = distance_growth(diffusing(4, 2000, dim, seed))
            assert pooled > 1.5 and not localized(pooled, 1.5), (dim, seed, pooled)
            g, pooled = distance_growth(confined(4, 2000, dim, seed=seed))
            assert pooled == pytest.approx(1.0, abs=0.3) and localized(pooled, 1.5), (dim, seed, pooled)
    walk = diffusing(2, 2000, 2)
    short = walk.copy()
    short[1, 1000:] = np.nan  # chain 1 ended at step 1000: its own quarters
    g, _ = distance_growth(short)
    assert g[1] == pytest.approx(np.mean(walk[1, 750:1000] ** 2) / np.mean(walk[1, :250] ** 2))
    broken = walk.copy()
    broken[0, -1] = np.inf
    assert distance_growth(broken)[1] == np.inf and not localized(np.inf, 1.5)
    assert np.isnan(distance_growth(walk[:, :4])[1]) and localized(float("nan"), 1.5)


def test_localization_check_is_a_warning_in_diagnose_and_judged_only_without_a_prior() -> None:
    """A store whose chains diffuse (metrics_distance of a random walk): without localization diagnose()
    warns (a note, the run stays healthy), with Thresholds(distance_fails=True) it fails `distance`
    ("not localized ... raise localization"); with localization the check is not judged."""
    ds = synthetic(healthy_traces())
    ds["metrics_distance"] = (("chain", "step"), diffusing(4, 400).astype(np.float32))
    diag = diagnose(ds)
    assert diag.healthy and any("not localized" in n for n in diag.notes), diag.notes
    assert bool(diag.checks.warned.sel(check="distance").all())
    assert float(diag.checks.distance_growth_pooled) > 1.5
    strict = diagnose(ds, thresholds=Thresholds(distance_fails=True))
    assert not strict.healthy and failed(strict) == {"distance": [0, 1, 2, 3]}
    assert "raise localization" in strict.problems[0]
    ds.attrs["metadata"]["config"]["sampler"]["localization"] = 1.0
    held = diagnose(ds, thresholds=Thresholds(distance_fails=True, min_relaxations=0.0))
    assert held.healthy and np.isnan(float(held.checks.distance_growth_pooled)), held.problems
    ds.attrs["metadata"]["config"]["sampler"]["localization"] = 0.0
    ds["metrics_distance"] = (("chain", "step"), confined(4, 400).astype(np.float32))
    assert diagnose(ds, thresholds=Thresholds(distance_fails=True)).healthy
