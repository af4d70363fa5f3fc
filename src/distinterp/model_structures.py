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
  normalization modules (the owning module's name contains "norm") are never part of attn/mlp, only
  of "l<N>", as in devinterp.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

HEAD_ROLES = ("q", "k", "v", "kv", "o", "qkv")
QKV_LAYOUTS = ("concat", "interleaved", "grouped")
NORM_MODULE = r"(^|\.)[^.]*norm[^.]*\.[^.]+$"
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
) -> tuple[HeadParam, ...]:
    """Head parameters of separate nn.Linear q/k/v/o projections (biases optional, o bias never)."""
    heads = [HeadParam(f"{prefix}{q}.weight", "q"), HeadParam(f"{prefix}{q}.bias", "q", optional=True)]
    heads.append(HeadParam(f"{prefix}{k}.weight", "k"))
    if k_bias:
        heads.append(HeadParam(f"{prefix}{k}.bias", "k", optional=True))
    heads += [HeadParam(f"{prefix}{v}.weight", "v"), HeadParam(f"{prefix}{v}.bias", "v", optional=True)]
    heads.append(HeadParam(f"{prefix}{o}.weight", "o", axis=1))
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
    **kwargs: object,
) -> ModelStructure:
    """An entry with Llama-style defaults; every argument overrides one field."""
    return ModelStructure(
        layers=layers,
        embed=embed,
        unembed=unembed,
        attn=attn,
        mlp=mlp,
        heads=separate_heads() if heads is None else heads,
        **kwargs,  # type: ignore[arg-type]
    )


LLAMA = decoder(notes="separate q/k/v/o projections")
MOE = decoder(mlp=r"(mlp|block_sparse_moe|shared_mlp)\.", notes="separate q/k/v/o; MoE experts count as mlp")
GPT2_LIKE = dict(layers="transformer.h", attn=r"attn\.", mlp=r"mlp\.")
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
    """The table of supported model types that docs/weight-restrictions.md shows (a test keeps it equal)."""
    rows = [
        "| model type | attention layout | layers | `l<N> attn` | `l<N> mlp` | embed | unembed | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_type in supported_model_types():
        for s in variants(model_type):
            cells = (
                f"`{model_type}`",
                attention_layout(s),
                f"`{s.layers}.<N>`",
                _code(s.attn),
                _code(s.mlp),
                _names(s.embed),
                _names(s.unembed),
                s.notes.replace("|", "/"),
            )
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _code(regex: str) -> str:
    """A layer-relative name regex as inline code (pipes escaped for markdown tables)."""
    return "`" + regex.replace("|", "\\|") + "`"


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


if __name__ == "__main__":  # regenerate the documentation table: python -m distinterp.model_structures
    print(markdown_table(), end="")
