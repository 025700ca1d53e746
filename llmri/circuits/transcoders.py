"""The dictionaries a replacement model is built from, as one view over the dictionary protocol.

A per-layer transcoder set (one ``mlp_in.l → mlp_out.l`` transcoder per layer) and a cross-layer transcoder
(features of layer l write to every ``mlp_out.m``, m ≥ l) are both seen as: per source layer l, an encoder
that reads ``mlp_in.l`` and decoders into output layers ``out_layers(l)``, all in raw model units
(input/output scales folded in), plus a per-output-layer bias and an optional linear skip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..dictionaries import sparse as sp
from ..dictionaries.config import DictionaryError
from ..dictionaries.protocol import Dictionary
from ..hookpoints import layer_of


class Transcoders:
    """Transcoders covering every layer of a model, in raw units: layer l is block ``b`` of dictionary ``d``
    for ``(d, b) = blocks[l]``."""

    def __init__(self, dicts: list[Dictionary] | Dictionary, n_layers: int):
        dicts = [dicts] if isinstance(dicts, Dictionary) else list(dicts)
        for d in dicts:
            if d.cfg.kind not in ("transcoder", "clt"):
                raise DictionaryError(f"attribution needs transcoders or a CLT, not a {d.cfg.kind}",
                                      "train them with `llmri train --kind transcoder --layers all` (or --kind clt)")
            for b in range(d.n_blocks):
                (point,) = d.block_inputs(b)
                if not point.startswith("mlp_in."):
                    raise DictionaryError(f"a transcoder for attribution must read mlp_in.L, this one reads {point}",
                                          "train transcoders with --kind transcoder (they read mlp_in.L, predict mlp_out.L)")
        self.blocks = sorted(((d, b) for d in dicts for b in range(d.n_blocks)), key=lambda db: db[0].source_layers[db[1]])
        self.dicts = [d for d, b in self.blocks if b == 0]
        self.n_layers = n_layers
        layers = [d.source_layers[b] for d, b in self.blocks]
        if layers != list(range(n_layers)):
            raise DictionaryError(
                f"the transcoders cover layers {layers[:8]}{'…' if len(layers) > 8 else ''}, the model has {n_layers}",
                "attribution needs one transcoder per layer 0..L−1 reading mlp_in.l (train with --layers all)")
        self.n_features = dicts[0].cfg.n_latents
        self._outs = [[layer_of(p) for p in d.block_outputs(b)] for d, b in self.blocks]
        self._bias = {layer_of(p): (d, j) for d in self.dicts for j, p in enumerate(d.cfg.out_points)}

    @property
    def device(self) -> torch.device:
        return self.dicts[0].b_enc.device

    def out_layers(self, layer: int) -> list[int]:
        """Output layers that features of ``layer`` write to."""
        return self._outs[layer]

    def encode(self, layer: int, x: Tensor) -> sp.Sparse:
        """Active features of ``layer`` from raw ``mlp_in.layer`` rows [tokens, d]."""
        d, b = self.blocks[layer]
        return d.encode_layer(x * d.input_scale(b), b)

    def encoder(self, layer: int, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(rows [n, d], biases [n]) with pre-activation = rows · mlp_in + bias in raw units."""
        d, b = self.blocks[layer]
        return d.encoder_rows(b, feats)

    def decoder(self, layer: int, feats: Tensor) -> Tensor:
        """Raw-unit writes [n, n_out, d] of features ``feats`` of ``layer`` into ``out_layers(layer)``."""
        d, b = self.blocks[layer]
        return d.decoder_rows(b, feats)

    def bias(self, layer: int) -> Tensor:
        """Raw output bias of ``mlp_out.layer``."""
        d, j = self._bias[layer]
        return d.decoder_bias(j)

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        """The linear skip's raw contribution to ``mlp_out.layer`` from raw ``mlp_in.layer`` (None: no skip)."""
        d, b = self.blocks[layer]
        return d.skip(x, b)

    def to(self, device) -> Transcoders:
        for d in self.dicts:
            d.to(device)
        return self


def load_transcoders(path: str | Path, n_layers: int, device="cpu") -> Transcoders:
    """A CLT folder, a circuit-tracer export, or a run folder with one transcoder folder per layer."""
    from ..dictionaries.formats import load_set

    return Transcoders(load_set(path, device=device), n_layers)
