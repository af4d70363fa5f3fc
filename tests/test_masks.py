"""Weight restrictions (distinterp.masks): per-type mask shapes and counts, what the masks mean for the
attention computation, SGLD leaving unselected elements untouched, errors, preview, the docs table, and
equality with devinterp 2.0.1 where it implements the same restriction.

Every model is a tiny random-init model built from its config class: 2 layers, 4 heads of size 8
(hidden 32), 2 key/value heads where the architecture has GQA, vocab 96. No downloads. Decoders are
`...ForCausalLM`; encoders (BERT family, XLM) are `...ForMaskedLM` and encoder-decoders
`...ForConditionalGeneration`, both sampled with a custom `loss_fn` (they have no next-token logits).
devinterp's own tiny configs (`make_tiny`, its `...ForCausalLM` forms) are checked separately.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from pathlib import Path

import pytest
import torch

from distinterp import sample
from distinterp.masks import (
    PARTS,
    WeightRestrictionError,
    canonical_names,
    create_param_masks,
    head_counts,
    layer_params,
    layer_structure,
    part_structure,
    preview_weight_restriction,
    structure_for,
)
from distinterp.model_structures import (
    HEAD_ROLES,
    QKV_LAYOUTS,
    STRUCTURES,
    ModelStructure,
    markdown_table,
    supported_model_types,
    variants,
)
from distinterp.sampling import resolve_param_masks
from distinterp.update import SGLDHyper, make_slots, sgld_step
from tests.conftest import SMALL, tiny_gpt2, token_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "weight-restrictions.md"

# Tiny sizes, each set on a config only where the config has that attribute. Names inside one tuple are
# aliases of one setting (the first the config knows is used); separate tuples are separate settings.
_GENERIC: list[tuple[object, tuple[str, ...]]] = [
    (2, ("num_hidden_layers", "n_layer", "num_layers", "n_layers")),
    (2, ("encoder_layers",)),
    (2, ("decoder_layers",)),
    (4, ("num_attention_heads", "n_head", "num_heads", "n_heads")),
    (4, ("encoder_attention_heads",)),
    (4, ("decoder_attention_heads",)),
    (64, ("encoder_ffn_dim",)),
    (64, ("decoder_ffn_dim",)),
    (32, ("embedding_size", "input_embedding_size")),
    (32, ("output_embedding_size",)),
    (8, ("pronunciation_embed_dim",)),
    (8, ("shape_embed_dim",)),
    (64, ("dim_ff",)),
    (8, ("dim_head",)),
    (8, ("num_mel_bins",)),
    (8, ("max_source_positions",)),
    (8, ("hidden_size_per_layer_input",)),
    (96, ("vocab_size_per_layer_input",)),
    (2, ("num_key_value_heads", "num_kv_heads")),
    (32, ("hidden_size", "n_embd", "d_model", "emb_dim")),
    (8, ("head_dim",)),
    (64, ("intermediate_size", "n_inner", "ffn_dim")),
    (16, ("moe_intermediate_size",)),
    (64, ("ffn_hidden_size",)),
    (16, ("shared_expert_intermediate_size", "shared_intermediate_size")),
    (96, ("vocab_size",)),
    (64, ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx")),
    (64, ("max_target_positions",)),
    (4, ("num_experts", "num_local_experts", "n_routed_experts")),
    (2, ("num_experts_per_tok",)),
    (0, ("pad_token_id",)),
    (1, ("bos_token_id",)),
    (2, ("eos_token_id",)),
]

# Which auto class builds a model type's tiny model (default: causal LM).
ENCODERS = {"bert", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "rembert",
            "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod",
            "xlm", "esm", "mpnet", "deberta-v2", "distilbert", "modernbert"}  # fmt: skip
SEQ2SEQ = {"bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "mbart", "mvp", "pegasus", "plbart",
           "whisper", "t5", "mt5", "umt5", "marian", "m2m_100"}  # fmt: skip


def auto_kind(model_type: str) -> str:
    return "mlm" if model_type in ENCODERS else "seq2seq" if model_type in SEQ2SEQ else "causal"


# case id -> (model_type, extra config kwargs)
CASES: dict[str, tuple[str, dict]] = {
    mt: (mt, {}) for mt in supported_model_types() if mt != "transformer_lens"
}
CASES.update(
    {
        "falcon": ("falcon", {"multi_query": True}),
        "falcon-mha": ("falcon", {"multi_query": False, "num_kv_heads": 4}),
        "falcon-new": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
        "gpt_bigcode": ("gpt_bigcode", {"multi_query": True}),
        "gpt_bigcode-mha": ("gpt_bigcode", {"multi_query": False}),
        "codegen": ("codegen", {"num_attention_heads": 8, "hidden_size": 64, "rotary_dim": 4}),  # 2 heads per TP block
        "opt": ("opt", {"word_embed_proj_dim": 32}),
        "gpt_neo": ("gpt_neo", {"attention_types": [[["global", "local"], 1]]}),
        "gptj": ("gptj", {"rotary_dim": 4}),
        "ctrl": ("ctrl", {"dff": 64}),
        "qwen3-hd16": ("qwen3", {"head_dim": 16}),  # head_dim != hidden / n_heads
        "llama-tied": ("llama", {"tie_word_embeddings": True}),
        "deepseek_v2": ("deepseek_v2", dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                            qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                                            num_key_value_heads=4)),
        "deepseek_v3": ("deepseek_v3", dict(q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=4,
                                            qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                                            first_k_dense_replace=1, num_key_value_heads=4, head_dim=4)),
        "glm4_moe_lite": ("glm4_moe_lite", dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                                qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                                                num_key_value_heads=4)),
        "dbrx": ("dbrx", {"attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0},
                          "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}}),
        "big_bird": ("big_bird", {"attention_type": "original_full"}),
        "bigbird_pegasus": ("bigbird_pegasus", {"attention_type": "original_full"}),
        "lfm2": ("lfm2", {"layer_types": ["conv", "full_attention"]}),
        "minimax": ("minimax", {"layer_types": ["linear_attention", "full_attention"]}),
        # l0 sliding (head_dim 8), l1 full attention (its own head_dim and key/value heads)
        "gemma4_text": ("gemma4_text", {"layer_types": ["sliding_attention", "full_attention"]}),
        "xmod": ("xmod", {"languages": ["en_XX"], "default_language": "en_XX"}),

        "whisper": ("whisper", {"encoder_attention_heads": 2}),  # encoder and decoder head counts differ
        "esm": ("esm", {"position_embedding_type": "rotary"}),
        "esm-absolute": ("esm", {}),
        "deberta-v2": ("deberta-v2", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                      "share_att_key": True, "position_buckets": 8, "max_relative_positions": 16}),
        "deberta-v2-unshared": ("deberta-v2", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                               "share_att_key": False, "position_buckets": 8}),
        "t5": ("t5", {"d_kv": 8, "d_ff": 64, "num_decoder_layers": 2}),
        "mt5": ("mt5", {"d_kv": 8, "d_ff": 64, "num_decoder_layers": 2, "tie_word_embeddings": False}),
        "umt5": ("umt5", {"d_kv": 8, "d_ff": 64, "num_decoder_layers": 2}),
    }
)  # fmt: skip

# Models for dedicated tests only (not in the per-type tests).
SPECIAL_CASES: dict[str, tuple[str, dict]] = {
    # l1 full attention with K as V (no v_proj), l2 reuses l1's K/V (no k/v_proj)
    "gemma4_text-kv": ("gemma4_text", {"num_hidden_layers": 3, "num_kv_shared_layers": 1, "attention_k_eq_v": True,
                                       "layer_types": ["sliding_attention", "full_attention", "full_attention"]}),
}  # fmt: skip

# Which q/k/v biases a head selects ("" for none; a fused bias counts as all three). OPT-style models
# have all three, but their K bias is a softmax no-op and is left out, as devinterp does.
QKV_BIASES = {**dict.fromkeys(ENCODERS | SEQ2SEQ | {"trocr", "bert-generation"}, "qv"),
              "gpt2": "qkv", "gpt-sw3": "qkv", "openai-gpt": "qkv", "gpt_bigcode": "qkv",
              "gpt_bigcode-mha": "qkv", "gpt_neox": "qkv", "persimmon": "qkv", "bloom": "qkv", "qwen2": "qkv",
              "qwen2_moe": "qkv", "starcoder2": "qkv", "phi": "qkv", "gpt_oss": "qkv", "seed_oss": "qkv",
              "glm": "qkv", "glm4": "qkv", "jais2": "qkv", "opt": "qv", "xglm": "qv", "biogpt": "qv",
              "ctrl": "qv", "roformer": "qkv", "bigbird_pegasus": "", "bigbird_pegasus:enc": "",
              "cpmant": "", "lfm2": "", "minimax": "", "gemma4_text": "", "esm": "qkv", "esm-absolute": "qv", "deberta-v2": "qkv",
              "deberta-v2-unshared": "qkv", "modernbert": "", "t5": "", "mt5": "", "umt5": ""}  # fmt: skip
MLA = {"deepseek_v2", "deepseek_v3", "glm4_moe_lite"}
# Per-head extra parameters of one element per head (gpt_oss attention sinks) or head_dim rows (afmoe's
# output gate): counted on top of q/k/v/o.
EXTRA_PER_HEAD = {"gpt_oss": 1, "afmoe": 8 * 32, "umt5": 32, "umt5:enc": 32, "umt5:cross": 0,
                  "deberta-v2-unshared": 2 * 8 * 32 + 2 * 8}  # fmt: skip
# Models whose heads interact inside attention (a norm over all heads' concatenated q, k, or output, as
# BitNet's attn_sub_norm), so one head's parameters move every head's output; the masks are still each
# head's own slices.
CROSS_HEAD_NORM = {"olmo2", "olmo3", "olmoe", "flex_olmo", "minimax_m2", "bitnet"}
# MoE models: "l<N> mlp" must hold their experts.
MOE_CASES = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "granitemoe", "granitemoeshared",
             "gpt_oss", "deepseek_v2", "deepseek_v3", "dbrx", "glm4_moe", "ernie4_5_moe", "hunyuan_v1_moe",
             "exaone_moe", "flex_olmo", "minimax_m2", "aria_text", "llama4_text", "afmoe", "solar_open",
             "glm4_moe_lite"}  # fmt: skip


@functools.cache
def tiny_model(case: str) -> torch.nn.Module:
    """A tiny random-init model for a case id (cached: tests that change weights deep-copy it)."""
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_type, extra = CASES[case] if case in CASES else SPECIAL_CASES[case]
    defaults = AutoConfig.for_model(model_type)
    kwargs = {}
    aliases = getattr(defaults, "attribute_map", {})
    for value, names in _GENERIC:  # the first name the config has as its own attribute (not an alias)
        known = [
            n
            for n in names
            if n not in aliases
            and n in vars(defaults)
            and not isinstance(getattr(type(defaults), n, None), property)
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
            config.ffn_config.hidden_size = config.d_model  # not taken from the ffn_config dict
        auto = {
            "causal": "AutoModelForCausalLM",
            "mlm": "AutoModelForMaskedLM",
            "seq2seq": "AutoModelForSeq2SeqLM",
        }
        name = "AutoModelForSpeechSeq2Seq" if model_type == "whisper" else auto[auto_kind(model_type)]
        model = getattr(transformers, name).from_config(config)
    return model.eval()


MASK_ID = 3


def masked_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """A masked-LM loss for encoders, (batch, seq-1): every other token is masked, and every token after
    the first is predicted from the encoder's output at its own position."""
    masked = input_ids.clone()
    masked[:, 1::2] = MASK_ID
    logits = model(input_ids=masked).logits[:, 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")


def seq2seq_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Encoder-decoder reconstruction loss, (batch, seq-1): the encoder reads the sequence (Whisper: fixed
    audio features), the decoder predicts it token by token."""
    return torch.nn.functional.cross_entropy(
        seq2seq_forward(model, input_ids, input_ids[:, :-1]).logits.transpose(1, 2),
        input_ids[:, 1:],
        reduction="none",
    )


def seq2seq_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor
) -> object:
    if model.config.model_type == "whisper":
        n = 2 * model.config.max_source_positions
        features = torch.randn(
            (len(input_ids), model.config.num_mel_bins, n), generator=torch.Generator().manual_seed(2)
        )
        return model(input_features=features, decoder_input_ids=decoder_input_ids)
    return model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)


def loss_fn_for(model: torch.nn.Module) -> object:
    """The per-token loss a user passes as `loss_fn` for this model (None: next-token cross-entropy)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return seq2seq_loss
    return masked_lm_loss if auto_kind(model.config.model_type) == "mlm" else None


def run(model: torch.nn.Module, input_ids: torch.Tensor) -> object:
    """One forward pass of any tiny model on a batch of token ids."""
    if getattr(model.config, "is_encoder_decoder", False):
        return seq2seq_forward(model, input_ids, input_ids)
    if model.config.model_type == "trocr":  # the decoder of a vision encoder-decoder: give it image features
        g = torch.Generator().manual_seed(3)
        features = torch.randn(
            (*input_ids.shape[:1], 5, model.config.cross_attention_hidden_size or 32), generator=g
        )
        return model(input_ids, encoder_hidden_states=features)
    return model(input_ids)


def n_selected(masks: dict[str, torch.Tensor | None], model: torch.nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() if m is None else int(m.sum()) for n, m in masks.items())


def case_parts(case: str) -> list[str | None]:
    """The parts a case's restrictions can address: the main one, and "enc"/"cross" where it has them."""
    model_type = CASES[case][0]
    parts = [name for name, _ in variants(model_type)[0].parts]
    return [None] + [part for part in parts if part != "enc" or auto_kind(model_type) == "seq2seq"]


PART_CASES = sorted(f"{case}:{part}" if part else case for case in CASES for part in case_parts(case))
"""Case ids, with ":enc" / ":cross" for the encoder and cross-attention of encoder-decoder models."""


def split_case(case_id: str) -> tuple[str, str | None, str]:
    """(case, part, the restriction prefix addressing that part)."""
    case, _, part = case_id.partition(":")
    return case, part or None, f"{part} " if part else ""


def structure_of(model: torch.nn.Module, part: str | None = None, layer: int = 1) -> ModelStructure:
    """The structure entry for one part ("enc", "cross" or None) and layer of a model."""
    return layer_structure(model, part_structure(model, structure_for(model), part), layer)


def o_name(model: torch.nn.Module, layer: int, part: str | None = None) -> str:
    """The parameter name of a layer's attention output projection weight."""
    rel = next(hp.name for hp in structure_of(model, part, layer).heads if hp.role == "o")
    return layer_params(
        dict(model.named_parameters()), part_structure(model, structure_for(model), part), layer
    )[rel]


# ---------------------------------------------------------------------------------------------------
# Per model type: shapes, counts, partitions, ranges.


def test_every_supported_type_has_a_tiny_model_case() -> None:
    assert {mt for mt, _ in CASES.values()} == set(STRUCTURES) - {"transformer_lens"}
    assert len(STRUCTURES) >= 117  # 116 transformers model types and TransformerLens


def test_devinterp_types_are_all_supported() -> None:
    """Every model type devinterp 2.0.1 has a structure for, except code_llama: not a transformers model
    type (Code Llama checkpoints are model_type "llama")."""
    structures = pytest.importorskip("devinterp.slt._model_structures")
    theirs = set(structures.HEAD_STRUCTURES) - {"hooked_transformer", "code_llama"}
    assert theirs <= set(STRUCTURES), sorted(theirs - set(STRUCTURES))


@pytest.mark.parametrize("model_type", supported_model_types())
def test_table_entries_are_well_formed(model_type: str) -> None:
    entries = [*variants(model_type)]
    entries += [part for s in entries for _, part in s.parts]
    entries += [kind for s in entries for _, kind in s.layer_kinds]
    for s in entries:
        re.compile(s.attn)
        re.compile(s.mlp)
        assert s.embed and s.unembed and s.layers and not s.layers.endswith(".")
        roles = [hp.role for hp in s.heads]
        assert (
            set(roles) <= set(HEAD_ROLES)
            and "o" in roles
            and len(set(hp.name for hp in s.heads)) == len(roles)
        )
        assert all((hp.layout in QKV_LAYOUTS) == (hp.role == "qkv") for hp in s.heads)
        assert all(re.match(s.attn, hp.name) for hp in s.heads), "head parameters are attention parameters"
        assert all(name in PARTS for name, _ in s.parts)
    assert variants(model_type)[-1].when == (), "the last variant is the fallback that always matches"


def embedding_name(model: torch.nn.Module) -> str:
    """The name named_parameters() reports the token embedding under (a tied LM head may take it)."""
    weight = model.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters() if p is weight)


@pytest.mark.parametrize("case_id", PART_CASES)
def test_patterns_resolve_with_right_shapes_and_counts(case_id: str) -> None:
    case, part, pre = split_case(case_id)
    model = tiny_model(case)
    params = dict(model.named_parameters())
    base = part_structure(model, structure_for(model), part)
    structure = structure_of(model, part)
    n_heads, n_kv = head_counts(model, structure, 1)
    hidden = params[o_name(model, 1, part)].shape[0]

    assert create_param_masks(model, "full") == dict.fromkeys(params)
    attn = create_param_masks(model, f"{pre}l1 attn")
    if base.whole_layers:
        for layer in (0, 1):
            assert list(create_param_masks(model, f"{pre}l{layer}")) == list(
                layer_params(params, base, layer).values()
            )
        mlp = create_param_masks(model, f"{pre}l1 mlp")
        assert attn and mlp and not set(attn) & set(mlp)
        assert set(attn) | set(mlp) <= set(create_param_masks(model, f"{pre}l1"))
        assert all(m is None for m in mlp.values())
        if case in MOE_CASES:
            assert any("expert" in n or "router" in n or ".gate." in n for n in mlp), sorted(mlp)
        assert not any(re.search(r"(?i)norm|\bln\b", n.rsplit(".", 2)[-2]) for n in mlp)
    else:
        assert attn and set(attn) <= set(create_param_masks(model, "l1"))
        for restriction in (f"{pre}l1", f"{pre}l1 mlp"):
            with pytest.raises(
                WeightRestrictionError, match=f"'{part} l<N>' takes a head, group or attention"
            ):
                create_param_masks(model, restriction)
    assert all(m is None for m in attn.values())
    assert not any(re.search(r"(?i)norm|\bln\b", n.rsplit(".", 2)[-2]) for n in attn)

    # embed: the token embedding under the name it is reported as; unembed: the LM head unless tied.
    assert create_param_masks(model, "embed") == {embedding_name(model): None}
    unembed = create_param_masks(model, "unembed")
    canonical = canonical_names(model)
    listed = {canonical.get(u) for u in structure.unembed} - {embedding_name(model)}
    assert unembed == {n: None for n in params if n in listed}
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    assert any(n.endswith("weight") for n in unembed) != tied  # a tied LM head is the embedding: nothing

    heads = [create_param_masks(model, f"{pre}l1h{h}") for h in range(n_heads)]
    groups = [create_param_masks(model, f"{pre}l1g{g}") for g in range(n_kv)]
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
    o_count = torch.stack([h[o_name(model, 1, part)] for h in heads]).int().sum(0)
    assert torch.equal(o_count, torch.ones_like(o_count))
    if case not in MLA:
        # A head: head_dim rows of each of the q, k and v weights, its o columns, and its biases' slices;
        # a group: its queries' q rows and o columns, the k and v rows of its key/value head.
        hd = params[o_name(model, 1, part)].numel() // hidden // n_heads
        biases = QKV_BIASES.get(case_id, QKV_BIASES.get(case, ""))
        ratio = n_heads // n_kv
        extra = EXTRA_PER_HEAD.get(case_id, EXTRA_PER_HEAD.get(case, 0))
        assert [n_selected(h, model) for h in heads] == [(4 * hidden + len(biases)) * hd + extra] * n_heads
        group_biases = ratio * ("q" in biases) + ("k" in biases) + ("v" in biases)
        expected_group = (2 * ratio + 2) * hd * hidden + group_biases * hd + ratio * extra
        assert [n_selected(g, model) for g in groups] == [expected_group] * n_kv
    if sinks := [n for n in heads[0] if n.endswith("sinks")]:
        assert [int(heads[h][sinks[0]].nonzero()) for h in range(n_heads)] == list(range(n_heads))

    with pytest.raises(
        WeightRestrictionError, match=r"Layer 2 is out of range: the model has 2 layers \(l0 to l1\)"
    ):
        create_param_masks(model, f"{pre}l2h0")
    with pytest.raises(
        WeightRestrictionError, match=rf"Head {n_heads} is out of range.*h0 to h{n_heads - 1}"
    ):
        create_param_masks(model, f"{pre}l1h{n_heads}")
    with pytest.raises(WeightRestrictionError, match=rf"Group {n_kv} is out of range.*g0 to g{n_kv - 1}"):
        create_param_masks(model, f"{pre}l1g{n_kv}")


# ---------------------------------------------------------------------------------------------------
# Semantics: a head's mask is exactly the elements that compute that head's output.


def head_contributions(
    model: torch.nn.Module, layer: int, input_ids: torch.Tensor, part: str | None = None
) -> torch.Tensor:
    """Each head's additive contribution to layer `layer`'s attention output: (n_heads, batch, seq, hidden).

    The output projection's input is the heads' outputs side by side; head j's contribution is the
    projection of that input with every other head zeroed, minus the projection of zeros (the shared bias).
    """
    n_heads, _ = head_counts(model, structure_of(model, part, layer), layer)
    o = model.get_submodule(o_name(model, layer, part).rsplit(".", 1)[0])
    seen: list[torch.Tensor] = []
    handle = o.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            run(model, input_ids)
    finally:
        handle.remove()
    x = seen[0].reshape(*seen[0].shape[:-1], n_heads, -1)
    with torch.no_grad():
        base = o(torch.zeros_like(seen[0]))
        return torch.stack(
            [o((x * (torch.arange(n_heads) == j)[:, None]).flatten(-2)) - base for j in range(n_heads)]
        )


def perturbed(model: torch.nn.Module, masks: dict[str, torch.Tensor | None], inside: bool) -> torch.nn.Module:
    """A copy of `model` with noise added to the masked elements (inside) or to the rest of those params."""
    copy_ = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    params = dict(copy_.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            assert mask is not None
            where = mask if inside else ~mask
            params[name].add_(0.5 * torch.randn(params[name].shape, generator=g) * where)
    return copy_


def changed_heads(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    """Heads whose contribution moved by more than float32 noise."""
    diff = (after - before).flatten(1).abs().amax(1)
    scale = before.abs().max()
    assert all(d < 1e-5 * scale or d > 1e-3 * scale for d in diff), diff  # clearly moved or not at all
    return {int(j) for j in torch.nonzero(diff > 1e-3 * scale)}


SEMANTIC_CASES = [case_id for case_id in PART_CASES if split_case(case_id)[0] not in CROSS_HEAD_NORM]


@pytest.mark.parametrize("case_id", SEMANTIC_CASES)
def test_head_mask_moves_exactly_that_head(case_id: str) -> None:
    """Perturbing l1h<M>'s elements moves head M's output (and, through the shared K/V, its GQA group's)
    and no other head's; perturbing the rest of those parameters leaves head M's output as it was."""
    case, part, pre = split_case(case_id)
    model = tiny_model(case)
    n_heads, n_kv = head_counts(model, structure_of(model, part), 1)
    group_of = [h * n_kv // n_heads for h in range(n_heads)]
    ids = torch.randint(4, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    base = head_contributions(model, 1, ids, part)

    def moved_by(masks: dict[str, torch.Tensor | None], inside: bool) -> set[int]:
        return changed_heads(base, head_contributions(perturbed(model, masks, inside), 1, ids, part))

    for h in sorted({0, n_heads - 1}):
        masks = create_param_masks(model, f"{pre}l1h{h}")
        moved = moved_by(masks, inside=True)
        assert h in moved and moved <= {j for j in range(n_heads) if group_of[j] == group_of[h]}, moved
        untouched = moved_by(masks, inside=False)
        assert h not in untouched and untouched, untouched
    if n_kv < n_heads:
        g = n_kv - 1
        members = {j for j in range(n_heads) if group_of[j] == g}
        masks = create_param_masks(model, f"{pre}l1g{g}")
        assert moved_by(masks, inside=True) == members
        assert not members & moved_by(masks, inside=False)


# ---------------------------------------------------------------------------------------------------
# SGLD with masks: unselected elements stay bitwise equal.


@pytest.mark.parametrize(
    ("case", "restriction"),
    [
        ("gpt2", ["l0h1", "l1 mlp", "embed"]),
        ("qwen2", ["l1g0", "l0h3", "unembed"]),
        ("falcon-new", "l1h2"),
        ("bert", ["l0h1", "l1 mlp", "unembed"]),  # masked-LM loss_fn
        ("xlm", ["l1h2", "l0 mlp"]),
        ("bart", ["enc l0h1", "cross l1h2", "l1h0", "l0 mlp"]),  # encoder-decoder loss_fn
    ],
)
def test_sgld_with_masks_moves_only_selected_elements(case: str, restriction: str | list[str]) -> None:
    model = copy.deepcopy(tiny_model(case)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = resolve_param_masks(model, create_param_masks(model, restriction))
    named = dict(model.named_parameters())
    for name, p in named.items():
        p.requires_grad_(name in masks)
    hyper = SGLDHyper(lr=1e-3, n_beta=10.0, localization=1.0, bounding_box_size=0.5)
    slots = make_slots(named, masks, hyper, keep_center=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (4, 9), generator=g)
    loss_fn = loss_fn_for(model)
    for _ in range(3):
        model.zero_grad()
        (model(ids, labels=ids).loss if loss_fn is None else loss_fn(model, ids).mean()).backward()
        sgld_step(slots, hyper, generator=g)
    for name, p in named.items():  # compare bit patterns (float == would equate -0.0 and 0.0)
        everything = torch.ones_like(p, dtype=torch.bool)
        selected = ~everything if name not in masks else everything if masks[name] is None else masks[name]
        bits, bits_before = p.detach().view(torch.int32), before[name].view(torch.int32)
        assert torch.equal(bits[~selected], bits_before[~selected]), name
        assert (bits[selected] != bits_before[selected]).all(), name


# ---------------------------------------------------------------------------------------------------
# Lists, exact names, errors, preview.


def test_lists_union_masks_in_first_appearance_order() -> None:
    model = tiny_model("qwen2")
    h0, h1, attn = (create_param_masks(model, r) for r in ("l1h0", "l1h1", "l1 attn"))
    union = create_param_masks(model, ["l1h0", "l1h1"])
    assert list(union) == list(h0)
    assert all(torch.equal(union[n], h0[n] | h1[n]) for n in union)  # type: ignore[operator]
    assert create_param_masks(model, ["l1h0", "l1 attn"]) == attn  # a whole parameter wins
    both = create_param_masks(model, ["embed", "l0 mlp", "model.norm.weight"])
    assert list(both) == [
        "model.embed_tokens.weight",
        *create_param_masks(model, "l0 mlp"),
        "model.norm.weight",
    ]
    assert create_param_masks(model, ["L1H0", " l1 h0 "]).keys() == h0.keys()  # case and spaces


def test_exact_parameter_names_work_on_any_model() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert create_param_masks(model, "1.weight") == {"1.weight": None}
    assert create_param_masks(model, "full") == dict.fromkeys(["0.weight", "0.bias", "1.weight", "1.bias"])


@pytest.mark.parametrize(
    ("restriction", "message"),
    [
        ("l0x", r"Unrecognised weight restriction 'l0x'. Valid patterns: 'full', 'l<N>', 'l<N>h<M>'"),
        ("layer0", r"Valid patterns: .*'l<N>g<M>', 'l<N> attn', 'l<N> mlp', 'embed', 'unembed'"),
        ("l0 attention", "Unrecognised"),
        ("h1", "Unrecognised"),
        ("l-1", "Unrecognised"),
        ("l9", r"Layer 9 is out of range: the model has 2 layers \(l0 to l1\)"),
        ("l9 mlp", "Layer 9 is out of range"),
        ("l0g2", r"Group 2 is out of range: the model has 2 key/value heads, so groups g0 to g1"),
        ("l0h4", r"Head 4 is out of range: the model has 4 attention heads per layer \(h0 to h3\)"),
        (["l0h0", "full"], "'full' selects every parameter and cannot be combined"),
        ([], "Empty list of weight restrictions. Valid patterns"),
    ],
)
def test_bad_restrictions_say_what_is_valid(restriction: str | list[str], message: str) -> None:
    with pytest.raises(WeightRestrictionError, match=message):
        create_param_masks(tiny_model("qwen2"), restriction)


def test_unknown_model_types_list_the_supported_ones() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(
        WeightRestrictionError, match=r"Cannot tell the model type of Linear.*Supported model types: afmoe"
    ):
        create_param_masks(model, "l0")
    model.config = type("Config", (), {"model_type": "my_lm"})()  # type: ignore[assignment]
    with pytest.raises(
        ValueError, match=r"do not support model type 'my_lm'.*Supported model types: .*gpt2.*llama"
    ):
        create_param_masks(model, "l0h0")
    with pytest.raises(TypeError, match="str or list"):
        create_param_masks(model, 3)  # type: ignore[arg-type]


def test_preview_shows_selected_keys_with_counts(capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model("gpt2")
    masks = create_param_masks(model, ["l1h2", "l0 mlp"])
    preview_weight_restriction(model, masks)
    out = capsys.readouterr().out
    total = sum(p.numel() for p in model.parameters())
    assert out.startswith(f"7 of {len(dict(model.named_parameters()))} parameters sampled: ")
    assert f"{n_selected(masks, model):,} of {total:,} elements" in out
    assert re.search(
        r"c_attn  792 / 3,168 \(25\.0%\)\n.*weight  768 / 3,072 \(25\.0%\)\n.*bias  24 / 96", out
    )
    assert re.search(r"c_proj  256 / 1,056 \(24\.2%\)\n.*weight  256 / 1,024 \(25\.0%\)\n", out), out
    assert re.search(r"mlp  4,192 / 4,192 \(100\.0%\)", out), out
    assert "wte" not in out and "ln_1" not in out  # only selected branches
    preview_weight_restriction(model, masks, plain=True)
    assert capsys.readouterr().out.splitlines() == sorted(masks)
    assert create_param_masks(model, "unembed") == {}  # tied: the LM head is wte
    preview_weight_restriction(model, {})
    assert capsys.readouterr().out.startswith("0 of ")


# ---------------------------------------------------------------------------------------------------
# Documentation.


def test_docs_table_is_the_structure_table() -> None:
    text = DOCS.read_text()
    m = re.search(r"<!-- BEGIN STRUCTURE TABLE -->\n(.*?)<!-- END STRUCTURE TABLE -->", text, re.S)
    assert m is not None, "docs/weight-restrictions.md lost its table markers"
    assert m[1] == markdown_table(), "regenerate it: python -m distinterp.model_structures"
    for model_type in supported_model_types():
        assert f"| `{model_type}` |" in m[1]


def test_readme_lists_every_supported_type() -> None:
    """README's "attention layout | supported model types" table names every table entry."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(r"\| attention layout \| supported model types \|\n\|---\|---\|\n((?:\|.*\n)+)", readme)
    assert m is not None, "README lost its supported model types table"
    cells = [re.split(r"(?<!\\)\|", row)[-2] for row in m[1].splitlines()]  # the last cell (\| is escaped)
    listed = set(re.findall(r"[\w.-]+", " ".join(cells)))
    assert set(supported_model_types()) <= listed, sorted(set(supported_model_types()) - listed)


# ---------------------------------------------------------------------------------------------------
# TransformerLens (optional extra).


def hooked_transformer(n_kv: int | None) -> torch.nn.Module:
    tl = pytest.importorskip("transformer_lens")
    if not hasattr(tl, "HookedTransformerConfig"):
        pytest.skip("this transformer_lens has no HookedTransformer (removed in 4.0)")
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=64, d_mlp=64, act_fn="gelu",
        n_key_value_heads=n_kv,
    )  # fmt: skip
    return tl.HookedTransformer(cfg)


@pytest.mark.parametrize("n_kv", [None, 2])
def test_transformer_lens_heads_are_leading_axis_slices(n_kv: int | None) -> None:
    model = hooked_transformer(n_kv)
    params = dict(model.named_parameters())
    masks = create_param_masks(model, "l1h3")
    k = "blocks.1.attn.W_K" if n_kv is None else "blocks.1.attn._W_K"
    assert set(masks) == {f"blocks.1.attn.{n}" for n in ("W_Q", "b_Q", "W_O")} | {
        k,
        k.replace("W_K", "b_K"),
        k.replace("K", "V"),
        k.replace("W_K", "b_V"),
    }
    for name, mask in masks.items():
        heads = torch.nonzero(mask.flatten(1).all(1) if mask.dim() > 1 else mask).flatten().tolist()
        assert heads == ([3] if params[name].shape[0] == 4 else [1]), name
        assert mask.flatten(1).all(1).equal(mask.flatten(1).any(1)), name  # whole head slices
    assert set(create_param_masks(model, "embed")) == {"embed.W_E"}
    assert set(create_param_masks(model, "unembed")) == {"unembed.W_U", "unembed.b_U"}
    assert "blocks.0.ln1.w" in create_param_masks(model, "l0")
    assert "blocks.0.attn.b_O" in create_param_masks(model, "l0 attn")
    assert set(create_param_masks(model, "l0 mlp")) == {
        f"blocks.0.mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out")
    }


# ---------------------------------------------------------------------------------------------------
# Equality with devinterp 2.0.1.

# Where devinterp 2.0.1 builds a different (wrong) mask, and which restriction kinds that affects. The
# semantic test above shows distinterp's masks are the heads' actual elements for these layouts.
DEVINTERP_DIFFERS = {
    "codegen": {"head", "group"},  # devinterp reads qkv_proj as interleaved; it is 4 blocks of [q | v | k]
    "falcon": {"head", "group"},  # multi-query: devinterp takes n_kv from the config and fails to view
    "falcon-new": {"head", "group"},  # grouped [q.. k v] per kv head: devinterp fails to view
    "falcon-mha": {"head", "group"},  # per-head [q, k, v]: devinterp reads it as [q | k | v]
    "gpt_bigcode": {"head", "group"},  # multi-query c_attn [q | k | v]: devinterp fails to view
    "gpt_bigcode-mha": {"head", "group"},  # per-head [q, k, v]: devinterp fails to view
    "granitemoe": {"mlp"},  # devinterp lists pre-5.x expert names (input_linear, ...): selects nothing
    "granitemoeshared": {"mlp"},
    "qwen3-hd16": {"head", "group"},  # devinterp assumes head_dim = hidden / n_heads
    "gpt_neox": {"unembed"},  # transformers 5 renamed embed_out to lm_head; devinterp selects nothing
    # devinterp's lists come from a dense first layer: in a MoE layer "mlp" misses the experts
    **{case: {"mlp"} for case in ("afmoe", "aria_text", "ernie4_5_moe", "exaone_moe", "glm4_moe")},
    # BERT family: devinterp's mlp suffix "output.dense.*" also matches attention.output.dense (the attention
    # output projection); its unembed misses the LM head bias, reported under its tied name
    # (cls.predictions.bias / lm_head.bias).
    **{case: {"mlp", "unembed"} for case in ENCODERS - {"xlm", "electra", "rembert"}},
    "bert-generation": {"mlp", "unembed"},
    "electra": {"mlp"},
    "rembert": {"mlp"},
    # The word embedding is reported as lm_head.decoder.weight (tied, registered first): devinterp's embed
    # selects nothing and its unembed selects the embedding.
    "camembert": {"mlp", "unembed", "embed"},
    "xlm-roberta": {"mlp", "unembed", "embed"},
    "roformer": {"mlp", "unembed", "head", "group"},  # and key.bias matters with rotary positions
    "xlm": {"l0", "l1", "mlp"},  # devinterp's layer N is transformer.attentions.N only
    # Encoder-decoders: the shared embedding is model.shared.weight (devinterp: model.decoder.embed_tokens)
    **{case: {"embed"} for case in SEQ2SEQ - {"whisper"}},
    "whisper": {"head", "group"},  # devinterp takes the encoder's head count for the decoder
    "gemma4_text": {"head", "group"},  # layer 1 has its own head_dim and key/value heads (per_layer_config)
    "minimax": {"l0 attn"},  # devinterp's attn misses the lightning-attention layers' parameters
}


def restriction_kind(restriction: str) -> str:
    return "head" if "h" in restriction else "group" if "g" in restriction else restriction.split()[-1]


def reference_cases() -> list[str]:
    try:
        from devinterp.slt._model_structures import HEAD_STRUCTURES
    except ImportError:
        return []
    return [case for case, (mt, _) in sorted(CASES.items()) if mt in HEAD_STRUCTURES]


@pytest.mark.reference
@pytest.mark.parametrize("case", reference_cases() or ["devinterp-missing"])
def test_masks_equal_devinterp(case: str) -> None:
    wr = pytest.importorskip("devinterp.slt.weight_restrictions")
    model = tiny_model(case)
    n_heads, n_kv = head_counts(model, structure_for(model), 1)
    restrictions = ["full", "l0", "l1", "l0 attn", "l1 attn", "l1 mlp", "embed", "unembed"]
    restrictions += [["l1h1", "l0 attn", "embed"]]
    restrictions += [f"l1h{h}" for h in range(n_heads)] + [f"l1g{g}" for g in range(n_kv)]
    assert compare_with_devinterp(wr, model, restrictions, DEVINTERP_DIFFERS.get(case, set())) >= 6


def compare_with_devinterp(wr: object, model: torch.nn.Module, restrictions: list, differs: set[str]) -> int:
    """Assert our masks equal devinterp's for each restriction whose kind is not in `differs`; how many."""
    compared = 0
    for restriction in restrictions:
        parts = [restriction] if isinstance(restriction, str) else restriction
        kinds = {restriction_kind(r) for r in parts} | set(parts)
        if kinds & differs:
            continue
        ours, theirs = create_param_masks(model, restriction), wr.create_param_masks(model, restriction)  # type: ignore[attr-defined]
        assert list(ours) == list(theirs), restriction
        for name in ours:
            a, b = ours[name], theirs[name]
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b.bool())), (restriction, name)
        compared += 1
    return compared


def devinterp_tiny_types() -> list[str]:
    try:
        from devinterp.slt._model_structures import HEAD_STRUCTURES
    except ImportError:
        return []
    return sorted(set(HEAD_STRUCTURES) - {"hooked_transformer", "code_llama"})


# devinterp's make_tiny cannot build these under this transformers; our own tiny case covers the type.
DEVINTERP_TINY_UNBUILDABLE = {"gemma4_text": "per-layer head_dim: make_tiny reads config.head_dim globally"}


@pytest.mark.reference
@pytest.mark.parametrize("model_type", devinterp_tiny_types() or ["devinterp-missing"])
def test_devinterp_tiny_models_work(model_type: str) -> None:
    """devinterp's own tiny model of each type it supports (make_tiny: 1 layer, its ...ForCausalLM form, MHA
    and GQA; the list devinterp's tests/slt/test_model_structures.py tests): every pattern resolves, the
    heads split the output projection, zeroing a head's (group's) output columns kills the gradient of its
    other elements (devinterp's dead-head test, on our masks), and the masks equal devinterp's wherever its
    are right (DEVINTERP_DIFFERS of our cases of that type)."""
    wr = pytest.importorskip("devinterp.slt.weight_restrictions")
    from devinterp.slt._tiny_configs import make_tiny
    from transformers import AutoModelForCausalLM

    if model_type in DEVINTERP_TINY_UNBUILDABLE:
        pytest.skip(DEVINTERP_TINY_UNBUILDABLE[model_type])
    differs = set().union(
        *(d for case, d in DEVINTERP_DIFFERS.items() if CASES.get(case, ("",))[0] == model_type)
    )
    for gqa in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = make_tiny(model_type, gqa=gqa)
            if gqa and getattr(config, "num_key_value_heads", None) in (None, config.num_attention_heads):
                continue
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
        n_heads, n_kv = head_counts(model, structure_for(model), 0)
        heads = [create_param_masks(model, f"l0h{h}") for h in range(n_heads)]
        o_count = torch.stack([h[o_name(model, 0)] for h in heads]).int().sum(0)
        assert torch.equal(o_count, torch.ones_like(o_count))
        restrictions = ["full", "l0", "l0 attn", "l0 mlp", "embed", "unembed", ["l0h1", "l0 mlp"]]
        restrictions += [f"l0h{h}" for h in range(n_heads)] + [f"l0g{g}" for g in range(n_kv)]
        assert compare_with_devinterp(wr, model, restrictions, differs) >= 3
        if model_type not in CROSS_HEAD_NORM:
            assert_dead_head_has_no_gradient(model, f"l0h{n_heads - 1}", f"l0h{n_heads - 2}")
            assert_dead_head_has_no_gradient(model, f"l0g{n_kv - 1}", f"l0g{n_kv - 2}" if n_kv > 1 else None)


def assert_dead_head_has_no_gradient(model: torch.nn.Module, restriction: str, other: str | None) -> None:
    """With the output columns of `restriction`'s heads zeroed, its other elements (those not shared with
    `other`) get no gradient; with them intact they do."""
    masks = create_param_masks(model, restriction)
    o = o_name(model, 0)
    shared = create_param_masks(model, other) if other else {}
    unique = {n: m & ~shared[n] if n in shared else m for n, m in masks.items() if n != o}
    ids = torch.randint(4, model.config.vocab_size, (4, 8), generator=torch.Generator().manual_seed(0))
    for dead in (False, True):
        copy_ = copy.deepcopy(model)
        if model.config.model_type == "xmod":
            copy_.set_default_language("en_XX")
        params = dict(copy_.named_parameters())
        if dead:
            with torch.no_grad():
                params[o][masks[o]] = 0.0
        run(copy_, ids).logits.sum().backward()
        for name, mask in unique.items():
            grad = params[name].grad
            moved = grad is not None and bool(grad[mask].abs().sum() > 0)
            assert moved != dead or not mask.any(), (restriction, name, "dead" if dead else "alive")


@pytest.mark.reference
@pytest.mark.parametrize("n_kv", [None, 2])
def test_transformer_lens_masks_equal_devinterp(n_kv: int | None) -> None:
    wr = pytest.importorskip("devinterp.slt.weight_restrictions")
    model = hooked_transformer(n_kv)
    for restriction in ["l0", "l1 attn", "l0 mlp", "embed", "unembed", "l1h0", "l1h3", "l0g1"]:
        ours, theirs = create_param_masks(model, restriction), wr.create_param_masks(model, restriction)
        assert list(ours) == list(theirs), restriction
        assert all((ours[n] is None and theirs[n] is None) or torch.equal(ours[n], theirs[n]) for n in ours)


def test_sample_takes_the_masks(tmp_path: Path) -> None:
    """End to end: create_param_masks' dict is a valid `param_masks` for distinterp.sample."""
    model, ds = tiny_gpt2(n_layer=2), token_dataset()
    masks = create_param_masks(model, ["l1h1", "l0 mlp", "embed"])
    out = sample(model, ds, {"train": ds}, param_masks=masks, output_path=tmp_path / "s.zarr", **SMALL)
    loss = out.dataset["sampling_loss"].values
    assert (
        loss.shape[:2] == (SMALL["num_chains"], SMALL["num_draws"])
        and torch.isfinite(torch.as_tensor(loss)).all()
    )


@pytest.mark.parametrize(("case", "restriction"), [("bert", "l0h1"), ("bart", ["enc l0h1", "cross l1 attn"])])
def test_sample_takes_masks_and_a_custom_loss_fn_on_encoders(
    tmp_path: Path, case: str, restriction: object
) -> None:
    """End to end: an encoder (masked-LM loss) and an encoder-decoder (reconstruction loss) sample with
    restricted masks through `loss_fn`, and the restriction changes the chains."""
    model, ds = copy.deepcopy(tiny_model(case)), token_dataset()
    masks = create_param_masks(model, restriction)  # type: ignore[arg-type]
    runs = {}
    for name, param_masks in (("restricted", masks), ("full", None)):
        out = sample(model, ds, {"train": ds}, param_masks=param_masks, loss_fn=loss_fn_for(model),
                     output_path=tmp_path / f"{name}.zarr", **SMALL)  # fmt: skip
        runs[name] = out.dataset["sampling_loss"].values
    assert runs["restricted"].shape[:2] == (SMALL["num_chains"], SMALL["num_draws"])
    assert torch.isfinite(torch.as_tensor(runs["restricted"])).all()
    assert (runs["restricted"] != runs["full"]).any()


def test_layers_without_heads_and_missing_parts_say_what_is_valid() -> None:
    lfm2 = tiny_model("lfm2")  # l0 is a short-convolution layer
    with pytest.raises(
        WeightRestrictionError,
        match=r"Layer 0 \(a 'conv' layer\) of this 'lfm2' model has no attention heads",
    ):
        create_param_masks(lfm2, "l0h1")
    assert create_param_masks(lfm2, "l0 attn") == {}  # as devinterp: the convolution is not attention
    with pytest.raises(WeightRestrictionError, match=r"'lfm2' has no 'enc' part.*its parts: none"):
        create_param_masks(lfm2, "enc l0h1")
    trocr = tiny_model("trocr")  # a decoder: cross-attention, no encoder
    with pytest.raises(WeightRestrictionError, match=r"has no 'enc' part.*its parts: 'cross'"):
        create_param_masks(trocr, "enc l0")
    bart = tiny_model("bart")
    with pytest.raises(WeightRestrictionError, match=r"'cross l<N>' takes a head, group or attention"):
        create_param_masks(bart, "cross l0")
    assert create_param_masks(bart, " ENC  L1H2 ").keys() == create_param_masks(bart, "enc l1h2").keys()
    assert set(create_param_masks(bart, "enc l1")) == {
        n for n, _ in bart.named_parameters() if n.startswith("model.encoder.layers.1.")
    }
    assert set(create_param_masks(bart, "l1 attn")) == {  # decoder self-attention only, as devinterp
        f"model.decoder.layers.1.self_attn.{m}.{p}" for m in ("q_proj", "k_proj", "v_proj", "out_proj") for p in ("weight", "bias")
    }  # fmt: skip


def test_gemma4_heads_of_layers_without_their_own_k_or_v() -> None:
    """Gemma 4: a layer using K as V has no v_proj, a layer reusing an earlier layer's K/V has neither
    k_proj nor v_proj. Their heads are what they own (q rows, o columns, and K rows where there is a
    k_proj), and still move only that head (or, through the shared K, its group)."""
    model = tiny_model("gemma4_text-kv")
    params = dict(model.named_parameters())
    q, k, o = (params[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qko")
    assert "model.layers.1.self_attn.v_proj.weight" not in params
    assert not any(n.startswith("model.layers.2.self_attn.k_proj") for n in params)
    n_heads, n_kv = head_counts(model, structure_for(model), 1)
    hd = q.shape[0] // n_heads
    for layer, owned in ((1, {"q", "k", "o"}), (2, {"q", "o"})):
        masks = create_param_masks(model, f"l{layer}h0")
        assert {n.rsplit(".", 2)[-2][0] for n in masks} == owned
        assert n_selected(masks, model) == (2 + ("k" in owned)) * hd * q.shape[1]
    ids = torch.randint(4, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    for layer in (1, 2):
        base = head_contributions(model, layer, ids)
        masks = create_param_masks(model, f"l{layer}h0")
        moved = changed_heads(base, head_contributions(perturbed(model, masks, inside=True), layer, ids))
        assert 0 in moved and moved <= {h for h in range(n_heads) if h * n_kv // n_heads == 0}, moved
        assert 0 not in changed_heads(
            base, head_contributions(perturbed(model, masks, inside=False), layer, ids)
        )
    assert k.shape[0] == n_kv * hd and o.shape[1] == n_heads * hd


def test_minimax_lightning_attention_heads() -> None:
    """MiniMax l0 is a lightning-attention layer: a head is its [q, k, v] block of qkv_proj, its rows of
    output_gate and its columns of out_proj (the layer's norm spans all heads, so heads are not separable
    in the output there; the masks are still each head's own slices)."""
    model = tiny_model("minimax")
    params = dict(model.named_parameters())
    heads = [create_param_masks(model, f"l0h{h}") for h in range(4)]
    qkv, gate, out = (
        f"model.layers.0.self_attn.{n}" for n in ("qkv_proj.weight", "output_gate.weight", "out_proj.weight")
    )
    assert all(set(h) == {qkv, gate, out} for h in heads)
    for h, masks in enumerate(heads):
        assert torch.equal(masks[qkv].view(4, 3 * 8, 32).flatten(1).all(1), torch.arange(4) == h)
        assert masks[qkv].view(4, -1).any(1).tolist() == (torch.arange(4) == h).tolist()
        assert n_selected(masks, model) == (3 * 8 + 8) * 32 + 8 * 32
    assert torch.stack([h[out] for h in heads]).int().sum(0).eq(1).all()
    assert create_param_masks(model, "l0g1").keys() == heads[1].keys()  # one key/value head per head here
    assert params[qkv].shape == (3 * 4 * 8, 32)
