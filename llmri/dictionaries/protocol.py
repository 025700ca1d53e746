"""What every dictionary offers, so that no caller needs to know its class.

An SAE, transcoder or crosscoder (:class:`~.coder.SparseCoder`) and a cross-layer transcoder
(:class:`~.clt.CrossLayerTranscoder`) are both ``n_blocks`` blocks of ``cfg.n_latents`` features: one block
for a SparseCoder, one per layer for a CLT. Block ``b`` reads ``block_inputs(b)`` and writes
``block_outputs(b)``. Features are numbered block-major: feature ``i`` is latent ``i % cfg.n_latents`` of
block ``i // cfg.n_latents``. "Scaled" means in the training scale; "raw" in model activation units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..hookpoints import layer_of


class Dictionary(nn.Module):
    """Base class of every dictionary; see the module docstring. Primitives (per subclass):

    * ``n_blocks``; ``block_inputs(b)`` / ``block_outputs(b)``: the points block ``b`` reads / writes;
    * ``input_scale(b)``: the factor raw inputs of block ``b`` are multiplied by (scalar or [d_in]);
    * ``encode_layer(x, b)`` → Sparse: block ``b``'s features from its scaled input ``x`` [tokens, d_in];
    * ``decode_all(acts, x=None)``: scaled reconstruction from what ``encode`` returns or from the list of
      per-block activations (``x`` feeds a skip);
    * ``decoder_rows(b, feats)`` → [len(feats), len(block_outputs(b)), d_out] raw decoder rows;
    * ``skip(x, b)``: raw skip contribution of raw input ``x`` (None: no skip);
    * ``splice(clean)`` → (reads, writes): [(point, fn)] hooks that see inputs, and [(point, fn)] that return
      an output point's replacement (``clean``: the clean run's inputs, for acausal crosscoders);
    * and, as before, ``encode``, ``inputs``/``targets``, ``split_outputs``, ``reconstruct``, ``fold_scales``,
      ``training_loss``.
    """

    @property
    def n_latents(self) -> int:
        """Features in all (a CLT: latents per layer × layers)."""
        return self.cfg.n_latents * self.n_blocks

    @property
    def source_layers(self) -> list[int]:
        """Per block, the layer of the (first) point it reads."""
        return [layer_of(self.block_inputs(b)[0]) for b in range(self.n_blocks)]

    def encoder_rows(self, b: int, feats) -> tuple[Tensor, Tensor]:
        """(rows [n, d_in], biases [n]) with pre-activation = rows · raw input + bias (before any centring)."""
        n = self.cfg.n_latents
        return (self.W_enc.reshape(self.n_blocks, n, -1)[b][feats] * self.input_scale(b),
                self.b_enc.reshape(self.n_blocks, n)[b][feats])

    def decoder_bias(self, j: int) -> Tensor:
        """Raw output bias of output point ``cfg.out_points[j]``."""
        return self.b_dec.reshape(len(self.cfg.out_points), -1)[j] / self.out_scale[j]

    def raw_decoders(self) -> list[tuple[list[str], Tensor]]:
        """The decoder in raw units as (output points, [n, len(points), d_out]) per block."""
        return [(self.block_outputs(b), self.decoder_rows(b)) for b in range(self.n_blocks)]

    def feature_decoder(self, i: int) -> dict[str, Tensor]:
        """{output point: raw decoder vector} of feature ``i`` (what adding the feature writes)."""
        b, n = divmod(i, self.cfg.n_latents)
        row = self.decoder_rows(b, [n])[0]
        return {p: row[j] for j, p in enumerate(self.block_outputs(b))}

    def decoder_directions(self) -> Tensor:
        """[n_latents, d_out] the direction each feature writes, in raw units: its decoder into the last output
        point (a crosscoder's deepest; CLTs override: the sum over the layers it writes)."""
        return torch.cat([w[:, -1] for _, w in self.raw_decoders()])

    def feature_point(self, i: int) -> str:
        """The point ``decoder_directions()[i]`` is written to."""
        return self.cfg.out_points[-1]

    def feature_layer(self, i: int) -> int | None:
        return layer_of(self.feature_point(i))

    def feature_name(self, i: int) -> str:
        """``L{layer}/{index}`` for the features of a dictionary of several blocks (a CLT), else the index."""
        b, n = divmod(i, self.cfg.n_latents)
        return f"L{self.source_layers[b]}/{n}" if self.n_blocks > 1 else str(i)

    def describe(self) -> dict:
        """Name, kind and geometry as the dashboards show them."""
        c = self.cfg
        info = {"dictionary": c.name, "kind": c.kind, "arch": c.arch, "in_points": list(c.in_points),
                "out_points": list(c.out_points), "n_features": self.n_latents}
        if self.n_blocks > 1:
            info["features_per_layer"] = c.n_latents
            info["layers"] = self.source_layers
        return info
