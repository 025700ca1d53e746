"""Cross-layer transcoder (Anthropic 2025, "Circuit Tracing"): features of layer l read ``mlp_in.l`` and
write to the MLP outputs of layers l, l+1, …, L−1.

    f_l        = act(x_l·W_enc,lᵀ + b_enc,l)
    mlp_out_m ≈ Σ_{l ≤ m} f_l·W_dec,l[:, m − l] + b_dec,m

Decoders are stored per source layer as [n, L − l, d] (circuit-tracer's layout); their size grows as
L²/2 · n · d, so plan memory (30 layers × 15.5 × n × 576 floats). Training losses are summed over output
layers; the tanh/L1 penalties use ‖W_dec,i‖ = the norm of feature i's decoders concatenated over outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sparse as sp
from .coder import SPARSE_ARCHS, Encoded, TrainOut, encode_train, sparsity_penalty
from .config import DictConfig
from .protocol import Dictionary


class CrossLayerTranscoder(Dictionary):
    """A CLT over the layers of ``cfg.in_points`` (``mlp_in.l``) → ``cfg.out_points`` (``mlp_out.l``); one
    block of features per layer (see :mod:`.protocol`)."""

    def __init__(self, cfg: DictConfig, *, device: torch.device | str | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        L, n, d_in, d_out = len(cfg.in_points), cfg.n_latents, cfg.d_in, cfg.d_out
        if len(cfg.out_points) != L:
            raise ValueError("a CLT needs one output point per input layer")
        g = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter((0.1 * F.normalize(torch.randn(L, n, d_in, generator=g), dim=-1)).to(device))
        self.b_enc = nn.Parameter(torch.zeros(L, n, device=device))
        decs = []
        for l in range(L):
            w = torch.randn(n, (L - l) * d_out, generator=g)
            w = w / w.norm(dim=1, keepdim=True) * (1.0 if cfg.arch in SPARSE_ARCHS else 0.1)
            decs.append(nn.Parameter(w.view(n, L - l, d_out).to(device)))
        self.W_dec = nn.ParameterList(decs)
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, device=device))
        self.log_threshold = (nn.Parameter(torch.full((L, n), math.log(cfg.jumprelu_init_threshold), device=device))
                              if cfg.arch == "jumprelu" else None)
        self.register_buffer("threshold", torch.zeros(L, device=device))
        self.register_buffer("threshold_updates", torch.zeros(L, dtype=torch.long, device=device))
        self.register_buffer("in_scale", torch.ones(L, device=device))
        self.register_buffer("out_scale", torch.ones(L, device=device))
        self.register_buffer("target_var", torch.ones((), device=device))

    @property
    def n_layers(self) -> int:
        return len(self.cfg.in_points)

    n_blocks = n_layers

    def block_inputs(self, b: int) -> list[str]:
        return [self.cfg.in_points[b]]

    def block_outputs(self, b: int) -> list[str]:
        return list(self.cfg.out_points[b:])

    def input_scale(self, b: int) -> Tensor:
        return self.in_scale[b]

    def decoder_rows(self, b: int, feats=slice(None)) -> Tensor:
        return self.W_dec[b][feats] / self.out_scale[b:, None]

    def skip(self, x: Tensor, b: int) -> None:
        return None

    def decoder_directions(self) -> Tensor:
        """Each feature's decoders summed over the layers it writes (what it adds to the residual stream)."""
        return torch.cat([w.sum(1) for _, w in self.raw_decoders()])

    def feature_point(self, i: int) -> str:
        return self.cfg.out_points[i // self.cfg.n_latents]

    # ------------------------------------------------------------ data plumbing
    def inputs(self, acts: dict[str, Tensor]) -> Tensor:
        """[tokens, L, d_in] scaled inputs."""
        return torch.stack([acts[p] * self.in_scale[i] for i, p in enumerate(self.cfg.in_points)], dim=1)

    def targets(self, acts: dict[str, Tensor]) -> Tensor:
        return torch.stack([acts[p] * self.out_scale[i] for i, p in enumerate(self.cfg.out_points)], dim=1)

    def split_outputs(self, y: Tensor) -> dict[str, Tensor]:
        return {p: y[:, i] / self.out_scale[i] for i, p in enumerate(self.cfg.out_points)}

    def decoder_norms(self, layer: int) -> Tensor:
        """Norm of each layer-``layer`` feature's decoders concatenated over its output layers."""
        return self.W_dec[layer].flatten(1).norm(dim=1)

    # ------------------------------------------------------------ inference
    def thresholds(self, layer: int) -> Tensor | None:
        if self.cfg.arch == "jumprelu":
            return self.log_threshold[layer].exp()
        if self.cfg.arch == "batchtopk":
            return self.threshold[layer].expand(self.cfg.n_latents)
        if self.cfg.arch == "relu":
            return torch.zeros(self.cfg.n_latents, device=self.b_enc.device)
        return None

    def encode_layer(self, x: Tensor, layer: int) -> sp.Sparse:
        """Sparse features of layer ``layer`` from its scaled MLP input [tokens, d_in]."""
        th = self.thresholds(layer)
        sel = sp.topk_selector(self.cfg.k) if th is None else sp.threshold_selector(th)
        (acts,) = sp.encode_select(x, self.W_enc[layer], self.b_enc[layer], [sel])
        return acts

    def encode(self, x: Tensor) -> list[sp.Sparse]:
        """Features of every layer from scaled inputs [tokens, L, d_in]."""
        return [self.encode_layer(x[:, l], l) for l in range(self.n_layers)]

    def decode_layer(self, acts: list[sp.Sparse | Tensor], layer: int) -> Tensor:
        """Scaled reconstruction of output layer ``layer`` from the features of layers 0..layer."""
        out = self.b_dec[layer].expand(_rows(acts[0]), -1)
        for l in range(layer + 1):
            w = self.W_dec[l][:, layer - l]
            out = out + (sp.decode(acts[l], w) if isinstance(acts[l], sp.Sparse) else acts[l] @ w)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Scaled inputs [tokens, L, d] → scaled reconstructions [tokens, L, d]."""
        acts = self.encode(x)
        return self.decode_all(acts)

    def decode_all(self, acts: list[sp.Sparse | Tensor], x: Tensor | None = None) -> Tensor:
        """Scaled reconstructions [tokens, L, d] from the features of every layer."""
        L, d = self.n_layers, self.cfg.d_out
        rows = _rows(acts[0])
        parts: list[list[Tensor]] = [[self.b_dec[m].expand(rows, d)] for m in range(L)]
        for l, a in enumerate(acts):
            w = self.W_dec[l].flatten(1)
            contrib = (sp.decode(a, w) if isinstance(a, sp.Sparse) else a @ w).view(rows, L - l, d)
            for j in range(L - l):
                parts[l + j].append(contrib[:, j])
        return torch.stack([torch.stack(p).sum(0) for p in parts], dim=1)

    def reconstruct(self, acts: dict[str, Tensor]) -> dict[str, Tensor]:
        shape = next(iter(acts.values())).shape[:-1]
        x = self.inputs({p: a.reshape(-1, a.shape[-1]) for p, a in acts.items()})
        return {p: v.reshape(*shape, -1) for p, v in self.split_outputs(self.forward(x)).items()}

    def splice(self, clean: dict[str, Tensor] | None = None):
        """Each layer's features are encoded from the spliced model's MLP input; each MLP output is replaced by
        the sum of the decoders of the features of that layer and the layers before."""
        feats: list[sp.Sparse] = []

        def read(l: int):
            def fn(x: Tensor) -> None:
                if l == 0:
                    feats.clear()
                flat = x.reshape(-1, x.shape[-1]) * self.in_scale[l]
                feats.append(self.encode_layer(flat.to(self.W_enc.dtype), l))

            return fn

        def write(l: int):
            return lambda x: (self.decode_layer(feats[: l + 1], l) / self.out_scale[l]).reshape(x.shape)

        return ([(p, read(l)) for l, p in enumerate(self.cfg.in_points)],
                [(p, write(l)) for l, p in enumerate(self.cfg.out_points)])

    # ------------------------------------------------------------ training
    def training_loss(self, x: Tensor, y: Tensor, *, dead: Tensor | None = None, aux_k: int = 0,
                      aux_coeff: float = 1 / 32, aux_fraction: float = 1.0,
                      compute_dtype: torch.dtype = torch.float32) -> TrainOut:
        """``x``, ``y``: [tokens, L, d]. ``dead`` indexes the flattened (layer, latent) space."""
        cfg, L, n = self.cfg, self.n_layers, self.cfg.n_latents
        aux_rows = max(1, int(round(aux_fraction * x.shape[0])))
        encs: list[Encoded] = []
        for l in range(L):
            dead_l = None if dead is None else dead[(dead >= l * n) & (dead < (l + 1) * n)] - l * n
            encs.append(encode_train(x[:, l], self.W_enc[l], self.b_enc[l], cfg, center=None,
                                     log_threshold=None if self.log_threshold is None else self.log_threshold[l],
                                     dead=dead_l, aux_k=aux_k, aux_rows=aux_rows, compute_dtype=compute_dtype,
                                     threshold=self.threshold[l], updates=self.threshold_updates[l],
                                     update_threshold=self.training))
        recon = self.decode_all([e.acts for e in encs])
        err = recon - y
        sq = err.pow(2).sum()
        denom = y.shape[0] * self.target_var
        aux = torch.zeros((), device=x.device)
        aux_parts = [e.aux if e.aux is not None else None for e in encs]
        if any(a is not None for a in aux_parts):
            empty = [a if a is not None else _empty(x.shape[0], n, x.device) for a in aux_parts]
            aux_recon = self.decode_all(empty)[:aux_rows] - self.b_dec  # no bias in the aux reconstruction
            scale = min(dead.numel() / aux_k, 1.0) * x.shape[0] / aux_rows
            aux = aux_coeff * scale * (aux_recon + err[:aux_rows].detach()).pow(2).sum() / denom
        penalty = sum(sparsity_penalty(e, cfg, lambda l=l: self.decoder_norms(l), x.shape[0]) for l, e in enumerate(encs))
        fired = torch.cat([e.fired for e in encs])  # layer-major, like the latents
        l0 = torch.stack([e.l0 for e in encs]).sum()
        mse = sq / denom
        return TrainOut(mse + aux + penalty, mse, penalty, aux, fired, l0, sq.detach())

    @property
    def unit_decoder(self) -> bool:
        return self.cfg.arch in SPARSE_ARCHS

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if not self.unit_decoder:
            return
        for w in self.W_dec:
            if w.grad is not None:
                wf, gf = w.flatten(1), w.grad.flatten(1)
                gf -= (gf * wf).sum(1, keepdim=True) * wf

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """TopK CLTs keep each feature's decoders, concatenated over output layers, at unit norm."""
        if self.unit_decoder:
            for w in self.W_dec:
                wf = w.flatten(1)
                wf /= wf.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fold_scales(self) -> None:
        self.W_enc.mul_(self.in_scale[:, None, None])
        for l, w in enumerate(self.W_dec):
            w.div_(self.out_scale[l:, None])
        self.b_dec.div_(self.out_scale[:, None])
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)


def _rows(a: sp.Sparse | Tensor) -> int:
    return a.n_rows if isinstance(a, sp.Sparse) else a.shape[0]


def _empty(rows: int, n: int, device) -> sp.Sparse:
    z = torch.zeros(0, dtype=torch.long, device=device)
    return sp.Sparse(torch.zeros(0, device=device), z, z, torch.zeros(rows, dtype=torch.long, device=device), rows, n)
