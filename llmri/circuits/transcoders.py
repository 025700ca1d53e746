"""The dictionaries a replacement model is built from, behind one interface.

A per-layer transcoder set (one ``mlp_in.l → mlp_out.l`` transcoder per layer) and a cross-layer transcoder
(features of layer l write to every ``mlp_out.m``, m ≥ l) are both seen as: per source layer l, an encoder
that reads ``mlp_in.l`` and decoders into output layers ``l .. l + n_out(l) − 1``, all in raw model units
(input/output scales folded in), plus a per-output-layer bias and an optional linear skip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..dictionaries import CrossLayerTranscoder, SparseCoder
from ..dictionaries import sparse as sp
from ..dictionaries.config import DictionaryError


class Transcoders:
    """Transcoders covering every layer of a model, in raw units."""

    def __init__(self, dicts: list[SparseCoder] | CrossLayerTranscoder, n_layers: int):
        self.clt = dicts if isinstance(dicts, CrossLayerTranscoder) else None
        self.dicts = [] if self.clt is not None else sorted(dicts, key=_in_layer)
        self.n_layers = n_layers
        for d in [self.clt] if self.clt is not None else self.dicts:
            if d.cfg.kind not in ("transcoder", "clt"):
                raise DictionaryError(f"attribution needs transcoders or a CLT, not a {d.cfg.kind}",
                                      "train them with `llmri train --kind transcoder --layers all` (or --kind clt)")
        layers = ([int(p.split(".")[1]) for p in self.clt.cfg.in_points] if self.clt is not None
                  else [_in_layer(d) for d in self.dicts])
        if layers != list(range(n_layers)):
            raise DictionaryError(
                f"the transcoders cover layers {layers[:8]}{'…' if len(layers) > 8 else ''}, the model has {n_layers}",
                "attribution needs one transcoder per layer 0..L−1 reading mlp_in.l (train with --layers all)")
        self.n_features = self.clt.cfg.n_latents if self.clt is not None else self.dicts[0].n_latents

    @property
    def feature_type(self) -> str:
        return "cross layer transcoder"

    @property
    def device(self) -> torch.device:
        return (self.clt or self.dicts[0]).b_enc.device

    def out_layers(self, layer: int) -> range:
        """Output layers that features of ``layer`` write to."""
        return range(layer, self.n_layers) if self.clt is not None else range(layer, layer + 1)

    def encode(self, layer: int, x: Tensor) -> sp.Sparse:
        """Active features of ``layer`` from raw ``mlp_in.layer`` rows [tokens, d]."""
        if self.clt is not None:
            return self.clt.encode_layer(x * self.clt.in_scale[layer], layer)
        d = self.dicts[layer]
        return d.encode(x * d.in_scale[0])

    def encoder(self, layer: int, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(rows [n, d], biases [n]) with pre-activation = rows · mlp_in + bias in raw units."""
        if self.clt is not None:
            return self.clt.W_enc[layer][feats] * self.clt.in_scale[layer], self.clt.b_enc[layer][feats]
        d = self.dicts[layer]
        return d.W_enc[feats] * d.in_scale[0], d.b_enc[feats]

    def decoder(self, layer: int, feats: Tensor) -> Tensor:
        """Raw-unit writes [n, n_out, d] of features ``feats`` of ``layer`` into ``out_layers(layer)``."""
        if self.clt is not None:
            s = self.clt.out_scale[layer:]
            return self.clt.W_dec[layer][feats] / s[None, :, None]
        d = self.dicts[layer]
        return (d.W_dec[feats] / d.out_scale[0])[:, None, :]

    def bias(self, layer: int) -> Tensor:
        """Raw output bias of ``mlp_out.layer``."""
        if self.clt is not None:
            return self.clt.b_dec[layer] / self.clt.out_scale[layer]
        d = self.dicts[layer]
        return d.b_dec / d.out_scale[0]

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        """The linear skip's raw contribution to ``mlp_out.layer`` from raw ``mlp_in.layer`` (None: no skip)."""
        if self.clt is not None or self.dicts[layer].W_skip is None:
            return None
        d = self.dicts[layer]
        return (x * d.in_scale[0]) @ d.W_skip.t() / d.out_scale[0]

    def to(self, device) -> Transcoders:
        for d in [self.clt] if self.clt is not None else self.dicts:
            d.to(device)
        return self


def _in_layer(d: SparseCoder) -> int:
    point = d.cfg.in_points[0]
    if not point.startswith("mlp_in."):
        raise DictionaryError(f"a transcoder for attribution must read mlp_in.L, this one reads {point}",
                              "train transcoders with --kind transcoder (they read mlp_in.L, predict mlp_out.L)")
    return int(point.split(".")[1])


def load_transcoders(path: str | Path, n_layers: int, device="cpu") -> Transcoders:
    """A CLT folder, a circuit-tracer export, or a run folder with one transcoder folder per layer."""
    from ..dictionaries.formats import load_set

    return Transcoders(load_set(path, device=device), n_layers)
