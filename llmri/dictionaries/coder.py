"""One module for SAEs, transcoders and crosscoders: encoder → activation → decoder.

* SAE: reads and reconstructs one point.
* Transcoder: reads ``mlp_in.l``, predicts ``mlp_out.l`` (optionally plus a linear skip x·W_skipᵀ).
* Crosscoder: reads several points (concatenated) and reconstructs all of them from one latent vector;
  its decoder is a block per output point.

Weights are stored latent-major — ``W_enc`` [n, d_in], ``W_dec`` [n, d_out] — so a latent's encoder and
decoder are contiguous rows (sparse gradients touch whole rows). Activations are scaled per point so that
E‖x‖ = √d during training (``in_scale``/``out_scale``); :meth:`fold_scales` moves the scales into the
weights so that the saved dictionary works on raw activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sparse as sp
from .config import DictConfig
from .protocol import Dictionary


SPARSE_ARCHS = ("topk", "batchtopk")


class TrainOut(NamedTuple):
    """One training forward: the loss to minimise and what it is made of (all tensors, scalar)."""

    loss: Tensor
    mse: Tensor
    """Σ‖x̂ − y‖² / (tokens · target variance): an FVU with a fixed denominator."""
    sparsity: Tensor
    aux: Tensor
    fired: Tensor
    """Indices of latents active on this batch (with repetition)."""
    l0: Tensor
    sq_err: Tensor
    """Σ‖x̂ − y‖² over the batch (for exact NMSE bookkeeping)."""


# ---------------------------------------------------------------- JumpReLU straight-through estimators


def _kernel(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z − θ); ∂/∂θ by the rectangle-kernel pseudo-derivative −(θ/ε)K((z − θ)/ε) (Rajamanoharan 2024)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        gz = g * (z > theta)
        gtheta = (-(theta / ctx.eps) * _kernel((z - theta) / ctx.eps) * g).sum(0)
        return gz, gtheta, None


class _Step(torch.autograd.Function):
    """H(z − θ) for the L0 penalty, with the rectangle-kernel pseudo-derivative (1/ε)K((z − θ)/ε) passed to
    the pre-activation and its negative to θ. Rajamanoharan et al. pass it to θ only; passing it to z too
    lets the penalty shrink encoders of latents near their threshold, which is what makes λ bite in
    short runs (with Adam, a θ-only gradient moves θ at a fixed rate whatever λ is)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        k = _kernel((z - theta) / ctx.eps) * g / ctx.eps
        return k, -k.sum(0), None


# ---------------------------------------------------------------- shared by every dictionary kind


def _scaled(acts: dict[str, Tensor], points: list[str], scales: Tensor) -> Tensor:
    """The points' activations times their scales, side by side (no copy for a single point)."""
    parts = [acts[p] * scales[i] for i, p in enumerate(points)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class Encoded(NamedTuple):
    """Training-time latents of one encoder: sparse (TopK family) or dense (ReLU/JumpReLU)."""

    acts: sp.Sparse | Tensor
    aux: sp.Sparse | None
    """The aux-k selection among dead latents (TopK family), if any latent is dead."""
    pre: Tensor | None
    """Dense pre-activations (JumpReLU's L0 penalty needs them)."""
    theta: Tensor | None
    fired: Tensor
    """[n_latents] bool: latents with a positive activation in this batch (a mask, so no device sync)."""
    l0: Tensor


def encode_train(x: Tensor, W_enc: Tensor, b_enc: Tensor, cfg: DictConfig, *, center: Tensor | None,
                 log_threshold: Tensor | None, dead: Tensor | None, aux_k: int, aux_rows: int,
                 compute_dtype: torch.dtype, threshold: Tensor | None = None, updates: Tensor | None = None,
                 update_threshold: bool = False) -> Encoded:
    """Encode ``x − center`` for training with ``cfg.arch``; TopK-family selections are sparse end to end.
    The aux-k selection covers the first ``aux_rows`` tokens of the (shuffled) batch."""
    if cfg.arch in SPARSE_ARCHS:
        main = sp.topk_selector(cfg.k) if cfg.arch == "topk" else sp.batch_topk_selector(cfg.k)
        use_aux = dead is not None and dead.numel() > 0 and aux_k > 0
        selectors = [main, sp.aux_selector(aux_k, dead, aux_rows)] if use_aux else [main]
        picks = sp.encode_select(x.to(compute_dtype), W_enc, b_enc, selectors, center=center)
        picks = [p._replace(vals=p.vals.float()) for p in picks]
        acts = picks[0]
        positive = acts.vals > 0
        if cfg.arch == "batchtopk" and update_threshold and bool(positive.any()):
            with torch.no_grad():  # running mean (EMA with rate 0.01 after 100 steps) of the smallest selected
                lowest = acts.vals[positive].min()  # activation: the inference threshold
                threshold.lerp_(lowest, max(0.01, 1.0 / (int(updates) + 1)))
                updates += 1
        fired = torch.zeros(W_enc.shape[0], dtype=torch.int32, device=x.device).index_add_(0, acts.idx, positive.int()) > 0
        return Encoded(acts, picks[1] if use_aux else None, None, None, fired, positive.sum() / x.shape[0])
    xc = x if center is None else x - center
    pre = F.linear(xc.to(compute_dtype), W_enc.to(compute_dtype), b_enc.to(compute_dtype)).float()
    if cfg.arch == "relu":
        f, theta = pre.relu(), None
    else:
        theta = log_threshold.exp()
        f = _JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth)
    active = f.detach() > 0
    return Encoded(f, None, pre, theta, active.any(0), active.sum(1).float().mean())


def sparsity_penalty(enc: Encoded, cfg: DictConfig, decoder_norms: Callable[[], Tensor], n_tokens: int) -> Tensor:
    """relu: λ·Σ f·‖W_dec‖; jumprelu: λ·L0 (straight-through) or λ·Σ tanh(c·f·‖W_dec‖); TopK family: 0.
    ``decoder_norms`` is called only by the architectures that need it."""
    if cfg.arch in SPARSE_ARCHS:
        return torch.zeros((), device=enc.fired.device)
    decoder_norms = decoder_norms()
    if cfg.arch == "relu":
        return cfg.coeff * (enc.acts * decoder_norms).sum() / n_tokens
    if cfg.sparsity == "tanh":
        return cfg.coeff * torch.tanh(cfg.tanh_c * enc.acts * decoder_norms).sum() / n_tokens
    return cfg.coeff * _Step.apply(enc.pre, enc.theta, cfg.jumprelu_bandwidth).sum() / n_tokens


# ---------------------------------------------------------------- the module


class SparseCoder(Dictionary):
    """SAE / transcoder / crosscoder: one block of features (see :mod:`.protocol`). See the module docstring."""

    n_blocks = 1

    def __init__(self, cfg: DictConfig, *, device: torch.device | str | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        n, d_in, d_out = cfg.n_latents, cfg.d_in * len(cfg.in_points), cfg.d_out * len(cfg.out_points)
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(n, d_out, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        # SAEs/crosscoders: tied init (W_enc = W_dec). Transcoders: small random encoder (row norm 0.1) so
        # the first outputs are ≈ b_dec = the target mean, i.e. FVU starts at 1 rather than above it.
        W_enc = W_dec.clone() if cfg.apply_b_dec_to_input else 0.1 * F.normalize(torch.randn(n, d_in, generator=g), dim=1)
        if cfg.arch in ("relu", "jumprelu"):  # Anthropic's init for penalty-trained dictionaries: norm 0.1
            W_dec = 0.1 * W_dec
            W_enc = 0.1 * W_enc if cfg.apply_b_dec_to_input else W_enc
        self.W_enc = nn.Parameter(W_enc.to(device))
        self.b_enc = nn.Parameter(torch.zeros(n, device=device))
        self.W_dec = nn.Parameter(W_dec.to(device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, device=device))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, device=device)) if cfg.skip else None
        self.log_threshold = (nn.Parameter(torch.full((n,), math.log(cfg.jumprelu_init_threshold), device=device))
                              if cfg.arch == "jumprelu" else None)
        self.register_buffer("threshold", torch.zeros((), device=device))  # batchtopk inference threshold
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("in_scale", torch.ones(len(cfg.in_points), device=device))
        self.register_buffer("out_scale", torch.ones(len(cfg.out_points), device=device))
        self.register_buffer("target_var", torch.ones((), device=device))

    # ------------------------------------------------------------ shapes and scaling
    def block_inputs(self, b: int = 0) -> list[str]:
        return list(self.cfg.in_points)

    def block_outputs(self, b: int = 0) -> list[str]:
        return list(self.cfg.out_points)

    def input_scale(self, b: int = 0) -> Tensor:
        return self.in_scale.repeat_interleave(self.cfg.d_in)

    def inputs(self, acts: dict[str, Tensor]) -> Tensor:
        """Concatenate the input points of a batch (raw model activations) and apply the input scales."""
        return _scaled(acts, self.cfg.in_points, self.in_scale)

    def targets(self, acts: dict[str, Tensor]) -> Tensor:
        return _scaled(acts, self.cfg.out_points, self.out_scale)

    def split_outputs(self, y: Tensor) -> dict[str, Tensor]:
        """Undo the output scaling and split a reconstruction back into its points."""
        d = self.cfg.d_out
        return {p: y[..., i * d : (i + 1) * d] / self.out_scale[i] for i, p in enumerate(self.cfg.out_points)}

    def decoder_norms(self) -> Tensor:
        """‖W_dec,i‖ per latent; for crosscoders the sum over output blocks of the per-block norms."""
        blocks = self.W_dec.view(self.n_latents, len(self.cfg.out_points), self.cfg.d_out)
        return blocks.norm(dim=-1).sum(-1)

    # ------------------------------------------------------------ inference
    def _center(self) -> Tensor | None:
        """What the encoder subtracts from its input: b_dec for SAEs and crosscoders, nothing for transcoders."""
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    def thresholds(self) -> Tensor | None:
        """Per-latent JumpReLU thresholds used at inference (None for TopK)."""
        if self.cfg.arch == "jumprelu":
            return self.log_threshold.exp()
        if self.cfg.arch == "batchtopk":
            return self.threshold.expand(self.n_latents)
        if self.cfg.arch == "relu":
            return torch.zeros(self.n_latents, device=self.b_enc.device)
        return None

    def selector(self) -> sp.Selector:
        th = self.thresholds()
        return sp.topk_selector(self.cfg.k) if th is None else sp.threshold_selector(th)

    def encode(self, x: Tensor) -> sp.Sparse:
        """Latent activations (sparse) of scaled inputs ``x`` [tokens, d_in] at inference."""
        (acts,) = sp.encode_select(x, self.W_enc, self.b_enc, [self.selector()], center=self._center())
        return acts

    def decode(self, acts: sp.Sparse | Tensor, x: Tensor | None = None) -> Tensor:
        """Scaled reconstruction from latents (sparse or dense [tokens, n]); ``x`` feeds the skip."""
        y = (sp.decode(acts, self.W_dec) if isinstance(acts, sp.Sparse) else acts @ self.W_dec) + self.b_dec
        if self.W_skip is not None:
            y = y + x @ self.W_skip.t()
        return y

    def forward(self, x: Tensor) -> Tensor:
        """Scaled inputs → scaled reconstruction."""
        return self.decode(self.encode(x), x)

    def encode_layer(self, x: Tensor, b: int = 0) -> sp.Sparse:
        return self.encode(x)

    def decode_all(self, acts: sp.Sparse | Tensor | list, x: Tensor | None = None) -> Tensor:
        """:meth:`decode`; ``acts`` may also be the list of per-block activations (of the one block)."""
        return self.decode(acts[0] if isinstance(acts, list) else acts, x)

    def decoder_rows(self, b: int = 0, feats=slice(None)) -> Tensor:
        return self.W_dec[feats].unflatten(1, (len(self.cfg.out_points), self.cfg.d_out)) / self.out_scale[:, None]

    def skip(self, x: Tensor, b: int = 0) -> Tensor | None:
        if self.W_skip is None:
            return None
        return (x * self.input_scale()) @ self.W_skip.t() / self.out_scale.repeat_interleave(self.cfg.d_out)

    def splice(self, clean: dict[str, Tensor] | None = None):
        """A crosscoder is acausal: it reconstructs its points from the clean run's inputs ``clean``; an
        SAE/transcoder from the spliced model's own input."""
        if self.cfg.kind == "crosscoder":
            recon = None if clean is None else self.reconstruct(clean)
            return [], [(p, lambda x, p=p: recon[p]) for p in self.cfg.out_points]
        seen, p_in = {}, self.cfg.in_points[0]
        return ([(p_in, lambda x: seen.update(x=x))],
                [(p, lambda x, p=p: self.reconstruct({p_in: seen["x"]})[p]) for p in self.cfg.out_points])

    def reconstruct(self, acts: dict[str, Tensor]) -> dict[str, Tensor]:
        """Raw model activations {point: [..., d]} → raw reconstructions of the output points."""
        shape = next(iter(acts.values())).shape[:-1]
        x = self.inputs({p: a.reshape(-1, a.shape[-1]) for p, a in acts.items()})
        y = self.forward(x)
        return {p: v.reshape(*shape, -1) for p, v in self.split_outputs(y).items()}

    # ------------------------------------------------------------ training
    def training_loss(self, x: Tensor, y: Tensor, *, dead: Tensor | None = None, aux_k: int = 0,
                      aux_coeff: float = 1 / 32, aux_fraction: float = 1.0,
                      compute_dtype: torch.dtype = torch.float32) -> TrainOut:
        """Loss of one batch of scaled inputs ``x`` and targets ``y`` ([tokens, ·]).

        The aux-k loss (Gao et al. 2024) reconstructs the residual error from the top ``aux_k`` dead latents;
        it is estimated on the first ``aux_fraction`` of the tokens and scaled up to the whole batch."""
        aux_rows = max(1, int(round(aux_fraction * x.shape[0])))
        enc = encode_train(x, self.W_enc, self.b_enc, self.cfg, center=self._center(), log_threshold=self.log_threshold,
                           dead=dead, aux_k=aux_k, aux_rows=aux_rows, compute_dtype=compute_dtype,
                           threshold=self.threshold, updates=self.threshold_updates, update_threshold=self.training)
        recon = self.decode(enc.acts, x)
        err = recon - y
        sq = err.pow(2).sum()
        denom = y.shape[0] * self.target_var
        aux = torch.zeros((), device=x.device)
        if enc.aux is not None:
            aux_recon = sp.decode(enc.aux, self.W_dec)[:aux_rows]
            scale = min(dead.numel() / aux_k, 1.0) * x.shape[0] / aux_rows
            aux = aux_coeff * scale * (aux_recon + err[:aux_rows].detach()).pow(2).sum() / denom
        penalty = sparsity_penalty(enc, self.cfg, self.decoder_norms, x.shape[0])
        mse = sq / denom
        return TrainOut(mse + aux + penalty, mse, penalty, aux, enc.fired, enc.l0, sq.detach())

    # ------------------------------------------------------------ constraints and folding
    @property
    def unit_decoder(self) -> bool:
        """TopK-style dictionaries keep unit-norm decoder rows (the penalty-based ones must not)."""
        return self.cfg.arch in SPARSE_ARCHS

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project the decoder gradient onto the tangent space of the unit-norm constraint."""
        if self.unit_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fold_scales(self) -> None:
        """Fold input/output scaling into the weights (afterwards the coder works on raw activations)."""
        d_in, d_out = self.cfg.d_in, self.cfg.d_out
        s_in = self.in_scale.repeat_interleave(d_in)
        s_out = self.out_scale.repeat_interleave(d_out)
        # pre = (s·x − b_dec)·W_encᵀ + b_enc = (x − b_dec/s)·(s·W_enc)ᵀ + b_enc  (s_in = s_out when b_dec is
        # subtracted from the input, since input and output points coincide)
        self.W_enc.mul_(s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s_in[None, :] / s_out[:, None])
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)
