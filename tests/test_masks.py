"""Weight restrictions (distinterp.masks): per-type mask shapes and counts, what the masks mean for the
attention computation, SGLD leaving unselected elements untouched, errors, and parity with devinterp.

Every model is a tiny random-init `...ForCausalLM` built from its config class: 2 layers, 4 heads of
size 8 (hidden 32), 2 key/value heads where the architecture has GQA, vocab 96. No downloads.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

from distinterp.masks import (
    create_param_masks,
    head_counts,
    structure_for,
)
from distinterp.model_structures import supported_model_types

DOCS = Path(__file__).resolve().parents[1] / "docs" / "weight-restrictions.md"

# Generic tiny sizes: each is set on a config only where the config has that attribute.
_GENERIC: list[tuple[object, tuple[str, ...]]] = [
    (2, ("num_hidden_layers", "n_layer", "num_layers", "n_layers")),
    (4, ("num_attention_heads", "n_head", "num_heads", "n_heads")),
    (2, ("num_key_value_heads", "num_kv_heads")),
    (32, ("hidden_size", "n_embd", "d_model")),
    (8, ("head_dim",)),
    (64, ("intermediate_size", "n_inner", "ffn_hidden_size", "moe_intermediate_size", "ffn_dim")),
    (64, ("shared_expert_intermediate_size", "shared_intermediate_size")),
    (96, ("vocab_size",)),
    (64, ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx")),
    (4, ("num_experts", "num_local_experts", "n_routed_experts")),
    (2, ("num_experts_per_tok",)),
    (0, ("pad_token_id",)),
    (1, ("bos_token_id",)),
    (2, ("eos_token_id",)),
]

# case id -> (model_type, extra config kwargs)
CASES: dict[str, tuple[str, dict]] = {
    mt: (mt, {}) for mt in supported_model_types() if mt != "transformer_lens"
}
CASES.update(
    {
        "falcon": ("falcon", {"multi_query": True}),
        "falcon-mha": ("falcon", {"multi_query": False}),
        "falcon-new": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
        "gpt_bigcode": ("gpt_bigcode", {"multi_query": True}),
        "gpt_bigcode-mha": ("gpt_bigcode", {"multi_query": False}),
        "codegen": ("codegen", {"num_attention_heads": 8, "hidden_size": 64, "rotary_dim": 4}),  # 2 heads per TP block
        "opt": ("opt", {"word_embed_proj_dim": 32}),
        "gpt_neo": ("gpt_neo", {"attention_types": [[["global", "local"], 1]]}),
        "deepseek_v2": ("deepseek_v2", dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                            qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)),
        "deepseek_v3": ("deepseek_v3", dict(q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=4,
                                            qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                                            first_k_dense_replace=1)),
        "dbrx": ("dbrx", {"attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0},
                          "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}}),
    }
)  # fmt: skip

# Which q/k/v biases a head selects ("" for none; a fused bias counts as all three). OPT and XGLM have
# all three, but their K bias is a softmax no-op and is left out, as devinterp does.
QKV_BIASES = {"gpt2": "qkv", "openai-gpt": "qkv", "gpt_bigcode": "qkv", "gpt_bigcode-mha": "qkv",
              "gpt_neox": "qkv", "persimmon": "qkv", "bloom": "qkv", "qwen2": "qkv", "qwen2_moe": "qkv",
              "starcoder2": "qkv", "phi": "qkv", "gpt_oss": "qkv", "seed_oss": "qkv", "glm": "qkv",
              "glm4": "qkv", "opt": "qv", "xglm": "qv"}  # fmt: skip
MLA = {"deepseek_v2", "deepseek_v3"}

# Cases whose attention heads are computed independently given the layer input, and the layout they show.
SEMANTIC_CASES = ["gpt2", "gpt_neox", "llama", "bloom", "falcon", "falcon-mha", "falcon-new", "codegen",
                  "gpt_bigcode", "gpt_bigcode-mha", "phi3", "mpt", "opt", "persimmon", "deepseek_v3"]  # fmt: skip


@functools.cache
def tiny_model(case: str) -> torch.nn.Module:
    """A tiny random-init causal LM for a case id (cached: tests that change weights deep-copy it)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_type, extra = CASES[case]
    defaults = AutoConfig.for_model(model_type)
    kwargs = {}
    for value, names in _GENERIC:  # the first name the config knows (aliases map to one attribute)
        known = [
            n
            for n in names
            if hasattr(defaults, n) and not isinstance(getattr(type(defaults), n, None), property)
        ]
        if known:
            kwargs[known[0]] = value
    kwargs.update(extra)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AutoConfig.for_model(model_type, **kwargs)
        if (
            model_type == "dbrx"
        ):  # transformers 5.x reads attn_config.rope_theta, which DbrxAttentionConfig lacks
            config.attn_config.rope_theta = 10000.0
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def head_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) of a tiny model."""
    structure = structure_for(model)
    n_heads, n_kv = head_counts(model, structure)
    hidden = model.get_input_embeddings().weight.shape[1]
    return n_heads, n_kv, hidden // n_heads


def o_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The output projection of a layer's attention (whose input is the per-head attention output)."""
    structure = structure_for(model)
    (o,) = [hp for hp in structure.heads if hp.role == "o"]
    return model.get_submodule(f"{structure.layers}.{layer}.{o.name.rsplit('.', 1)[0]}")


def n_selected(masks: dict[str, torch.Tensor | None], model: torch.nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() if m is None else int(m.sum()) for n, m in masks.items())


# ---------------------------------------------------------------------------------------------------
# Per model type: shapes, counts, partitions, ranges.


@pytest.mark.parametrize("case", sorted(CASES))
def test_patterns_resolve_with_right_shapes_and_counts(case: str) -> None:
    model = tiny_model(case)
    params = dict(model.named_parameters())
    structure = structure_for(model)
    n_heads, n_kv, hd = head_dims(model)
    hidden = model.get_input_embeddings().weight.shape[1]

    assert create_param_masks(model, "full") == dict.fromkeys(params)
    for layer in (0, 1):
        prefix = f"{structure.layers}.{layer}."
        assert list(create_param_masks(model, f"l{layer}")) == [n for n in params if n.startswith(prefix)]
    attn, mlp = create_param_masks(model, "l1 attn"), create_param_masks(model, "l1 mlp")
    assert attn and mlp and not set(attn) & set(mlp)
    assert set(attn) | set(mlp) <= set(create_param_masks(model, "l1"))
    assert all(m is None for m in [*attn.values(), *mlp.values()])
    assert not any("norm" in n.rsplit(".", 1)[0].rsplit(".", 1)[-1] for n in [*attn, *mlp])
    assert create_param_masks(model, "embed") == {n: None for n in params if n in structure.embed}
    assert len(create_param_masks(model, "embed")) == 1

    heads = [create_param_masks(model, f"l1h{h}") for h in range(n_heads)]
    groups = [create_param_masks(model, f"l1g{g}") for g in range(n_kv)]
    for masks in heads + groups:
        assert set(masks) <= set(attn), "head parameters are attention parameters of that layer"
        for name, mask in masks.items():
            assert mask is not None and mask.dtype == torch.bool and mask.shape == params[name].shape
            assert mask.any()
    # Every head parameter is split exactly among the GQA groups, and covered by the heads.
    for name in groups[0]:
        stacked = torch.stack([g[name] for g in groups]).int()
        assert torch.equal(stacked.sum(0), torch.ones_like(stacked[0])), name
        assert torch.stack([h[name] for h in heads]).any(0).all(), name
    # The output projection's columns are split exactly among the heads.
    o_name = f"{structure.layers}.1.{next(hp.name for hp in structure.heads if hp.role == 'o')}"
    o_count = torch.stack([h[o_name] for h in heads]).int().sum(0)
    assert torch.equal(o_count, torch.ones_like(o_count))
    if case not in MLA:
        # A head: head_dim rows of each of the q, k and v weights, its o columns, and its biases' slices;
        # a group: its queries' q rows and o columns, the k and v rows of its key/value head.
        biases = QKV_BIASES.get(case, "")
        ratio = n_heads // n_kv
        sinks = case == "gpt_oss"  # one attention-sink logit per head
        assert [n_selected(h, model) for h in heads] == [(4 * hidden + len(biases)) * hd + sinks] * n_heads
        group_biases = ratio * ("q" in biases) + ("k" in biases) + ("v" in biases)
        expected_group = (2 * ratio + 2) * hd * hidden + group_biases * hd + ratio * sinks
        assert [n_selected(g, model) for g in groups] == [expected_group] * n_kv
    if extra_params := [n for n in create_param_masks(model, "l1h0") if "sinks" in n]:
        assert [int(heads[h][extra_params[0]].nonzero()) for h in range(n_heads)] == list(range(n_heads))

    with pytest.raises(ValueError, match=r"Layer 2 is out of range: the model has 2 layers \(l0 to l1\)"):
        create_param_masks(model, "l2h0")
    with pytest.raises(ValueError, match=rf"Head {n_heads} is out of range.*h0 to h{n_heads - 1}"):
        create_param_masks(model, f"l0h{n_heads}")
    with pytest.raises(ValueError, match=rf"Group {n_kv} is out of range.*g0 to g{n_kv - 1}"):
        create_param_masks(model, f"l0g{n_kv}")
