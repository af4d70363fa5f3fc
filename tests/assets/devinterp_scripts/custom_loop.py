"""A devinterp 2.x custom loop: sample_single_chain with its own evaluate callable, optimizers, callbacks,
an Observable, and a ZarrSchema store filled by a ZarrWriter. test_slt runs it as written and with
"devinterp" replaced by "distinterp", and compares RESULTS."""

import warnings

import numpy as np
import torch
import xarray as xr
import zarr
from devinterp.optim import SGLD, SGMCMC
from devinterp.slt.lm_loss import compute_per_token_loss, make_evaluate_fn
from devinterp.slt.observables import DeterministicShuffledSampler, Observable
from devinterp.slt.sampler import sample_single_chain
from devinterp.slt.weight_restrictions import create_param_masks
from devinterp.slt.writing import ZarrWriter
from devinterp.slt.zarr_schema import DataArraySpec, ZarrSchema
from devinterp.utils import default_nbeta

from tests.conftest import tiny_gpt2, token_dataset

OUT = globals().get("OUT", "/tmp/custom_loop")  # the test sets OUT to a fresh directory

model = tiny_gpt2(dropout=0.1)
data = token_dataset(rows=40).with_format("torch")
probe = Observable(
    dataset=token_dataset(rows=20, seed=5).with_format("torch"), task_name="probe-set", batches_per_draw=2,
    batch_size=4, context_length=8, device=torch.device("cpu"), seed=7,
)  # fmt: skip
n_beta = float(default_nbeta(torch.utils.data.DataLoader(data, batch_size=4), gradient_accumulation_steps=2))
num_draws, burnin, every, gas, B = 4, 2, 2, 2, 4
num_steps = num_draws * every + burnin

schema = ZarrSchema(
    arrays_meta={
        "draw_loss": DataArraySpec(
            (3, num_draws, B, 8), ("chain", "draw", "batch", "token_pos"), "float32", (1, 2, B, 8)
        ),
        "probe_loss": DataArraySpec(
            (3, num_draws, 8, 8), ("chain", "draw", "batch_probe", "token_pos"), "float32", (1, 2, 8, 8)
        ),
        "micro_ids": DataArraySpec(
            (3, num_steps * gas, B, 9), ("chain", "micro", "batch", "token"), "int64", (1, 2, B, 9)
        ),
        "noise_norm": DataArraySpec(
            (3, num_steps), ("chain", "step"), "float32", (1, 2), attrs={"units": "l2"}
        ),
        "probe_ids": DataArraySpec((8, 9), ("batch_probe", "token"), "int64"),
    },
    group_attrs={"": {"metadata": {"n_beta": n_beta}}},
)
# Chunks of one buffer (2 rows, one chain): devinterp's writer threads must never share a chunk.
_, arrays = schema.create_hierarchy(zarr.storage.LocalStore(f"{OUT}/custom.zarr"))
extras_seen = []


def evaluate(model, batch):
    loss = compute_per_token_loss(model, batch["input_ids"])
    return loss, {"mean": float(loss.mean())}


def tracked(model, batch):
    loss, extras = evaluate(model, batch)
    extras_seen.append(extras["mean"])
    return loss, extras


masks = create_param_masks(model, "l0h1")
runs = [
    (SGMCMC.sgld, dict(lr=1e-3, nbeta=n_beta, localization=1.0, bounding_box_size=0.5, save_metrics=True), tracked),
    (SGMCMC.rmsprop_sgld, dict(lr=1e-3, nbeta=n_beta, eps=0.2, weight_decay=0.1, save_metrics=True), make_evaluate_fn()),
    (SGLD, dict(lr=1e-3, nbeta=n_beta, localization=2.0, save_metrics=True), make_evaluate_fn(lambda m, x: compute_per_token_loss(m, x) ** 2)),
]  # fmt: skip
with ZarrWriter.open(arrays, chain_buffer_size=2, buffer_device=torch.device("cpu")) as writer:
    writer.write("probe_ids", probe.input_ids)
    for chain, (method, kwargs, fn) in enumerate(runs):

        def on_draw(*, loss, draw, chain, model, optimizer):
            writer.push("draw_loss", loss, chain=chain, draw=draw)
            writer.push("probe_loss", probe.compute_loss(model), chain=chain, draw=draw)
            writer.flush_full_buffers()

        def on_step(chain, step, optimizer):
            writer.push("noise_norm", optimizer.get_metrics().noise.squeeze(), chain=chain, step=step)
            writer.flush_full_buffers()

        def on_micro(loss, input_ids, chain, step, micro_step):
            writer.push("micro_ids", input_ids, chain=chain, micro=step * gas + micro_step)
            writer.flush_full_buffers()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # devinterp deprecates SGLD
            sample_single_chain(
                ref_model=model, dataset=data, evaluate=fn, param_masks=masks if chain == 1 else {n: None for n, _ in model.named_parameters()},
                num_draws=num_draws, num_burnin_steps=burnin, num_steps_bw_draws=every, gradient_accumulation_steps=gas,
                sampling_method=method, sampling_method_kwargs=kwargs, chain=chain, seed=100 + chain,
                dataloader_seed=None if chain == 2 else 100, callbacks=[on_draw], step_callback=on_step,
                micro_callback=on_micro, batch_size=B, init_noise=0.01 if chain == 1 else None, shuffle=chain != 1,
            )  # fmt: skip

tree = xr.open_datatree(f"{OUT}/custom.zarr", engine="zarr", consolidated=False)
RESULTS = {
    "n_beta": n_beta,
    "extras": np.asarray(extras_seen),
    "probe_rows": np.asarray(DeterministicShuffledSampler(data, 6, seed=3).indices),
    **{k: v.values for k, v in tree.dataset.data_vars.items()},
    **{f"attrs/{k}": str(dict(tree.dataset[k].attrs)) for k in tree.dataset.data_vars},
    **{f"dims/{k}": str(tree.dataset[k].dims) for k in tree.dataset.data_vars},
    "root_attrs": str(tree.dataset.attrs),
}
