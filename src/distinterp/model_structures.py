"""Where the layers, attention heads, MLPs and embeddings live in each supported model type (data only).

`STRUCTURES` maps a Hugging Face `config.model_type` (or "transformer_lens" for a TransformerLens
HookedTransformer) to a `ModelStructure`, or to a tuple of them when one model type has several
attention layouts chosen by config flags (Falcon, GPT-BigCode). `distinterp.masks` reads this table to
turn weight restrictions such as "l0h1" into parameter masks; adding a model type means adding an entry
here, not code there.

Conventions used by every entry:

* Parameter names are those of `model.named_parameters()` of the `...ForCausalLM` class. Names inside a
  layer are relative to `f"{layers}.{i}."`.
* A head parameter's `axis` is the axis that enumerates (head, head_dim) pairs: 0 for the output rows of
  an `nn.Linear` q/k/v projection, 1 for the input columns of an `nn.Linear` output projection, and the
  reverse for GPT-2-style `Conv1D`, whose weight is stored transposed as (in, out).
* The size of one head along that axis is read from the parameter's shape, so it agrees with the
  config's `head_dim` where a model sets one and with hidden_size // n_heads otherwise.
* Roles: "q" and "o" are indexed by query head (n_heads of them), "k", "v" and "kv" (MLA's joint
  K/V up-projection) by key/value head (n_kv_heads), "qkv" is a fused projection laid out as `layout`:

  - "concat": [Q of all heads | K of all kv heads | V of all kv heads] (GPT-2, MPT, Phi-3, DBRX,
    Falcon multi-query, GPT-BigCode multi-query).
  - "interleaved": per head [q, k, v] blocks, i.e. a (n_heads, 3, head_dim) view (GPT-NeoX(-Japanese),
    Bloom, Persimmon, Falcon-RW-style multi-head, GPT-BigCode multi-head); needs n_kv_heads == n_heads.
  - "grouped": per kv head [its n_heads / n_kv_heads queries, k, v] (Falcon new_decoder_architecture).

  `blocks` > 1 first cuts the fused axis into that many equal tensor-parallel slices, each holding
  n_heads / blocks consecutive heads in `layout` (CodeGen: 4 slices of [q | v | k]).
* Biases are listed where the architecture can have them; absent parameters are skipped. A K bias is
  left out where softmax makes it a no-op (absolute or no position encoding, separate K projection:
  OPT, XGLM, BioGPT, CTRL), as devinterp does, since it has no effect on the head's output.
* "attn" and "mlp" are regexes matched at the start of layer-relative names; parameters of
  normalization modules (the owning module's name contains "norm", any case, or is "ln") are never
  part of attn/mlp, only of "l<N>", as in devinterp.
* `embed` / `unembed` names may be aliases of a tied parameter (`named_parameters()` reports a tied
  tensor under its first name only): they select the parameter whatever name it is reported under, and
  `unembed` selects nothing that is the token embedding.
* `layer_lists`: a layer spread over parallel module lists (XLM: `transformer.attentions.<i>`,
  `transformer.ffns.<i>`, ...): its parameters are `{layers}.{list}.<i>.{rest}`, layer-relative name
  `{list}.{rest}`.
* `parts`: other parts of the model that a restriction addresses with a prefix word, each a structure
  of its own. Encoder-decoder models: "l<N>..." is decoder layer N (devinterp's choice), "enc l<N>..."
  encoder layer N, and "cross l<N>h<M>" / "cross l<N> attn" the cross-attention of decoder layer N
  (a part with `whole_layers=False`: "cross l<N>" and "cross l<N> mlp" are refused).
* `layer_kinds`: structures for the layers whose `config.layer_types[i]` is the key (MiniMax's
  lightning-attention layers); other layers use the entry itself.
* `ConfigKeys.per_layer`: a config attribute holding one config per layer (Gemma 4's
  `per_layer_config`), whose `n_kv_heads` / `head_dim` keys win over the global ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

HEAD_ROLES = ("q", "k", "v", "kv", "o", "qkv")
QKV_LAYOUTS = ("concat", "interleaved", "grouped")
NORM_MODULE = r"(?i)(^|\.)([^.]*norm[^.]*|ln)\.[^.]+$"
"""A parameter name matching this is owned by a normalization module (e.g. q_norm): never in attn/mlp."""


@dataclass(frozen=True)
class HeadParam:
    """A layer parameter whose slices along `axis` belong to individual attention heads."""

    name: str
    role: str
    axis: int = 0
    layout: str | None = None
    blocks: int = 1
    optional: bool = False


@dataclass(frozen=True)
class ConfigKeys:
    """Config attribute names (first present, non-None one wins) for the head counts.

    `n_kv_heads` may be a constant (multi-query variants) or None, meaning "equal to n_heads".
    """

    n_heads: tuple[str, ...] = ("num_attention_heads",)
    n_kv_heads: tuple[str, ...] | int | None = ("num_key_value_heads",)
    hidden: tuple[str, ...] = ("hidden_size",)
    head_dim: tuple[str, ...] = ("head_dim",)
    per_layer: str | None = None


@dataclass(frozen=True)
class ModelStructure:
    """Where one model type keeps its layers, heads, MLP and embeddings."""

    layers: str
    embed: tuple[str, ...]
    unembed: tuple[str, ...]
    attn: str
    mlp: str
    heads: tuple[HeadParam, ...]
    config: ConfigKeys = field(default_factory=ConfigKeys)
    config_attr: str = "config"
    when: tuple[tuple[str, object], ...] = ()
    notes: str = ""
    layer_lists: tuple[str, ...] = ()
    parts: tuple[tuple[str, ModelStructure], ...] = ()
    layer_kinds: tuple[tuple[str, ModelStructure], ...] = ()
    whole_layers: bool = True


# ---------------------------------------------------------------------------------------------------
# Builders for the common shapes of entries (they only fill in data).


def separate_heads(
    prefix: str = "self_attn.",
    q: str = "q_proj",
    k: str = "k_proj",
    v: str = "v_proj",
    o: str = "o_proj",
    k_bias: bool = True,
    extra: tuple[HeadParam, ...] = (),
    o_prefix: str | None = None,
    optional_kv: bool = False,
) -> tuple[HeadParam, ...]:
    """Head parameters of separate nn.Linear q/k/v/o projections (biases optional, o bias never).

    `o_prefix` defaults to `prefix`; `optional_kv` for layers that may lack K/V (shared K/V layers)."""
    heads = [HeadParam(f"{prefix}{q}.weight", "q"), HeadParam(f"{prefix}{q}.bias", "q", optional=True)]
    heads.append(HeadParam(f"{prefix}{k}.weight", "k", optional=optional_kv))
    if k_bias:
        heads.append(HeadParam(f"{prefix}{k}.bias", "k", optional=True))
    heads += [
        HeadParam(f"{prefix}{v}.weight", "v", optional=optional_kv),
        HeadParam(f"{prefix}{v}.bias", "v", optional=True),
    ]
    heads.append(HeadParam(f"{prefix if o_prefix is None else o_prefix}{o}.weight", "o", axis=1))
    return (*heads, *extra)


def fused_heads(
    qkv: str, o: str, layout: str, conv1d: bool = False, blocks: int = 1
) -> tuple[HeadParam, ...]:
    """Head parameters of one fused q/k/v projection plus the output projection."""
    w_axis, o_axis = (1, 0) if conv1d else (0, 1)
    return (
        HeadParam(f"{qkv}.weight", "qkv", axis=w_axis, layout=layout, blocks=blocks),
        HeadParam(f"{qkv}.bias", "qkv", axis=0, layout=layout, blocks=blocks, optional=True),
        HeadParam(f"{o}.weight", "o", axis=o_axis),
    )


def decoder(
    layers: str = "model.layers",
    embed: tuple[str, ...] = ("model.embed_tokens.weight",),
    unembed: tuple[str, ...] = ("lm_head.weight", "lm_head.bias"),
    attn: str = r"self_attn\.",
    mlp: str = r"mlp\.",
    heads: tuple[HeadParam, ...] | None = None,
    **kwargs: Any,
) -> ModelStructure:
    """An entry with Llama-style defaults; every argument overrides one field."""
    return ModelStructure(
        layers=layers,
        embed=embed,
        unembed=unembed,
        attn=attn,
        mlp=mlp,
        heads=separate_heads() if heads is None else heads,
        **kwargs,
    )


def bert_like(
    base: str, head: str = "cls.predictions", k_bias: bool = False, notes: str = ""
) -> ModelStructure:
    """A BERT-style encoder stack under `{base}.encoder.layer` with its masked-LM head `head`.

    The same parameter names serve the encoder (...ForMaskedLM) and its `is_decoder` causal-LM form.
    """
    return decoder(
        layers=f"{base}.encoder.layer",
        embed=(f"{base}.embeddings.word_embeddings.weight",),
        unembed=(f"{head}.decoder.weight", f"{head}.decoder.bias", f"{head}.bias"),
        attn=r"attention\.",
        mlp=r"(intermediate|output)\.",
        heads=separate_heads(
            prefix="attention.self.", q="query", k="key", v="value", o="dense", o_prefix="attention.output.",
            k_bias=k_bias,
        ),
        notes=notes
        or "encoder: attention.self.query/key/value, attention.output.dense; key.bias is a no-op "
        "(absolute positions) and not selected; the MLM head's transform is in no pattern but full",
    )  # fmt: skip


def seq2seq(
    embed: tuple[str, ...] = ("model.decoder.embed_tokens.weight", "model.shared.weight"),
    unembed: tuple[str, ...] = ("lm_head.weight",),
    enc_heads: tuple[HeadParam, ...] | None = None,
    dec_heads: tuple[HeadParam, ...] | None = None,
    encoder: bool = True,
    notes: str = "",
) -> ModelStructure:
    """A BART-style decoder stack under model.decoder.layers, with parts "enc" and "cross".

    "l<N>" is decoder layer N and "l<N> attn" its self-attention, as devinterp; "cross l<N>..." is
    that layer's cross-attention (encoder_attn) and "enc l<N>..." encoder layer N (where there is one).
    K biases are left out: a softmax no-op with absolute positions, and in cross-attention.
    """
    dec = decoder(
        layers="model.decoder.layers",
        embed=embed,
        unembed=unembed,
        attn=r"self_attn\.",
        mlp=r"fc[12]\.",
        heads=dec_heads or separate_heads(o="out_proj", k_bias=False),
        config=ConfigKeys(n_heads=("decoder_attention_heads", "num_attention_heads"), n_kv_heads=None),
    )
    cross = replace(
        dec,
        attn=r"encoder_attn\.",
        mlp=r"(?!)",
        heads=separate_heads(prefix="encoder_attn.", o="out_proj", k_bias=False),
        whole_layers=False,
        notes="cross-attention of decoder layer N",
    )
    enc = replace(
        dec,
        layers="model.encoder.layers",
        heads=enc_heads or dec.heads,
        config=ConfigKeys(n_heads=("encoder_attention_heads", "num_attention_heads"), n_kv_heads=None),
        notes="encoder layer N",
    )
    parts = (("enc", enc), ("cross", cross)) if encoder else (("cross", cross),)
    return replace(
        dec,
        parts=parts,
        notes=notes
        or "encoder-decoder: l<N> is decoder layer N (l<N> attn its self-attention), cross l<N>... its "
        "cross-attention, enc l<N>... encoder layer N; separate q/k/v/out_proj; k_proj.bias not selected",
    )


def t5_like(every_layer_bias: bool = False) -> ModelStructure:
    """A T5-style encoder-decoder (decoder.block / encoder.block, parts "enc" and "cross").

    The per-head relative position bias (an Embedding(num_buckets, n_heads): head M is column M) lives in
    layer 0's self-attention and serves every layer (UMT5: one per layer); it is part of that layer's heads.
    """

    def heads(module: str, bias: bool) -> tuple[HeadParam, ...]:
        rel = (
            (HeadParam(f"{module}relative_attention_bias.weight", "q", axis=1, optional=True),)
            if bias
            else ()
        )
        return separate_heads(prefix=module, q="q", k="k", v="v", o="o", extra=rel)

    self_attn = "layer.0.SelfAttention."
    config = ConfigKeys(n_heads=("num_heads",), n_kv_heads=None, hidden=("d_model",), head_dim=("d_kv",))
    dec = decoder(
        layers="decoder.block",
        embed=("shared.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"),
        unembed=("lm_head.weight",),
        attn=re.escape(self_attn),
        mlp=r"layer\.\d+\.DenseReluDense\.",
        heads=heads(self_attn, True),
        config=config,
    )
    cross = replace(
        dec,
        attn=r"layer\.1\.EncDecAttention\.",
        mlp=r"(?!)",
        heads=heads("layer.1.EncDecAttention.", False),
        whole_layers=False,
        notes="cross-attention of decoder layer N",
    )
    enc = replace(dec, layers="encoder.block", notes="encoder layer N")
    where = "every layer's" if every_layer_bias else "layer 0's (shared by all layers)"
    return replace(
        dec,
        parts=(("enc", enc), ("cross", cross)),
        notes="encoder-decoder: l<N> is decoder block N (l<N> attn its self-attention), cross l<N>... its "
        f"EncDecAttention, enc l<N>... encoder block N; q/k/v/o without biases; {where} per-head relative "
        "position bias columns are in the heads",
    )


LLAMA = decoder(notes="separate q/k/v/o projections")
MOE = decoder(mlp=r"(mlp|block_sparse_moe|shared_mlp)\.", notes="separate q/k/v/o; MoE experts count as mlp")


class Layout(TypedDict):
    """Where a family's blocks and their attention and MLP parameters live (shared by several entries)."""

    layers: str
    attn: str
    mlp: str


GPT2_LIKE = Layout(layers="transformer.h", attn=r"attn\.", mlp=r"mlp\.")
GPT2 = decoder(
    **GPT2_LIKE,
    embed=("transformer.wte.weight",),
    heads=fused_heads("attn.c_attn", "attn.c_proj", "concat", conv1d=True),
    notes="Conv1D c_attn (weight is (in, 3*hidden)); unembed is tied to wte, so it selects nothing",
)
MLA = decoder(
    heads=(
        HeadParam("self_attn.q_proj.weight", "q", optional=True),
        HeadParam("self_attn.q_b_proj.weight", "q", optional=True),
        HeadParam("self_attn.kv_b_proj.weight", "kv"),
        HeadParam("self_attn.o_proj.weight", "o", axis=1),
    ),
    config=ConfigKeys(n_kv_heads=None),
    notes="multi-head latent attention: per-head rows of q_(b_)proj and kv_b_proj, columns of o_proj; "
    "the shared low-rank q_a/kv_a projections are not head-specific",
)

# ---------------------------------------------------------------------------------------------------
# The table.

STRUCTURES: dict[str, ModelStructure | tuple[ModelStructure, ...]] = {
    # Separate q/k/v/o projections under model.layers.<i>.self_attn, MLP under .mlp.
    "llama": LLAMA,
    "mistral": LLAMA,
    "ministral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "gemma3_text": LLAMA,
    "vaultgemma": LLAMA,
    "stablelm": LLAMA,
    "olmo": LLAMA,
    "olmo2": LLAMA,
    "olmo3": LLAMA,
    "cohere": LLAMA,
    "cohere2": LLAMA,
    "granite": LLAMA,
    "internlm3": LLAMA,
    "helium": LLAMA,
    "glm": LLAMA,
    "glm4": LLAMA,
    "exaone4": LLAMA,
    "smollm3": LLAMA,
    "nemotron": LLAMA,
    "seed_oss": LLAMA,
    "hunyuan_v1_dense": LLAMA,
    "ernie4_5": LLAMA,
    "apertus": LLAMA,
    "arcee": LLAMA,
    "bitnet": LLAMA,
    "starcoder2": LLAMA,
    "ministral3": LLAMA,
    "cwm": LLAMA,
    "solar_open": MOE,
    "nanochat": decoder(notes="separate q/k/v/o; parameter-free norms"),
    "jais2": LLAMA,
    "mixtral": MOE,
    "qwen2_moe": MOE,
    "qwen3_moe": MOE,
    "olmoe": MOE,
    "phimoe": MOE,
    "granitemoe": MOE,
    "granitemoeshared": MOE,
    "glm4_moe": MOE,
    "ernie4_5_moe": MOE,
    "hunyuan_v1_moe": MOE,
    "exaone_moe": MOE,
    "flex_olmo": MOE,
    "minimax_m2": MOE,
    "aria_text": MOE,
    "llama4_text": replace(
        MOE, mlp=r"feed_forward\.", notes="separate q/k/v/o; MoE feed_forward counts as mlp"
    ),
    "afmoe": replace(
        MOE,
        heads=separate_heads(extra=(HeadParam("self_attn.gate_proj.weight", "q"),)),
        notes="separate q/k/v/o; per-head output gate rows (gate_proj); MoE experts count as mlp",
    ),
    "gpt_oss": replace(
        MOE,
        heads=separate_heads(extra=(HeadParam("self_attn.sinks", "q"),)),
        notes="separate q/k/v/o; per-head attention sinks; MoE experts count as mlp",
    ),
    "deepseek_v2": MLA,
    "deepseek_v3": MLA,
    "glm4_moe_lite": replace(MLA, notes=MLA.notes + "; MoE experts count as mlp"),
    # Other separate-projection layouts.
    "phi": decoder(heads=separate_heads(o="dense"), notes="separate q/k/v; output projection is 'dense'"),
    "gpt_neo": decoder(
        **GPT2_LIKE,
        embed=("transformer.wte.weight",),
        heads=separate_heads(prefix="attn.attention.", o="out_proj"),
        notes="separate q/k/v/out_proj under attn.attention",
    ),
    "gptj": decoder(
        **GPT2_LIKE,
        embed=("transformer.wte.weight",),
        heads=separate_heads(prefix="attn.", o="out_proj"),
        notes="separate q/k/v/out_proj",
    ),
    "opt": decoder(
        layers="model.decoder.layers",
        embed=("model.decoder.embed_tokens.weight",),
        mlp=r"fc[12]\.",
        heads=separate_heads(o="out_proj", k_bias=False),
        notes="separate q/k/v/out_proj; k_proj.bias is a no-op (learned absolute positions) and not selected",
    ),
    "biogpt": decoder(
        layers="biogpt.layers",
        embed=("biogpt.embed_tokens.weight",),
        unembed=("output_projection.weight",),
        mlp=r"fc[12]\.",
        heads=separate_heads(o="out_proj", k_bias=False),
        notes="separate q/k/v/out_proj; k_proj.bias is a no-op (learned positions); unembed is tied",
    ),
    "ctrl": decoder(
        layers="transformer.h",
        embed=("transformer.w.weight",),
        attn=r"multi_head_attention\.",
        mlp=r"ffn\.",
        heads=separate_heads(prefix="multi_head_attention.", q="Wq", k="Wk", v="Wv", o="dense", k_bias=False),
        notes="separate Wq/Wk/Wv/dense; Wk.bias is a no-op (sinusoidal positions); lm_head.weight is tied",
    ),
    "xglm": decoder(
        mlp=r"fc[12]\.",
        heads=separate_heads(o="out_proj", k_bias=False),
        notes="separate q/k/v/out_proj; k_proj.bias is a no-op (sinusoidal positions) and not selected",
    ),
    # Fused q/k/v projections.
    "gpt2": GPT2,
    "gpt-sw3": GPT2,
    "openai-gpt": decoder(
        **GPT2_LIKE,
        embed=("transformer.tokens_embed.weight",),
        heads=fused_heads("attn.c_attn", "attn.c_proj", "concat", conv1d=True),
        notes="as GPT-2 (Conv1D); unembed is tied",
    ),
    "gpt_bigcode": (
        decoder(
            **GPT2_LIKE,
            embed=("transformer.wte.weight",),
            heads=fused_heads("attn.c_attn", "attn.c_proj", "concat"),
            config=ConfigKeys(n_kv_heads=1),
            when=(("multi_query", True),),
            notes="multi-query: c_attn is [q | one k | one v]",
        ),
        decoder(
            **GPT2_LIKE,
            embed=("transformer.wte.weight",),
            heads=fused_heads("attn.c_attn", "attn.c_proj", "interleaved"),
            config=ConfigKeys(n_kv_heads=None),
            notes="multi_query=False: c_attn is per-head [q, k, v]",
        ),
    ),
    "gpt_neox": decoder(
        layers="gpt_neox.layers",
        embed=("gpt_neox.embed_in.weight",),
        unembed=("lm_head.weight", "embed_out.weight"),
        attn=r"attention\.",
        heads=fused_heads("attention.query_key_value", "attention.dense", "interleaved"),
        config=ConfigKeys(n_kv_heads=None),
        notes="query_key_value is per-head [q, k, v]; the LM head is lm_head (embed_out before transformers 5)",
    ),
    "persimmon": decoder(
        heads=fused_heads("self_attn.query_key_value", "self_attn.dense", "interleaved"),
        config=ConfigKeys(n_kv_heads=None),
        notes="query_key_value is per-head [q, k, v]",
    ),
    "gpt_neox_japanese": decoder(
        layers="gpt_neox_japanese.layers",
        embed=("gpt_neox_japanese.embed_in.weight",),
        unembed=("embed_out.weight",),
        attn=r"attention\.",
        heads=fused_heads("attention.query_key_value", "attention.dense", "interleaved"),
        config=ConfigKeys(n_kv_heads=None),
        notes="query_key_value is per-head [q, k, v]; dense_bias is shared",
    ),
    "bloom": decoder(
        layers="transformer.h",
        embed=("transformer.word_embeddings.weight",),
        attn=r"self_attention\.",
        heads=fused_heads("self_attention.query_key_value", "self_attention.dense", "interleaved"),
        config=ConfigKeys(n_kv_heads=None),
        notes="query_key_value is per-head [q, k, v]; ALiBi",
    ),
    "falcon": tuple(
        decoder(
            layers="transformer.h",
            embed=("transformer.word_embeddings.weight",),
            attn=r"self_attention\.",
            heads=fused_heads("self_attention.query_key_value", "self_attention.dense", layout),
            config=ConfigKeys(n_kv_heads=n_kv),
            when=when,
            notes=notes,
        )
        for layout, n_kv, when, notes in (
            (
                "grouped",
                ("num_kv_heads",),
                (("new_decoder_architecture", True),),
                "new_decoder_architecture: per kv head [queries, k, v]",
            ),
            ("concat", 1, (("multi_query", True),), "multi_query: [q | one k | one v]"),
            ("interleaved", None, (), "multi-head: per-head [q, k, v]"),
        )
    ),
    "codegen": decoder(
        **GPT2_LIKE,
        embed=("transformer.wte.weight",),
        heads=fused_heads("attn.qkv_proj", "attn.out_proj", "concat", blocks=4),
        config=ConfigKeys(n_kv_heads=None),
        notes="qkv_proj is 4 tensor-parallel slices, each [q | v | k] of n_heads/4 heads",
    ),
    "mpt": decoder(
        layers="transformer.blocks",
        embed=("transformer.wte.weight",),
        attn=r"attn\.",
        mlp=r"ffn\.",
        heads=fused_heads("attn.Wqkv", "attn.out_proj", "concat"),
        config=ConfigKeys(n_kv_heads=None),
        notes="Wqkv is [q | k | v]",
    ),
    "phi3": decoder(
        heads=fused_heads("self_attn.qkv_proj", "self_attn.o_proj", "concat"),
        notes="qkv_proj is [q | k | v]",
    ),
    "dbrx": decoder(
        layers="transformer.blocks",
        embed=("transformer.wte.weight",),
        attn=r"norm_attn_norm\.attn\.",
        mlp=r"ffn\.",
        heads=fused_heads("norm_attn_norm.attn.Wqkv", "norm_attn_norm.attn.out_proj", "concat"),
        notes="Wqkv is [q | k | v]; MoE experts count as mlp",
    ),
    # Encoders (BERT family): the ...ForMaskedLM encoder and its is_decoder causal-LM form.
    "bert": bert_like("bert"),
    "big_bird": bert_like("bert"),
    "megatron-bert": bert_like("bert"),
    "ernie": bert_like("ernie"),
    "rembert": bert_like("rembert"),
    "roc_bert": bert_like("roc_bert"),
    "electra": replace(
        bert_like("electra"),
        unembed=("generator_lm_head.weight", "generator_lm_head.bias"),
        notes=bert_like("electra").notes + "; the generator's LM head is generator_lm_head",
    ),
    "roformer": bert_like(
        "roformer",
        k_bias=True,
        notes="encoder: attention.self.query/key/value, attention.output.dense; key.bias is selected "
        "(rotary positions make it matter); the MLM head's transform is in no pattern but full",
    ),
    "bert-generation": bert_like("bert", head="lm_head"),
    **{
        model_type: bert_like(base, head="lm_head")
        for model_type, base in (
            ("roberta", "roberta"),
            ("camembert", "roberta"),
            ("xlm-roberta", "roberta"),
            ("xlm-roberta-xl", "roberta"),
            ("xmod", "roberta"),
            ("roberta-prelayernorm", "roberta_prelayernorm"),
            ("data2vec-text", "data2vec_text"),
        )
    },
    "xlm": decoder(
        layers="transformer",
        layer_lists=("attentions", "layer_norm1", "ffns", "layer_norm2"),
        embed=("transformer.embeddings.weight",),
        unembed=("pred_layer.proj.weight", "pred_layer.proj.bias"),
        attn=r"attentions\.",
        mlp=r"ffns\.",
        heads=separate_heads(
            prefix="attentions.", q="q_lin", k="k_lin", v="v_lin", o="out_lin", k_bias=False
        ),
        notes="a layer is transformer.{attentions,layer_norm1,ffns,layer_norm2}.<N>; k_lin.bias is a "
        "no-op (absolute positions) and not selected",
    ),
    "esm": (
        replace(
            bert_like("esm", head="lm_head", k_bias=True),
            when=(("position_embedding_type", "rotary"),),
            notes="protein encoder as BERT; rotary positions: key.bias is selected; contact_head is in no pattern",
        ),
        replace(
            bert_like("esm", head="lm_head"), notes="protein encoder as BERT; contact_head is in no pattern"
        ),
    ),
    "mpnet": replace(
        bert_like("mpnet", head="lm_head"),
        heads=separate_heads(prefix="attention.attn.", q="q", k="k", v="v", o="o", k_bias=False),
        notes="encoder: attention.attn.q/k/v/o; k.bias is a no-op and not selected; the relative position "
        "bias (mpnet.encoder.relative_attention_bias) is shared by all layers and in no head",
    ),
    "deberta-v2": replace(
        bert_like("deberta", k_bias=True),
        heads=separate_heads(
            prefix="attention.self.",
            q="query_proj",
            k="key_proj",
            v="value_proj",
            o="dense",
            o_prefix="attention.output.",
            extra=(
                HeadParam("attention.self.pos_query_proj.weight", "q", optional=True),
                HeadParam("attention.self.pos_query_proj.bias", "q", optional=True),
                HeadParam("attention.self.pos_key_proj.weight", "k", optional=True),
                HeadParam("attention.self.pos_key_proj.bias", "k", optional=True),
            ),
        ),
        notes="disentangled attention: query/key/value_proj (and pos_query/pos_key_proj when not shared) "
        "rows, attention.output.dense columns; key_proj.bias is selected (position-to-content scores use it)",
    ),
    "distilbert": decoder(
        layers="distilbert.transformer.layer",
        embed=("distilbert.embeddings.word_embeddings.weight",),
        unembed=("vocab_projector.weight", "vocab_projector.bias"),
        attn=r"attention\.",
        mlp=r"ffn\.",
        heads=separate_heads(prefix="attention.", q="q_lin", k="k_lin", v="v_lin", o="out_lin", k_bias=False),
        notes="encoder: attention.q_lin/k_lin/v_lin/out_lin; k_lin.bias is a no-op (absolute positions)",
    ),
    "modernbert": decoder(
        embed=("model.embeddings.tok_embeddings.weight",),
        unembed=("decoder.weight", "decoder.bias"),
        attn=r"attn\.",
        heads=fused_heads("attn.Wqkv", "attn.Wo", "concat"),
        config=ConfigKeys(n_kv_heads=None),
        notes="encoder: Wqkv is [q / k / v], Wo; the MLM head's transform (head.*) is in no pattern but full",
    ),
    "t5": t5_like(),
    "mt5": t5_like(),
    "umt5": t5_like(every_layer_bias=True),
    # Encoder-decoders (and their decoder-only ...ForCausalLM forms, which have no "enc" part).
    "bart": seq2seq(),
    "mbart": seq2seq(),
    "plbart": seq2seq(),
    "mvp": seq2seq(),
    "pegasus": seq2seq(),
    "blenderbot": seq2seq(),
    "blenderbot-small": seq2seq(),
    "marian": seq2seq(),
    "m2m_100": seq2seq(),
    "bigbird_pegasus": seq2seq(
        enc_heads=separate_heads(
            prefix="self_attn.self.",
            q="query",
            k="key",
            v="value",
            o="output",
            o_prefix="self_attn.",
            k_bias=False,
        ),
        notes="encoder-decoder as BART; the encoder's (block-sparse) attention is "
        "self_attn.self.query/key/value and self_attn.output",
    ),
    "whisper": seq2seq(
        embed=("model.decoder.embed_tokens.weight",),
        unembed=("proj_out.weight",),
        notes="encoder-decoder as BART; the audio encoder's conv1/conv2 are in no layer; proj_out is tied",
    ),
    "trocr": seq2seq(
        embed=("model.decoder.embed_tokens.weight",),
        unembed=("output_projection.weight",),
        encoder=False,
        notes="decoder of a vision encoder-decoder: l<N> is decoder layer N, cross l<N>... its "
        "cross-attention (the vision encoder is another model)",
    ),
    # Other decoders.
    "cpmant": decoder(
        layers="cpmant.encoder.layers",
        embed=("cpmant.input_embedding.weight",),
        attn=r"self_att\.",
        mlp=r"ffn\.",
        heads=separate_heads(
            prefix="self_att.self_attention.", q="project_q", k="project_k", v="project_v", o="attention_out"
        ),
        config=ConfigKeys(head_dim=("dim_head",)),
        notes="causal LM despite the name 'encoder'; the per-head relative position bias "
        "(cpmant.position_bias) is shared by all layers and in no head",
    ),
    "lfm2": decoder(
        mlp=r"feed_forward\.",
        heads=separate_heads(o="out_proj"),
        notes="hybrid: attention layers as Llama (out_proj); a short-convolution layer has no heads and "
        "its 'l<N> attn' selects nothing",
    ),
    "minimax": replace(
        MOE,
        layer_kinds=(
            (
                "linear_attention",
                replace(
                    MOE,
                    heads=(
                        *fused_heads("self_attn.qkv_proj", "self_attn.out_proj", "interleaved"),
                        HeadParam("self_attn.output_gate.weight", "q"),
                    ),
                    config=ConfigKeys(n_kv_heads=None),
                    notes="lightning attention: qkv_proj per head [q, k, v], output_gate rows, out_proj "
                    "columns; its norm spans all heads",
                ),
            ),
        ),
        notes="hybrid: full-attention layers as Llama; lightning-attention layers (layer_types) have a "
        "per-head [q, k, v] qkv_proj, output_gate and out_proj; MoE experts count as mlp",
    ),
    "gemma4_text": decoder(
        mlp=r"(mlp|router|experts)\.",
        heads=separate_heads(optional_kv=True),
        config=ConfigKeys(per_layer="per_layer_config"),
        notes="head_dim and key/value heads per layer (per_layer_config); layers that reuse another "
        "layer's K/V have no k/v_proj (a head is its q rows and o columns); MoE router/experts count as mlp",
    ),
    # TransformerLens HookedTransformer (heads are a separate leading axis; GQA keeps _W_K/_W_V).
    "transformer_lens": decoder(
        layers="blocks",
        embed=("embed.W_E",),
        unembed=("unembed.W_U", "unembed.b_U"),
        attn=r"attn\.",
        mlp=r"mlp\.",
        heads=(
            HeadParam("attn.W_Q", "q"),
            HeadParam("attn.b_Q", "q", optional=True),
            HeadParam("attn.W_K", "k", optional=True),
            HeadParam("attn.b_K", "k", optional=True),
            HeadParam("attn._W_K", "k", optional=True),
            HeadParam("attn._b_K", "k", optional=True),
            HeadParam("attn.W_V", "v", optional=True),
            HeadParam("attn.b_V", "v", optional=True),
            HeadParam("attn._W_V", "v", optional=True),
            HeadParam("attn._b_V", "v", optional=True),
            HeadParam("attn.W_O", "o"),
        ),
        config=ConfigKeys(
            n_heads=("n_heads",), n_kv_heads=("n_key_value_heads",), hidden=("d_model",), head_dim=("d_head",)
        ),
        config_attr="cfg",
        notes="HookedTransformer: W_Q/W_K/W_V (n_heads, d_model, d_head), W_O (n_heads, d_head, d_model)",
    ),
}
"""model_type -> structure (or variants, the first whose `when` matches the config is used)."""


def supported_model_types() -> list[str]:
    """The model types weight restrictions understand, sorted."""
    return sorted(STRUCTURES)


def variants(model_type: str) -> tuple[ModelStructure, ...]:
    """The entry (or entries, for types whose layout depends on config flags) of one model type."""
    entry = STRUCTURES[model_type]
    return entry if isinstance(entry, tuple) else (entry,)


def attention_layout(structure: ModelStructure) -> str:
    """A short description of how an entry stores its heads, for the documentation table."""
    fused = [hp for hp in structure.heads if hp.role == "qkv"]
    if fused:
        conv1d = " (Conv1D)" if fused[0].axis == 1 else ""
        blocks = f" in {fused[0].blocks} blocks" if fused[0].blocks > 1 else ""
        kind = f"fused {fused[0].layout}{blocks}{conv1d}"
    elif any(hp.role == "kv" for hp in structure.heads):
        kind = "latent (MLA)"
    else:
        kind = "separate q/k/v"
    n_kv = structure.config.n_kv_heads
    kv = "MHA" if n_kv is None else ("MQA" if n_kv == 1 else "GQA/MHA")
    when = ", ".join(f"{key}={value}" for key, value in structure.when)
    return f"{kind}, {kv}" + (f" (when {when})" if when else "")


def markdown_table() -> str:
    """The table of supported model types that docs/weight-restrictions.md shows (a test keeps it equal).

    One row per entry, then one per part ("enc l<N>...", "cross l<N>...") and per layer kind."""
    rows = [
        "| model type | attention layout | layers | `l<N> attn` | `l<N> mlp` | embed | unembed | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_type in supported_model_types():
        for s in variants(model_type):
            rows.append(_row(f"`{model_type}`", s))
            rows += [_row(f"`{model_type}` `{name} l<N>`", part) for name, part in s.parts]
            rows += [_row(f"`{model_type}` {kind} layers", ks) for kind, ks in s.layer_kinds]
    return "\n".join(rows) + "\n"


def _row(label: str, s: ModelStructure) -> str:
    """One table row for an entry, part or layer kind."""
    layers = f"{s.layers}.{{{','.join(s.layer_lists)}}}" if s.layer_lists else s.layers
    cells = (
        label,
        attention_layout(s),
        f"`{layers}.<N>`",
        _code(s.attn),
        _code(s.mlp) if s.whole_layers else "(none)",
        _names(s.embed),
        _names(s.unembed),
        s.notes.replace("|", "/"),
    )
    return "| " + " | ".join(cells) + " |"


def _code(regex: str) -> str:
    """A layer-relative name regex as inline code (pipes escaped for markdown tables)."""
    return "`" + regex.replace("|", "\\|") + "`"


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


if __name__ == "__main__":  # regenerate the documentation table: python -m distinterp.model_structures
    print(markdown_table(), end="")
