"""A devinterp 2.x quickstart (its README's calls, sampling once per weight restriction) on a tiny GPT-2; test_slt runs it as written and with
"devinterp" replaced by "distinterp", and compares RESULTS."""

import numpy as np
import torch
import transformers
from datasets import Dataset
from devinterp.slt.bif import compute_bif
from devinterp.slt.llc import compute_llc
from devinterp.slt.sampling import sample
from devinterp.slt.susceptibilities import susceptibilities
from devinterp.slt.weight_restrictions import create_param_masks
from devinterp.utils import default_nbeta, tokenize_and_concatenate

from tests.conftest import TEXTS, word_tokenizer

OUT = globals().get("OUT", "/tmp/quickstart")  # the test sets OUT to a fresh directory

tokenizer = word_tokenizer()
text = Dataset.from_dict({"text": TEXTS * 8})
train_data = tokenize_and_concatenate(text, tokenizer, max_length=9, num_proc=1)
code_data = train_data.select(range(8, 24))
torch.manual_seed(0)
config = transformers.GPT2Config(
    vocab_size=len(tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
)  # fmt: skip
model = transformers.GPT2LMHeadModel(config)
small = dict(num_chains=2, num_draws=5, batch_size=4, num_init_loss_batches=2, device="cpu")
n_beta = float(default_nbeta(small["batch_size"]))

tree = sample(
    model=model,
    dataset=train_data,
    observables={"train": train_data, "code": (code_data, 2)},
    lr=0.001,
    n_beta=n_beta,
    output_path=f"{OUT}/samples.zarr",
    **small,
)
res = compute_llc(tree)
sus = susceptibilities(
    model=model,
    dataset=train_data,
    observables={"train": train_data, "code": code_data},
    weight_restrictions={"full": None, "l0h1": create_param_masks(model, "l0h1")},
    sampling_task="train",
    lr=0.001,
    n_beta=30,
    batches_per_draw=1,
    output_path=f"{OUT}/sus.zarr",
    **small,
)
token_bif = compute_bif(tree, correlation_method="token")
seq_bif = compute_bif(tree, correlation_method="sequence", reduce_chain_dimension_method="mean")

RESULTS = {
    "n_beta": n_beta,
    "input_ids": np.asarray(train_data.with_format("numpy")["input_ids"]),
    **{f"samples/{k}": v.values for k, v in tree.dataset.data_vars.items()},
    **{
        f"llc/{k}": res[k].values
        for k in ["llc_mean", "llc_std", "llc_per_chain", "llc_scalar", "loss_trace"]
    },
    **{f"sus/{k}": v.values for k, v in sus["susceptibilities"].dataset.data_vars.items()},
    "token_bif": token_bif["influences"].values,
    "seq_bif": seq_bif["influences"].values,
}
