"""distinterp.optim: devinterp's SGLD / SGMCMC optimizers, stepping with distinterp.update.sgld_step."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import distinterp
import distinterp.optim
from distinterp.optim import SGLD, SGMCMC
from distinterp.update import SGLDHyper, make_slots, sgld_step

CASES = [
    dict(lr=1e-2, nbeta=3.0),
    dict(lr=1e-2, nbeta=3.0, localization=2.0, weight_decay=0.3, bounding_box_size=0.01),
    dict(lr=1e-3, nbeta=2.0, noise_level=0.5, localization=1.0),
]


def _run(factory, kwargs, *, masked: bool, metrics: bool, grouped: bool = True, steps: int = 4):
    """Parameters and per-step metrics after `steps` steps on a small MLP, from fixed seeds."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    if grouped:
        params = [
            {"params": p, "mask": (torch.rand(p.shape) > 0.5) if masked and i % 2 == 0 else None}
            for i, p in enumerate(net.parameters())
        ]
    else:
        params = net.parameters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp deprecates its SGLD; noise_level != 1 warns
        opt = factory(params, save_metrics=metrics, **kwargs)
    x = torch.randn(11, 5)
    trace = []
    for _ in range(steps):
        net(x).square().mean().backward()
        opt.step()
        if metrics:
            m = opt.get_metrics()
            trace.append(torch.stack([getattr(m, k).reshape(()) for k in m.NORM_FIELDS + m.DOT_FIELDS]))
        opt.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in net.parameters()]), trace


@pytest.mark.reference
@pytest.mark.parametrize(
    "kwargs,masked,metrics", list(itertools.product(CASES, [False, True], [False, True])), ids=str
)
def test_bitwise_equal_to_devinterp(kwargs: dict, masked: bool, metrics: bool) -> None:
    """One param group per parameter (as sample_single_chain builds them): parameters and metrics bitwise."""
    dv = pytest.importorskip("devinterp.optim")
    pairs = [
        (dv.SGMCMC.sgld, SGMCMC.sgld, {}),
        (dv.SGMCMC.rmsprop_sgld, SGMCMC.rmsprop_sgld, {"alpha": 0.9, "eps": 0.05}),
        (dv.SGLD, SGLD, {}),
    ]
    for theirs, ours, extra in pairs:
        a, ma = _run(theirs, {**kwargs, **extra}, masked=masked, metrics=metrics)
        b, mb = _run(ours, {**kwargs, **extra}, masked=masked, metrics=metrics)
        assert torch.equal(a, b), ours
        for x, y in zip(ma, mb, strict=True):
            assert torch.equal(x, y), ours


@pytest.mark.reference
def test_one_group_of_many_parameters_matches_devinterp() -> None:
    """model.parameters() as one group: parameters bitwise; metrics to float32 rounding (1e-7 relative)."""
    dv = pytest.importorskip("devinterp.optim")
    for theirs, ours in [
        (dv.SGMCMC.sgld, SGMCMC.sgld),
        (dv.SGLD, SGLD),
        (dv.SGMCMC.rmsprop_sgld, SGMCMC.rmsprop_sgld),
    ]:
        a, ma = _run(
            theirs, dict(lr=1e-2, nbeta=3.0, localization=1.0), masked=False, metrics=True, grouped=False
        )
        b, mb = _run(
            ours, dict(lr=1e-2, nbeta=3.0, localization=1.0), masked=False, metrics=True, grouped=False
        )
        assert torch.equal(a, b)
        torch.testing.assert_close(torch.stack(mb), torch.stack(ma), rtol=3e-7, atol=0)


def test_step_is_sgld_step() -> None:
    """SGMCMC.step is sgld_step on the same parameters, masks and noise stream (no second implementation)."""
    torch.manual_seed(1)
    p1 = torch.nn.Parameter(torch.randn(4, 3))
    p2 = torch.nn.Parameter(p1.detach().clone())
    mask = torch.rand(4, 3) > 0.3
    for p in (p1, p2):
        p.grad = torch.full_like(p, 0.5)
    opt = SGMCMC.rmsprop_sgld([{"params": p1, "mask": mask}], lr=1e-2, nbeta=7.0, localization=1.0, eps=0.2)
    hyper = SGLDHyper(lr=1e-2, n_beta=7.0, localization=1.0, rmsprop=True, eps=0.2)
    slots = make_slots({"p": p2}, {"p": mask}, hyper, keep_center=False)
    for _ in range(3):
        opt.step(noise_generator=torch.Generator().manual_seed(5))
        sgld_step(slots, hyper, generator=torch.Generator().manual_seed(5))
    assert torch.equal(p1, p2)


def test_sgld_is_the_optimizer_and_names_its_sampling_method(tmp_path) -> None:
    """distinterp.SGLD is devinterp's optimizer class; sample() and SamplerConfig take it (and SGMCMC's
    factories) for the method's name, and the strings still work."""
    assert distinterp.SGLD is SGLD and issubclass(SGLD, torch.optim.Optimizer)
    cfg = distinterp.SamplerConfig
    assert cfg(lr=1, n_beta=1, sampling_method=SGLD).sampling_method == "sgmcmc_sgld"
    assert cfg(lr=1, n_beta=1, sampling_method=SGMCMC.sgld).sampling_method == "sgmcmc_sgld"
    assert cfg(lr=1, n_beta=1, sampling_method=SGMCMC.rmsprop_sgld).sampling_method == "rmsprop_sgld"
    assert cfg(lr=1, n_beta=1, sampling_method="rmsprop_sgld").sampling_method == "rmsprop_sgld"
    with pytest.raises(ValueError, match="sampling_method"):
        cfg(lr=1, n_beta=1, sampling_method=torch.optim.SGD)


def test_unsupported_options_fail_naming_them() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(NotImplementedError, match="sketch_dim"):
        SGMCMC.sgld([p], nbeta=2.0, sketch_dim=8)
    with pytest.raises(NotImplementedError, match="SGNHT"):
        SGMCMC.get_method("sgnht")([p])
    with pytest.raises(NotImplementedError, match="SGNHT"):
        distinterp.optim.SGNHT([p])
    with pytest.raises(NotImplementedError, match="Gradient correction"):
        SGMCMC.rmsprop_sgld([p], nbeta=2.0, add_grad_correction=True)
    with pytest.raises(ValueError, match="Mask shape"):
        SGMCMC.sgld([{"params": p, "mask": torch.ones(3)}], nbeta=2.0)
    with pytest.warns(UserWarning, match="nbeta set to 1"):
        SGMCMC.sgld([p])


def test_group_added_later_is_sampled() -> None:
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = SGMCMC.sgld([a], lr=1e-2, nbeta=2.0)
    opt.add_param_group({"params": [b], "lr": 1e-1})
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    assert a.abs().sum() > 0 and b.abs().sum() > 0
