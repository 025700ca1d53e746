"""The local replacement model of one prompt (Ameisen et al. 2025, "Circuit Tracing").

One clean forward pass records what stays fixed: attention patterns and norm denominators (a
:class:`~llmri.circuits.freeze.Freezer`), the transcoders' active features at every (layer, position) and
the error of each MLP's reconstruction, ``error = mlp_out − transcoder output``. In the replacement model
each MLP output is rebuilt as

    mlp_out.m = Σ_features c_f · a_f · W_dec,f→m  +  c_err(m, p) · error(m, p)  +  b_dec,m  +  skip(mlp_in.m)

and the block input as ``c_tok(p) · resid_pre.0[p]``; with every coefficient c = 1 it reproduces the
model's forward pass exactly (the errors absorb what the dictionaries miss), and with patterns and
denominators frozen the residual stream, every feature pre-activation and every logit are affine in the
coefficients, so ∂target/∂c_s is source s's direct effect on the target (its edge weight, activation
included).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import data
from ..errors import LlmriError
from .freeze import Freezer
from .transcoders import Transcoders


class PromptError(LlmriError):
    """A prompt that cannot be traced (empty, too long)."""


@dataclass
class Replacement:
    """Everything fixed about one prompt's replacement model (fp32, on the model's device)."""

    model: object
    tcs: Transcoders
    freezer: Freezer
    input_ids: Tensor
    """[P] token ids of the prompt."""
    layer: Tensor
    """[n] layer of each active feature (features are ordered by layer, then position)."""
    pos: Tensor
    """[n] position of each active feature."""
    feature: Tensor
    """[n] index of each active feature within its layer's dictionary."""
    activation: Tensor
    """[n] activation value of each active feature."""
    errors: Tensor
    """[L, P, d] MLP output minus the transcoders' reconstruction."""
    embeds: Tensor
    """[P, d] the block-0 input (token embedding, plus position embedding where the model has one)."""
    logits: Tensor
    """[P, V] the model's logits on the prompt."""
    kept: Tensor
    """[P] positions where features may be active (position 0, special tokens and norm outliers excluded,
    as in dictionary training: there the whole MLP output is an error node)."""

    @property
    def n_layers(self) -> int:
        return self.tcs.n_layers

    @property
    def n_pos(self) -> int:
        return int(self.input_ids.shape[0])

    def layer_slice(self, layer: int) -> slice:
        lo = int(torch.searchsorted(self.layer, layer))
        hi = int(torch.searchsorted(self.layer, layer, right=True))
        return slice(lo, hi)

    def decoders(self, layer: int) -> Tensor:
        """[n_l, n_out, d] raw writes of the active features of ``layer``."""
        return self.tcs.decoder(layer, self.feature[self.layer_slice(layer)])

    # ------------------------------------------------------------ the linear forward pass
    def forward(self, c_feat: Tensor, c_err: Tensor, c_tok: Tensor, reads: list[str]) -> dict[str, Tensor]:
        """Run the replacement model with coefficients ``c_feat`` [B, n], ``c_err`` [B, L, P], ``c_tok`` [B, P]
        (patterns and denominators frozen) and return the requested read points ([B, P, d] each; the pass
        stops after the deepest one). Gradients flow from the reads to the coefficients."""
        model, L = self.model, self.n_layers
        B = c_feat.shape[0]
        stash: dict[int, Tensor] = {}
        decs = {l: self.decoders(l) for l in range(L)}
        slices = {l: self.layer_slice(l) for l in range(L)}

        def keep_in(m):
            def fn(x):
                stash[m] = x
                return x
            return fn

        def write(m):
            def fn(x):
                out = self.tcs.bias(m).expand(B, self.n_pos, -1) + c_err[:, m, :, None] * self.errors[m]
                skip = self.tcs.skip(m, stash[m])
                if skip is not None:
                    out = out + skip
                for l in range(m + 1):
                    if m not in self.tcs.out_layers(l) or slices[l].start == slices[l].stop:
                        continue
                    sl = slices[l]
                    coef = c_feat[:, sl] * self.activation[sl]  # [B, n_l]
                    scatter = coef.new_zeros(B, self.n_pos, coef.shape[1])
                    scatter[:, self.pos[sl], torch.arange(coef.shape[1], device=coef.device)] = coef
                    out = out + scatter @ decs[l][:, m - l]
                return out.to(x.dtype)
            return fn

        edits = {"resid_pre.0": lambda x: (c_tok[:, :, None] * self.embeds).to(x.dtype)}
        for m in range(L):
            edits[f"mlp_in.{m}"] = keep_in(m)
            edits[f"mlp_out.{m}"] = write(m)
        ids = self.input_ids[None].expand(B, -1)
        with ExitStack() as stack:
            stack.enter_context(self.freezer.frozen())
            stack.enter_context(model.intervene(edits))
            return model.capture(ids, reads, grad=True)

    def coefficients(self, batch: int, requires_grad: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """All-ones coefficients (the replacement model at the prompt) for a batch of ``batch`` copies."""
        dev = self.errors.device
        shapes = [(batch, self.activation.shape[0]), (batch, self.n_layers, self.n_pos), (batch, self.n_pos)]
        return tuple(torch.ones(s, device=dev, requires_grad=requires_grad) for s in shapes)  # type: ignore


def build(model, tcs: Transcoders, input_ids: Tensor, exclusion: data.Exclusion | None = None) -> Replacement:
    """Run the prompt once, recording what the replacement model keeps fixed."""
    if input_ids.dim() != 1 or input_ids.numel() < 2:
        raise PromptError("the prompt needs at least one token after the beginning-of-sequence token",
                          "give a non-empty prompt")
    model.check_context(int(input_ids.numel()))
    L = model.n_layers
    exclusion = exclusion or data.Exclusion()
    freezer = Freezer(model)
    points = ["resid_pre.0"] + [f"mlp_in.{l}" for l in range(L)] + [f"mlp_out.{l}" for l in range(L)] + ["logits"]
    with torch.no_grad(), freezer.record():
        acts = model.capture(input_ids[None].to(model.device), points, stop_early=False)
    acts = {k: v[0].float() for k, v in acts.items()}
    mlp_in = [acts[f"mlp_in.{l}"] for l in range(L)]
    kept = data.kept_mask(input_ids[None].cpu(), [m[None].cpu() for m in mlp_in], model.special_ids, exclusion)[0]
    kept = kept.to(model.device)
    kept_pos = kept.nonzero().squeeze(1)
    layers, poss, feats, vals = [], [], [], []
    with torch.no_grad():
        for l in range(L):
            s = tcs.encode(l, mlp_in[l][kept_pos])
            nz = s.vals != 0
            order = torch.argsort(kept_pos[s.rows[nz]] * tcs.n_features + s.idx[nz])
            layers.append(torch.full((int(nz.sum()),), l, dtype=torch.long, device=model.device))
            poss.append(kept_pos[s.rows[nz]][order])
            feats.append(s.idx[nz][order])
            vals.append(s.vals[nz][order].float())
        rep = Replacement(model, tcs, freezer, input_ids.to(model.device), torch.cat(layers), torch.cat(poss),
                          torch.cat(feats), torch.cat(vals), torch.empty(0), acts["resid_pre.0"], acts["logits"], kept)
        recon = torch.stack([tcs.bias(m).expand_as(mlp_in[m]).clone() for m in range(L)])
        for m in range(L):
            skip = tcs.skip(m, mlp_in[m])
            if skip is not None:
                recon[m] += skip
        for l in range(L):
            sl = rep.layer_slice(l)
            if sl.start == sl.stop:
                continue
            writes = rep.activation[sl, None, None] * rep.decoders(l)  # [n_l, n_out, d]
            for j, m in enumerate(tcs.out_layers(l)):
                recon[m].index_add_(0, rep.pos[sl], writes[:, j])
        rep.errors = torch.stack([acts[f"mlp_out.{m}"] for m in range(L)]) - recon
    return rep
