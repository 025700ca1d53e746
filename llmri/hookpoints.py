"""Canonical hook-point names, their aliases, their order in the forward pass, and the module sites behind them.

Canonical names (``l`` = block index, negative counts from the end)::

    embed  resid_pre.l  attn_out.l  resid_mid.l  mlp_in.l  mlp_out.l  resid_post.l  final_norm  logits

Aliases: TransformerLens (``hook_embed``, ``blocks.5.hook_resid_post``, ``blocks.5.ln2.hook_normalized``,
``ln_final.hook_normalized``...) and HF/sparsify module paths (``layers.5`` is ``resid_post.5``,
``layers.5.mlp`` is ``mlp_out.5``, also with the model prefix: ``model.layers.5.mlp``, ``transformer.h.5``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .adapters import Adapter
from .errors import UnknownHookPointError

PER_LAYER = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
GLOBAL_FIRST = ("embed",)
GLOBAL_LAST = ("final_norm", "logits")

TL_NAMES = {  # TransformerLens hook suffix (``blocks.L.<suffix>``) → canonical point kind
    "hook_resid_pre": "resid_pre",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "ln2.hook_normalized": "mlp_in",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
TL_GLOBAL = {"hook_embed": "embed", "ln_final.hook_normalized": "final_norm", "unembed": "logits"}


@dataclass(frozen=True)
class Site:
    """Where a point lives: a module and whether the value is its input (first argument) or output."""

    module: nn.Module
    io: Literal["in", "out"]


def canonical(name: str, adapter: Adapter, n_layers: int) -> str:
    """Map any accepted spelling to the canonical name; raise :class:`UnknownHookPointError` otherwise."""
    raw = name.strip()
    if raw in GLOBAL_FIRST + GLOBAL_LAST:
        return raw
    if raw in TL_GLOBAL:
        return TL_GLOBAL[raw]
    m = re.fullmatch(r"(\w+)\.(-?\d+)", raw)
    if m and m.group(1) in PER_LAYER:
        return f"{m.group(1)}.{_layer(m.group(2), raw, n_layers)}"
    m = re.fullmatch(r"blocks\.(-?\d+)\.(.+)", raw)
    if m and m.group(2) in TL_NAMES:
        return f"{TL_NAMES[m.group(2)]}.{_layer(m.group(1), raw, n_layers)}"
    module_point = _module_alias(raw, adapter, n_layers)
    if module_point:
        return module_point
    raise UnknownHookPointError(
        f"unknown hook point '{name}'",
        f"valid points: embed, {{{','.join(PER_LAYER)}}}.L for L in 0..{n_layers - 1}, final_norm, logits "
        "(TransformerLens names and HF module paths like 'layers.5.mlp' are accepted too)",
    )


def _layer(text: str, name: str, n_layers: int) -> int:
    layer = int(text)
    if layer < 0:
        layer += n_layers
    if not 0 <= layer < n_layers:
        raise UnknownHookPointError(
            f"hook point '{name}' names layer {text}, but the model has layers 0..{n_layers - 1}",
            "use a layer index in that range (negative indices count from the end)",
        )
    return layer


def _module_alias(raw: str, adapter: Adapter, n_layers: int) -> str | None:
    """HF/sparsify module paths: ``[prefix.]layers.5[.mlp|.self_attn|.post_attention_layernorm]``."""
    blocks = adapter.blocks
    prefixes = {blocks, blocks.split(".")[-1]}
    for prefix in prefixes:
        m = re.fullmatch(re.escape(prefix) + r"\.(-?\d+)(?:\.(.+))?", raw)
        if not m:
            continue
        layer, member = _layer(m.group(1), raw, n_layers), m.group(2)
        table = {None: "resid_post", adapter.mlp_out: "mlp_out", adapter.mlp_norm: "mlp_in", adapter.attn_out: "attn_out"}
        if member in table:
            return f"{table[member]}.{layer}"
    last = raw.split(".")[-1]
    if last in ("embed_tokens", "wte", "embed_in"):
        return "embed"
    if raw == adapter.final_norm or last == adapter.final_norm.split(".")[-1]:
        return "final_norm"
    if last in ("lm_head", "embed_out"):
        return "logits"
    return None


def order(point: str, n_layers: int) -> tuple[int, int]:
    """Position of a canonical point in the forward pass (sortable)."""
    if point == "embed":
        return (-1, 0)
    if point in GLOBAL_LAST:
        return (n_layers, GLOBAL_LAST.index(point))
    kind, layer = point.split(".")
    return (int(layer), PER_LAYER.index(kind))


def layer_of(point: str) -> int | None:
    """Block index of a per-layer point, None for global ones."""
    return int(point.split(".")[1]) if "." in point else None


def all_points(adapter: Adapter, n_layers: int) -> list[str]:
    """Every canonical point of a model, in forward order."""
    kinds = [k for k in PER_LAYER if not (adapter.parallel and k == "resid_mid")]
    return ["embed", *(f"{k}.{l}" for l in range(n_layers) for k in kinds), *GLOBAL_LAST]


def expand(spec: str | list[str], n_layers: int) -> list[str]:
    """Expand CLI point lists: ``"resid_post.*"``, ``"mlp_out.0-5"``, ``"resid_post.3,mlp_out.3"``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        m = re.fullmatch(r"(\w+)\.(\*|all|(\d+)-(\d+))", item)
        if m:
            lo, hi = (0, n_layers - 1) if m.group(2) in ("*", "all") else (int(m.group(3)), int(m.group(4)))
            out += [f"{m.group(1)}.{l}" for l in range(lo, hi + 1)]
        else:
            out.append(item)
    return out


def site(point: str, adapter: Adapter, model: nn.Module, n_layers: int) -> Site:
    """The module site a canonical point is read from (``resid_mid`` writes go through ``attn_out``)."""
    if point == "embed":
        return Site(model.get_input_embeddings(), "out")
    if point == "final_norm":
        return Site(model.get_submodule(adapter.final_norm), "out")
    if point == "logits":
        return Site(model.get_output_embeddings(), "out")
    kind, layer = point.split(".")
    block = model.get_submodule(adapter.blocks)[int(layer)]
    if kind == "resid_pre":
        return Site(block, "in")
    if kind == "resid_post":
        return Site(block, "out")
    if kind == "attn_out":
        return Site(block.get_submodule(adapter.attn_out), "out")
    if kind == "mlp_in":
        return Site(block.get_submodule(adapter.mlp_norm), "out")
    if kind == "mlp_out":
        return Site(block.get_submodule(adapter.mlp_out), "out")
    if kind == "resid_mid":
        if adapter.parallel:
            raise UnknownHookPointError(
                f"'{point}' does not exist: {adapter.family} blocks are parallel (attention and MLP both read resid_pre)",
                "use resid_pre, attn_out, mlp_in, mlp_out or resid_post",
            )
        return Site(block.get_submodule(adapter.mlp_norm), "in")
    raise UnknownHookPointError(f"unknown hook point '{point}'", "use a canonical name")
