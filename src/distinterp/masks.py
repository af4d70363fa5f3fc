"""Weight restrictions: which parameters (and which of their elements) an SGLD chain samples.

Drop-in for devinterp 2.x's `devinterp.slt.weight_restrictions` (same names, patterns and result), so
`create_param_masks(model, "l0h1")` gives the `param_masks` dict that `distinterp.sample` takes.
Parameters in the dict are sampled (a None mask: the whole parameter; a bool mask: the True elements),
every other parameter is frozen.

Restriction patterns (case-insensitive, spaces optional between the layer and head parts):

    "full"                 every parameter
    "l<N>"                 every parameter of layer N, its layer norms included
    "l<N>h<M>"             attention head M of layer N: its rows of Q, its key/value head's rows of K and
                           V (biases included) and its columns of the output projection (whose bias is
                           shared by all heads: excluded)
    "l<N>g<M>"             GQA group M: the query heads that share key/value head M, and that head
    "l<N> attn"            layer N's attention parameters, whole (no norms)
    "l<N> mlp"             layer N's MLP parameters, whole (MoE experts and routers included; no norms)
    "embed", "unembed"     the token embedding / the LM head (nothing when it is tied to the embedding)
    an exact parameter name, or a list of any of these (their union; masks are ORed)

Encoder-decoder models (BART, Whisper, ...): the patterns above address the decoder, as devinterp
("l<N> attn" is decoder layer N's self-attention); "enc l<N>..." takes any layer pattern to encoder
layer N, and "cross l<N>h<M>" / "cross l<N>g<M>" / "cross l<N> attn" the cross-attention of decoder
layer N.

Query head h reads key/value head h * n_kv_heads // n_heads. Where each model keeps these parameters is
data in `distinterp.model_structures`; this module reads it top-down: parse the restriction, look up
the model's structure, resolve parameter names, build the masks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from distinterp.errors import WeightRestrictionError as WeightRestrictionError  # re-exported: its old home
from distinterp.loss import is_transformer_lens_model
from distinterp.model_structures import (
    NORM_MODULE,
    STRUCTURES,
    HeadParam,
    ModelStructure,
    supported_model_types,
)

ParamMasks = dict[str, torch.Tensor | None]
"""Parameter name -> bool mask of its shape, or None for the whole parameter."""

Tree = dict[str, Any]
"""The printed summary's module tree: name part -> subtree, and "" -> (selected elements or None, total)."""

VALID_PATTERNS = (
    "'full', 'l<N>', 'l<N>h<M>', 'l<N>g<M>', 'l<N> attn', 'l<N> mlp', 'embed', 'unembed', "
    "an exact parameter name, or a list of these (e.g. 'l0h1', ['l1 attn', 'embed']); on "
    "encoder-decoder models also 'enc <layer pattern>' and 'cross l<N>h<M>' / 'cross l<N> attn'"
)
PARTS = ("enc", "cross")
"""Prefix words addressing another part of a model (ModelStructure.parts)."""
_PART = rf"(?:({'|'.join(PARTS)})\s+)?"

_GRAMMAR: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("full", re.compile(r"full")),
    ("embed", re.compile(r"embed")),
    ("unembed", re.compile(r"unembed")),
    ("head", re.compile(_PART + r"l(\d+)\s*h(\d+)")),
    ("group", re.compile(_PART + r"l(\d+)\s*g(\d+)")),
    ("layer", re.compile(_PART + r"l(\d+)(?:\s+(attn|mlp))?")),
)


@dataclass(frozen=True)
class Restriction:
    """One parsed restriction string."""

    kind: str  # full | embed | unembed | head | group | layer | param
    layer: int | None = None
    index: int | None = None  # head or group number
    component: str | None = None  # attn | mlp for kind "layer"
    name: str | None = None  # parameter name for kind "param"
    part: str | None = None  # "enc" | "cross": another part of the model (ModelStructure.parts)


def create_param_masks(model: torch.nn.Module, restriction: str | list[str]) -> ParamMasks:
    """Map the parameters selected by `restriction` to a bool mask of their shape (None: all of it).

    The dict is in model parameter order (for a list: in order of first appearance), which is the order
    the sampler draws noise in, as devinterp.
    """
    if isinstance(restriction, list):
        if not restriction:
            raise WeightRestrictionError(
                f"Empty list of weight restrictions. Valid patterns: {VALID_PATTERNS}."
            )
        if any(isinstance(r, str) and r.strip().lower() == "full" for r in restriction):
            raise WeightRestrictionError(
                "'full' selects every parameter and cannot be combined with other restrictions."
            )
        return merge_param_masks([create_param_masks(model, r) for r in restriction])
    if not isinstance(restriction, str):
        raise TypeError(f"restriction must be a str or list[str], got {type(restriction).__name__}")

    params = dict(model.named_parameters())
    parsed = parse_restriction(restriction, params)
    if parsed.kind == "full":
        return dict.fromkeys(params)
    if parsed.kind == "param":
        return {parsed.name: None}  # type: ignore[dict-item]
    structure = structure_for(model)
    return _resolve(model, structure, params, parsed)


# ---------------------------------------------------------------------------------------------------
# 1. Parse the restriction string.


def parse_restriction(text: str, param_names: Iterable[str] = ()) -> Restriction:
    """Parse one restriction string; an exact parameter name is accepted as itself."""
    normalized = text.strip().lower()
    for kind, pattern in _GRAMMAR:
        m = pattern.fullmatch(normalized)
        if m is None:
            continue
        if kind in ("full", "embed", "unembed"):
            return Restriction(kind)
        if kind == "layer":
            return Restriction(kind, layer=int(m[2]), component=m[3], part=m[1])
        return Restriction(kind, layer=int(m[2]), index=int(m[3]), part=m[1])
    if text.strip() in set(param_names):
        return Restriction("param", name=text.strip())
    raise WeightRestrictionError(
        f"Unrecognised weight restriction {text!r}. Valid patterns: {VALID_PATTERNS}."
    )


# ---------------------------------------------------------------------------------------------------
# 2. Look up the model's structure entry.


def model_type_of(model: torch.nn.Module) -> str:
    """The table key for `model`: its `config.model_type`, or "transformer_lens"."""
    if is_transformer_lens_model(model):
        return "transformer_lens"
    model_type: str | None = getattr(getattr(model, "config", None), "model_type", None)
    if not model_type:
        raise WeightRestrictionError(
            f"Cannot tell the model type of {type(model).__name__}: weight restrictions need a Hugging Face "
            "model (config.model_type) or a TransformerLens HookedTransformer (cfg). Supported model types: "
            f"{', '.join(supported_model_types())}."
        )
    return model_type


def structure_for(model: torch.nn.Module) -> ModelStructure:
    """The structure entry for `model`; for types with variants, the first whose config flags match."""
    model_type = model_type_of(model)
    entry = STRUCTURES.get(model_type)
    if entry is None:
        raise WeightRestrictionError(
            f"Weight restrictions do not support model type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(supported_model_types())}. 'full' and exact parameter "
            "names work for any model."
        )
    if isinstance(entry, ModelStructure):
        return entry
    config = getattr(model, "config", None)
    for variant in entry:
        if all(getattr(config, key, None) == value for key, value in variant.when):
            return variant
    raise WeightRestrictionError(
        f"No structure variant of {model_type!r} matches this model's config"
    )  # table bug


def part_structure(model: torch.nn.Module, structure: ModelStructure, part: str | None) -> ModelStructure:
    """The structure of the part a restriction's prefix word names ("enc", "cross"), or the entry itself."""
    if part is None:
        return structure
    parts = dict(structure.parts)
    if part not in parts:
        have = ", ".join(f"'{name}'" for name in parts) or "none"
        raise WeightRestrictionError(
            f"Model type {model_type_of(model)!r} has no {part!r} part (an encoder-decoder's encoder or "
            f"cross-attention); its parts: {have}."
        )
    return parts[part]


def layer_structure(model: torch.nn.Module, structure: ModelStructure, layer: int) -> ModelStructure:
    """The structure of one layer: a `layer_kinds` entry when config.layer_types[layer] names one."""
    if not structure.layer_kinds:
        return structure
    layer_types = getattr(getattr(model, structure.config_attr), "layer_types", None) or ()
    kind = str(layer_types[layer]) if layer < len(layer_types) else ""
    return dict(structure.layer_kinds).get(kind, structure)


def _layer_config(model: torch.nn.Module, structure: ModelStructure, layer: int | None) -> object | None:
    """The per-layer config (ConfigKeys.per_layer) of `layer`, if the entry has one."""
    key = structure.config.per_layer
    if key is None or layer is None:
        return None
    per_layer = getattr(getattr(model, structure.config_attr), key, None)
    try:
        entry: object = per_layer[layer]  # type: ignore[index]
        return entry
    except (TypeError, KeyError, IndexError):
        return None


def head_counts(
    model: torch.nn.Module, structure: ModelStructure, layer: int | None = None
) -> tuple[int, int]:
    """(n_heads, n_kv_heads) of `layer` (default: the global ones) from the config, per the entry."""
    config = getattr(model, structure.config_attr)
    layer_config = _layer_config(model, structure, layer)
    n_heads = _config_int(config, structure.config.n_heads)
    if n_heads is None:
        raise WeightRestrictionError(
            f"The config of {type(model).__name__} has none of {structure.config.n_heads}"
        )
    keys = structure.config.n_kv_heads
    n_kv = keys if isinstance(keys, int) else None
    if isinstance(keys, tuple):  # the layer's own value wins
        n_kv = _config_int(layer_config, keys) or _config_int(config, keys)
    n_kv = n_kv or n_heads
    if n_heads % n_kv:
        raise WeightRestrictionError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    return n_heads, n_kv


def _config_int(config: object | None, keys: tuple[str, ...]) -> int | None:
    """The first of `keys` that the config (if any) has as an int."""
    for key in keys:
        try:
            value = getattr(config, key, None)
        except RuntimeError:  # transformers refuses global access to a per-layer attribute (Gemma 4)
            value = None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _config_head_dim(
    model: torch.nn.Module, structure: ModelStructure, n_heads: int, layer: int | None = None
) -> int | None:
    """head_dim (of `layer`) from the config, else hidden // n_heads; None when the config has neither."""
    config = getattr(model, structure.config_attr)
    layer_config = _layer_config(model, structure, layer)
    keys = structure.config.head_dim
    head_dim = _config_int(layer_config, keys) or _config_int(config, keys)
    if head_dim is not None:
        return head_dim
    hidden = _config_int(config, structure.config.hidden)
    return None if hidden is None else hidden // n_heads


# ---------------------------------------------------------------------------------------------------
# 3. Resolve parameter names.


def _resolve(
    model: torch.nn.Module, structure: ModelStructure, params: dict[str, torch.nn.Parameter], r: Restriction
) -> ParamMasks:
    """Masks for one parsed restriction on a model with a known structure."""
    if r.kind in ("embed", "unembed"):
        return embedding_masks(model, structure, params, r.kind)

    assert r.layer is not None
    structure = part_structure(model, structure, r.part)
    if r.kind == "layer" and r.component != "attn" and not structure.whole_layers:
        raise WeightRestrictionError(
            f"'{r.part} l<N>' takes a head, group or attention: '{r.part} l{r.layer}h<M>', "
            f"'{r.part} l{r.layer}g<M>' or '{r.part} l{r.layer} attn' (the rest of the layer is 'l{r.layer}')."
        )
    n_layers = count_layers(params, structure)
    if r.layer >= n_layers:
        raise WeightRestrictionError(
            f"Layer {r.layer} is out of range: the model has {n_layers} layers (l0 to l{n_layers - 1})."
        )
    in_layer = layer_params(params, structure, r.layer)
    structure = layer_structure(model, structure, r.layer)

    if r.kind == "layer":
        if r.component is None:
            return dict.fromkeys(in_layer.values())
        pattern = re.compile(structure.attn if r.component == "attn" else structure.mlp)
        return {
            full: None
            for rel, full in in_layer.items()
            if pattern.match(rel) and not re.search(NORM_MODULE, rel)
        }

    assert r.index is not None
    n_heads, n_kv = head_counts(model, structure, r.layer)
    if r.kind == "head" and r.index >= n_heads:
        raise WeightRestrictionError(
            f"Head {r.index} is out of range: the model has {n_heads} attention heads per layer (h0 to h{n_heads - 1})."
        )
    if r.kind == "group" and r.index >= n_kv:
        raise WeightRestrictionError(
            f"Group {r.index} is out of range: the model has {n_kv} key/value heads, so groups g0 to g{n_kv - 1}."
        )
    q_sel, kv_sel = head_selection(n_heads, n_kv, r.kind, r.index)
    head_dim = _config_head_dim(model, structure, n_heads, r.layer)
    by_name = {hp.name: hp for hp in structure.heads}
    if not set(by_name) & set(in_layer):
        layer_types = getattr(getattr(model, structure.config_attr), "layer_types", None) or ()
        kind = f" (a {layer_types[r.layer]!r} layer)" if r.layer < len(layer_types) else ""
        raise WeightRestrictionError(
            f"Layer {r.layer}{kind} of this {model_type_of(model)!r} model has no attention heads; its "
            f"parameters are {sorted(in_layer)}."
        )
    for hp in structure.heads:
        if not hp.optional and hp.name not in in_layer:
            raise WeightRestrictionError(
                f"Model type {model_type_of(model)!r}: expected parameter {hp.name!r} in layer {r.layer}, which "
                f"this model lacks; layer {r.layer} has {sorted(in_layer)}"
            )
    return {
        full: head_mask(params[full], by_name[rel], q_sel, kv_sel, n_heads, n_kv, head_dim)
        for rel, full in in_layer.items()
        if rel in by_name
    }


def embedding_masks(
    model: torch.nn.Module, structure: ModelStructure, params: dict[str, torch.nn.Parameter], kind: str
) -> ParamMasks:
    """ "embed" / "unembed": the listed parameters under whatever name a tied one is reported.

    `unembed` never selects the token embedding itself (a tied LM head), so it is empty when tied.
    """
    canonical = canonical_names(model)
    embed = {canonical[n] for n in structure.embed if n in canonical}
    if kind == "embed":
        wanted = embed
    else:
        wanted = {canonical[n] for n in structure.unembed if n in canonical} - embed
    return {name: None for name in params if name in wanted}


def canonical_names(model: torch.nn.Module) -> dict[str, str]:
    """Every name of every parameter (tied ones have several) -> the name named_parameters() reports."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}


def _layer_pattern(structure: ModelStructure) -> re.Pattern[str]:
    """Matches a parameter of some layer: group 1 is the layer index, group 2 the name inside the layer."""
    base = re.escape(structure.layers)
    if not structure.layer_lists:
        return re.compile(base + r"\.(\d+)\.(.+)")
    lists = "|".join(re.escape(name) for name in structure.layer_lists)
    return re.compile(base + rf"\.({lists})\.(\d+)\.(.+)")


def layer_params(
    params: dict[str, torch.nn.Parameter], structure: ModelStructure, layer: int
) -> dict[str, str]:
    """Layer-relative name -> full name of layer `layer`'s parameters, in model order."""
    pattern = _layer_pattern(structure)
    out = {}
    for name in params:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        if structure.layer_lists:
            if int(m[2]) == layer:
                out[f"{m[1]}.{m[3]}"] = name
        elif int(m[1]) == layer:
            out[m[2]] = name
    return out


def count_layers(params: dict[str, torch.nn.Parameter], structure: ModelStructure) -> int:
    """Number of consecutive layers 0, 1, ... that have parameters under the entry's layer path."""
    pattern = _layer_pattern(structure)
    present = set()
    for name in params:
        m = pattern.fullmatch(name)
        if m:
            present.add(int(m[2] if structure.layer_lists else m[1]))
    n = 0
    while n in present:
        n += 1
    if n == 0:
        some = ", ".join(list(params)[:4])
        raise WeightRestrictionError(
            f"No parameters under '{structure.layers}.<i>.'; the model's parameters start {some}"
        )
    return n


# ---------------------------------------------------------------------------------------------------
# 4. Build the masks.


def head_selection(n_heads: int, n_kv: int, kind: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected query heads, selected key/value heads) as bool vectors, for a head or a GQA group."""
    kv_of_query = torch.arange(n_heads) * n_kv // n_heads
    if kind == "head":
        return torch.arange(n_heads) == index, torch.arange(n_kv) == kv_of_query[index]
    return kv_of_query == index, torch.arange(n_kv) == index


def head_mask(
    param: torch.Tensor,
    hp: HeadParam,
    q_sel: torch.Tensor,
    kv_sel: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int | None,
) -> torch.Tensor:
    """Bool mask of `param`'s shape selecting the slices (along hp.axis) of the selected heads."""
    axis = hp.axis if param.dim() > 1 else 0
    is_query, head = axis_labels(hp, param.shape[axis], n_heads, n_kv, head_dim)
    along_axis = torch.zeros(is_query.shape, dtype=torch.bool)
    along_axis[is_query] = q_sel[head[is_query]]
    along_axis[~is_query] = kv_sel[head[~is_query]]
    shape = [1] * param.dim()
    shape[axis] = -1
    return along_axis.view(shape).expand(param.shape).contiguous()


def axis_labels(
    hp: HeadParam, size: int, n_heads: int, n_kv: int, head_dim: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each index along the head axis: (belongs to a query head?, which query or key/value head)."""
    if hp.role != "qkv":
        n = n_heads if hp.role in ("q", "o") else n_kv
        if size % n:
            raise WeightRestrictionError(
                f"{hp.name}: axis {hp.axis} has size {size}, not a multiple of {n} heads"
            )
        return torch.full((size,), hp.role in ("q", "o")), torch.arange(size) // (size // n)

    b = hp.blocks
    if size % b or n_heads % b or n_kv % b:
        raise WeightRestrictionError(
            f"{hp.name}: cannot cut {size} rows of {n_heads}/{n_kv} heads into {b} blocks"
        )
    nq, nk = n_heads // b, n_kv // b
    is_query, local = _fused_block_labels(hp, size // b, nq, nk, head_dim)
    block = torch.arange(size) // (size // b)
    head = torch.where(is_query.repeat(b), block * nq, block * nk) + local.repeat(b)
    return is_query.repeat(b), head


def _fused_block_labels(
    hp: HeadParam, size: int, nq: int, nk: int, head_dim: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels within one block of a fused q/k/v projection with nq query and nk key/value heads."""
    units = {"concat": nq + 2 * nk, "interleaved": 3 * nq, "grouped": nq + 2 * nk}[hp.layout or ""]
    if hp.layout == "interleaved" and nq != nk:
        raise WeightRestrictionError(
            f"{hp.name}: interleaved q/k/v needs as many key/value heads as heads ({nk} != {nq})"
        )
    if size % units or (head_dim is not None and size // units != head_dim):
        raise WeightRestrictionError(
            f"{hp.name}: {size} rows do not split into {units} {hp.layout} slices of head_dim={head_dim}; "
            "the structure table does not match this model's config"
        )
    unit = torch.arange(size) // (size // units)
    if hp.layout == "concat":  # [q_0..q_nq-1 | k_0..k_nk-1 | v_0..v_nk-1]
        is_query = unit < nq
        return is_query, torch.where(is_query, unit, (unit - nq) % nk)
    if hp.layout == "interleaved":  # [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]
        return unit % 3 == 0, unit // 3
    per_group = nq // nk + 2  # grouped: [q.. k v] per kv head
    group, slot = unit // per_group, unit % per_group
    is_query = slot < per_group - 2
    return is_query, torch.where(is_query, group * (per_group - 2) + slot, group)


def merge_param_masks(masks_list: list[ParamMasks]) -> ParamMasks:
    """Union of several mask dicts: names in order of first appearance, masks ORed, None wins."""
    merged: ParamMasks = {}
    for masks in masks_list:
        for name, mask in masks.items():
            if name not in merged:
                merged[name] = None if mask is None else mask.clone()
            elif merged[name] is not None:
                merged[name] = None if mask is None else merged[name] | mask  # type: ignore[operator]
    return merged


# ---------------------------------------------------------------------------------------------------
# Inspection.


def preview_weight_restriction(model: torch.nn.Module, masks: ParamMasks, *, plain: bool = False) -> None:
    """Print a tree of the selected parameters with selected/total element counts (plain: names only).

    Shows what a restriction resolved to, e.g. whether "unembed" picked anything on a tied model.
    """
    if plain:
        for name in sorted(masks):
            print(name)
        return
    params = dict(model.named_parameters())
    selected = {
        name: params[name].numel() if mask is None else int(mask.sum()) for name, mask in masks.items()
    }
    n_selected, n_total = sum(selected.values()), sum(p.numel() for p in params.values())
    print(
        f"{len(masks)} of {len(params)} parameters sampled: {n_selected:,} of {n_total:,} elements "
        f"({_percent(n_selected, n_total)})"
    )
    tree: Tree = {}
    for name, param in params.items():  # every parameter, so module totals count the unselected too
        node = tree
        for part in name.split("."):
            node = node.setdefault(part, {})
        node[""] = (selected.get(name), param.numel())
    _print_tree(tree, indent="")


def _print_tree(node: Tree, indent: str) -> None:
    """Print the selected branches of one tree level, joining single-child module chains into one line."""
    children = []
    for label, child in node.items():
        if label == "" or _subtree_counts(child)[0] is None:
            continue
        while "" not in child and len(child) == 1:  # collapse a.b.c chains
            sub, child = next(iter(child.items()))
            label = f"{label}.{sub}"
        children.append((label, child))
    for i, (label, child) in enumerate(children):
        last = i == len(children) - 1
        sel, tot = _subtree_counts(child)
        print(f"{indent}{'└─ ' if last else '├─ '}{label}  {sel:,} / {tot:,} ({_percent(sel or 0, tot)})")
        _print_tree(child, indent + ("   " if last else "│  "))


def _subtree_counts(node: Tree) -> tuple[int | None, int]:
    """(selected elements or None when nothing below is selected, total elements) under a tree node."""
    if "" in node:
        leaf: tuple[int | None, int] = node[""]
        return leaf
    sums = [_subtree_counts(v) for v in node.values()]
    chosen = [s for s, _ in sums if s is not None]
    return (sum(chosen) if chosen else None), sum(t for _, t in sums)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0.0%"
