"""Weight restrictions (distinterp.masks): per-type mask shapes and counts, what the masks mean for the
attention computation, SGLD leaving unselected elements untouched, errors, preview, the docs table, and
equality with devinterp 2.0.1 where it implements the same restriction.

Every model is a tiny random-init `...ForCausalLM` built from its config class: 2 layers, 4 heads of
size 8 (hidden 32), 2 key/value heads where the architecture has GQA, vocab 96. No downloads.
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
    WeightRestrictionError,
    create_param_masks,
    head_counts,
    preview_weight_restriction,
    structure_for,
)
from distinterp.model_structures import (
    HEAD_ROLES,
    QKV_LAYOUTS,
    STRUCTURES,
    markdown_table,
    supported_model_types,
    variants,
)
from distinterp.sampling import resolve_param_masks
from distinterp.sgld import SGLDHyper, make_slots, sgld_step
from tests.conftest import SMALL, tiny_gpt2, token_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "weight-restrictions.md"

# Tiny sizes, each set on a config only where the config has that attribute. Names inside one tuple are
# aliases of one setting (the first the config knows is used); separate tuples are separate settings.
_GENERIC: list[tuple[object, tuple[str, ...]]] = [
    (2, ("num_hidden_layers", "n_layer", "num_layers", "n_layers")),
    (4, ("num_attention_heads", "n_head", "num_heads", "n_heads")),
    (2, ("num_key_value_heads", "num_kv_heads")),
    (32, ("hidden_size", "n_embd", "d_model")),
    (8, ("head_dim",)),
    (64, ("intermediate_size", "n_inner", "ffn_dim")),
    (16, ("moe_intermediate_size",)),
    (64, ("ffn_hidden_size",)),
    (16, ("shared_expert_intermediate_size", "shared_intermediate_size")),
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
    }
)  # fmt: skip

# Which q/k/v biases a head selects ("" for none; a fused bias counts as all three). OPT-style models
# have all three, but their K bias is a softmax no-op and is left out, as devinterp does.
QKV_BIASES = {"gpt2": "qkv", "gpt-sw3": "qkv", "openai-gpt": "qkv", "gpt_bigcode": "qkv",
              "gpt_bigcode-mha": "qkv", "gpt_neox": "qkv", "persimmon": "qkv", "bloom": "qkv", "qwen2": "qkv",
              "qwen2_moe": "qkv", "starcoder2": "qkv", "phi": "qkv", "gpt_oss": "qkv", "seed_oss": "qkv",
              "glm": "qkv", "glm4": "qkv", "jais2": "qkv", "opt": "qv", "xglm": "qv", "biogpt": "qv",
              "ctrl": "qv"}  # fmt: skip
MLA = {"deepseek_v2", "deepseek_v3", "glm4_moe_lite"}
# Per-head extra parameters of one element per head (gpt_oss attention sinks) or head_dim rows (afmoe's
# output gate): counted on top of q/k/v/o.
EXTRA_PER_HEAD = {"gpt_oss": 1, "afmoe": 8 * 32}
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
            config.ffn_config.hidden_size = config.d_model  # not taken from the ffn_config dict
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def n_selected(masks: dict[str, torch.Tensor | None], model: torch.nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() if m is None else int(m.sum()) for n, m in masks.items())


def o_name(model: torch.nn.Module, layer: int) -> str:
    """The parameter name of a layer's attention output projection weight."""
    structure = structure_for(model)
    return f"{structure.layers}.{layer}.{next(hp.name for hp in structure.heads if hp.role == 'o')}"


# ---------------------------------------------------------------------------------------------------
# Per model type: shapes, counts, partitions, ranges.


def test_every_supported_type_has_a_tiny_model_case() -> None:
    assert {mt for mt, _ in CASES.values()} == set(STRUCTURES) - {"transformer_lens"}
    assert len(STRUCTURES) >= 41  # 40 transformers model types and TransformerLens


@pytest.mark.parametrize("model_type", supported_model_types())
def test_table_entries_are_well_formed(model_type: str) -> None:
    for s in variants(model_type):
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
    assert variants(model_type)[-1].when == (), "the last variant is the fallback that always matches"


@pytest.mark.parametrize("case", sorted(CASES))
def test_patterns_resolve_with_right_shapes_and_counts(case: str) -> None:
    model = tiny_model(case)
    params = dict(model.named_parameters())
    structure = structure_for(model)
    n_heads, n_kv = head_counts(model, structure)
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
    if case in MOE_CASES:
        assert any("expert" in n or "router" in n or ".gate." in n for n in mlp), sorted(mlp)
    assert create_param_masks(model, "embed") == {n: None for n in params if n in structure.embed}
    assert len(create_param_masks(model, "embed")) == 1
    unembed = create_param_masks(model, "unembed")
    assert unembed == {n: None for n in params if n in structure.unembed}
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    assert any(n.endswith("weight") for n in unembed) != tied  # a tied LM head is the embedding: nothing

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
    o_count = torch.stack([h[o_name(model, 1)] for h in heads]).int().sum(0)
    assert torch.equal(o_count, torch.ones_like(o_count))
    if case not in MLA:
        # A head: head_dim rows of each of the q, k and v weights, its o columns, and its biases' slices;
        # a group: its queries' q rows and o columns, the k and v rows of its key/value head.
        hd = params[o_name(model, 1)].numel() // hidden // n_heads
        biases = QKV_BIASES.get(case, "")
        ratio = n_heads // n_kv
        extra = EXTRA_PER_HEAD.get(case, 0)
        assert [n_selected(h, model) for h in heads] == [(4 * hidden + len(biases)) * hd + extra] * n_heads
        group_biases = ratio * ("q" in biases) + ("k" in biases) + ("v" in biases)
        expected_group = (2 * ratio + 2) * hd * hidden + group_biases * hd + ratio * extra
        assert [n_selected(g, model) for g in groups] == [expected_group] * n_kv
    if sinks := [n for n in heads[0] if n.endswith("sinks")]:
        assert [int(heads[h][sinks[0]].nonzero()) for h in range(n_heads)] == list(range(n_heads))

    with pytest.raises(
        WeightRestrictionError, match=r"Layer 2 is out of range: the model has 2 layers \(l0 to l1\)"
    ):
        create_param_masks(model, "l2h0")
    with pytest.raises(
        WeightRestrictionError, match=rf"Head {n_heads} is out of range.*h0 to h{n_heads - 1}"
    ):
        create_param_masks(model, f"l0h{n_heads}")
    with pytest.raises(WeightRestrictionError, match=rf"Group {n_kv} is out of range.*g0 to g{n_kv - 1}"):
        create_param_masks(model, f"l0g{n_kv}")


# ---------------------------------------------------------------------------------------------------
# Semantics: a head's mask is exactly the elements that compute that head's output.


def head_contributions(model: torch.nn.Module, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """Each head's additive contribution to layer `layer`'s attention output: (n_heads, batch, seq, hidden).

    The output projection's input is the heads' outputs side by side; head j's contribution is the
    projection of that input with every other head zeroed, minus the projection of zeros (the shared bias).
    """
    n_heads, _ = head_counts(model, structure_for(model))
    o = model.get_submodule(o_name(model, layer).rsplit(".", 1)[0])
    seen: list[torch.Tensor] = []
    handle = o.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids)
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


SEMANTIC_CASES = sorted(set(CASES) - CROSS_HEAD_NORM)


@pytest.mark.parametrize("case", SEMANTIC_CASES)
def test_head_mask_moves_exactly_that_head(case: str) -> None:
    """Perturbing l1h<M>'s elements moves head M's output (and, through the shared K/V, its GQA group's)
    and no other head's; perturbing the rest of those parameters leaves head M's output as it was."""
    model = tiny_model(case)
    n_heads, n_kv = head_counts(model, structure_for(model))
    group_of = [h * n_kv // n_heads for h in range(n_heads)]
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    base = head_contributions(model, 1, ids)
    for h in sorted({0, n_heads - 1}):
        masks = create_param_masks(model, f"l1h{h}")
        moved = changed_heads(base, head_contributions(perturbed(model, masks, inside=True), 1, ids))
        assert h in moved and moved <= {j for j in range(n_heads) if group_of[j] == group_of[h]}, moved
        untouched = changed_heads(base, head_contributions(perturbed(model, masks, inside=False), 1, ids))
        assert h not in untouched and untouched, untouched
    if n_kv < n_heads:
        g = n_kv - 1
        members = {j for j in range(n_heads) if group_of[j] == g}
        masks = create_param_masks(model, f"l1g{g}")
        assert (
            changed_heads(base, head_contributions(perturbed(model, masks, inside=True), 1, ids)) == members
        )
        assert not members & changed_heads(
            base, head_contributions(perturbed(model, masks, inside=False), 1, ids)
        )


# ---------------------------------------------------------------------------------------------------
# SGLD with masks: unselected elements stay bitwise equal.


@pytest.mark.parametrize(
    ("case", "restriction"),
    [("gpt2", ["l0h1", "l1 mlp", "embed"]), ("qwen2", ["l1g0", "l0h3", "unembed"]), ("falcon-new", "l1h2")],
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
    ids = torch.randint(3, 96, (4, 9), generator=g)
    for _ in range(3):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
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
    n_heads, n_kv = head_counts(model, structure_for(model))
    restrictions = ["full", "l0", "l1", "l0 attn", "l1 mlp", "embed", "unembed", ["l0h1", "l1 attn", "embed"]]
    restrictions += [f"l1h{h}" for h in range(n_heads)] + [f"l0g{g}" for g in range(n_kv)]
    compared = 0
    for restriction in restrictions:
        kinds = {
            restriction_kind(r) for r in ([restriction] if isinstance(restriction, str) else restriction)
        }
        if kinds & DEVINTERP_DIFFERS.get(case, set()):
            continue
        ours, theirs = create_param_masks(model, restriction), wr.create_param_masks(model, restriction)
        assert list(ours) == list(theirs), restriction
        for name in ours:
            a, b = ours[name], theirs[name]
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b.bool())), (restriction, name)
        compared += 1
    assert compared >= 6


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
