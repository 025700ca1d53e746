"""Configs of dictionaries and of training runs (saved as JSON next to every artefact)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import LlmriError
from ..validate import bounded, check, check_choice

KINDS = ("sae", "transcoder", "crosscoder", "clt")
ARCHS = ("topk", "batchtopk", "jumprelu", "relu")


class DictionaryError(LlmriError):
    """A dictionary config, file or training request that cannot work as given."""


@dataclass
class DictConfig:
    """Architecture of one sparse dictionary."""

    kind: str = "sae"
    """sae (reads and writes one point), transcoder (reads ``mlp_in.l``, predicts ``mlp_out.l``), crosscoder
    (reads and reconstructs several points through one latent space) or clt (cross-layer transcoder)."""
    arch: str = "topk"
    """Activation: topk, batchtopk (saved as JumpReLU with its learned threshold), jumprelu, relu (L1)."""
    in_points: list[str] = field(default_factory=list)
    """Canonical hook points read (concatenated for crosscoders; one per layer for CLTs)."""
    out_points: list[str] = field(default_factory=list)
    """Canonical hook points written (same as ``in_points`` for SAEs and crosscoders)."""
    d_in: int = bounded(0, 1)
    """Width of one input point (the model's d_model); ≥ 1."""
    d_out: int = bounded(0, 0)
    """Width of one output point (0: ``d_in``)."""
    n_latents: int = bounded(0, 1)
    """Latents (per layer for CLTs); ≥ 1."""
    k: int = bounded(32, 1)
    """Active latents per token for topk/batchtopk (per layer for CLTs); 1 ≤ k ≤ n_latents."""
    skip: bool = False
    """Transcoders: add a learned linear skip connection x·W_skipᵀ to the output."""
    sparsity_coeff: float = bounded(0.0, 0)
    """Weight of the sparsity penalty (relu: decoder-norm-weighted L1; jumprelu: L0 or tanh); ≥ 0, 0 = default."""
    sparsity: str = "l0"
    """jumprelu penalty: l0 (straight-through L0) or tanh (Σ tanh(c·f·‖W_dec‖), Anthropic 2025)."""
    tanh_c: float = bounded(4.0, 0, lo_open=True)
    """The c of the tanh penalty; > 0."""
    jumprelu_bandwidth: float = bounded(0.05, 0, lo_open=True)
    """Width of the rectangle kernel of the JumpReLU straight-through estimator (normalised units); > 0."""
    jumprelu_init_threshold: float = bounded(0.2, 0, lo_open=True)
    """Initial JumpReLU threshold (normalised units; encoders start at norm 0.1, so pre-activations ~N(0, 0.1²)
    and about 2% of latents are active at first)."""
    model_name: str = ""
    """Model the dictionary was trained on."""

    def __post_init__(self):
        check_choice("dictionary kind", self.kind, KINDS, DictionaryError)
        check_choice("architecture", self.arch, ARCHS, DictionaryError)
        check_choice("jumprelu sparsity penalty", self.sparsity, ("l0", "tanh"), DictionaryError)
        for name in ("in_points", "out_points"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
                raise DictionaryError(f"DictConfig.{name} must be a list of hook-point names, got {v!r}",
                                      "give names such as ['resid_post.5']")
        if not self.in_points:
            raise DictionaryError("DictConfig.in_points is empty", "give the hook point(s) the dictionary reads")
        if not self.out_points:
            self.out_points = list(self.in_points)
        if not self.d_out:
            self.d_out = self.d_in
        check(self, DictionaryError)
        if self.arch in ("topk", "batchtopk") and self.k > self.n_latents:
            raise DictionaryError(f"k = {self.k} exceeds the {self.n_latents} latents",
                                  f"use 1 ≤ k ≤ {self.n_latents}, or more latents")

    @property
    def apply_b_dec_to_input(self) -> bool:
        """Subtract the decoder bias from the input before encoding (only when input and output coincide)."""
        return self.in_points == self.out_points

    @property
    def coeff(self) -> float:
        """The sparsity coefficient, with a per-architecture default."""
        if self.sparsity_coeff:
            return self.sparsity_coeff
        # tuned on SmolLM2 resid_post.15 (1,152 latents, 80k tokens): L0 ≈ 150-250 early in training
        return {"relu": 1e-2, "jumprelu": 1e-4 if self.sparsity == "l0" else 3e-3}.get(self.arch, 0.0)

    @property
    def name(self) -> str:
        """Folder name of the dictionary inside a run."""
        if self.kind in ("crosscoder", "clt"):
            return f"{self.kind}-" + "-".join(p.replace(".", "") for p in (self.in_points[:1] + self.in_points[-1:]))
        return self.in_points[0] if self.kind == "sae" else f"transcoder.{self.in_points[0].split('.')[-1]}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DictConfig:
        if not isinstance(d, dict):
            raise DictionaryError(f"a dictionary config must be a JSON object, got {type(d).__name__}",
                                  "restore the folder's cfg.json (or retrain)")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainConfig:
    """How dictionaries are trained (one config for every dictionary of a run)."""

    tokens: int = bounded(2_000_000, 1)
    """Training tokens (after exclusion); ≥ 1 (rounded up to whole batches)."""
    batch_size: int = bounded(4096, 1)
    """Tokens per optimiser step; ≥ 1."""
    lr: float = bounded(0.0, 0)
    """Adam learning rate; 0 = automatic from the width and architecture (see :meth:`learning_rate`)."""
    warmup: float = bounded(0.05, 0, 1)
    """Fraction of steps with linear learning-rate warm-up, in [0, 1]."""
    decay: float = bounded(0.2, 0, 1)
    """Fraction of steps at the end with linear decay to zero, in [0, 1]."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    threshold_lr_scale: float = bounded(10.0, 0, lo_open=True)
    """JumpReLU log-thresholds learn this many times faster than the weights (Adam makes their step size
    independent of the penalty's scale, so at the base rate they move too slowly for short CPU runs)."""
    aux_k: int = bounded(0, 0)
    """Latents used by the aux-k loss (Gao et al. 2024); 0 = d_in // 2."""
    aux_coeff: float = bounded(1 / 32, 0)
    """Weight of the aux-k loss; ≥ 0."""
    aux_fraction: float = bounded(0.125, 0, 1, lo_open=True)
    """Fraction of each batch's tokens on which the aux-k loss is estimated (scaled to the whole batch);
    its sparse work is aux_k/k times the main path's per token, so a fraction keeps it affordable; in (0, 1]."""
    dead_tokens: int = bounded(0, 0)
    """A latent counts as dead (for aux-k and the dead % shown) after this many tokens without firing;
    0 = min(200k, tokens / 10), so that aux-k engages early in short runs too."""
    normalize: bool = True
    """Scale each point so that E‖x‖ = √d (folded into the weights on save)."""
    norm_batches: int = bounded(4, 1)
    """Batches used to estimate normalisation scales and the initial decoder bias; ≥ 1."""
    seed: int = bounded(0, 0)
    """Seed of initialisation and data order."""
    dtype: str = "float32"
    """Compute dtype of the dictionary matmuls: float32 or bfloat16 (autocast-style; weights stay fp32)."""
    checkpoint_every: int = bounded(200, 0)
    """Steps between checkpoints (written atomically); 0 = only at the end."""
    log_every: int = bounded(10, 1)
    """Steps between progress/log updates; ≥ 1."""
    distribute: str = "data"
    """With torchrun: 'data' (every rank trains every dictionary on its share of the data, gradients
    averaged) or 'layers' (dictionaries are split over ranks; each trains its own on all the data)."""

    def __post_init__(self):
        check(self, DictionaryError)
        check_choice("compute dtype", self.dtype, ("float32", "bfloat16"), DictionaryError)
        check_choice("distribution mode", self.distribute, ("data", "layers"), DictionaryError)

    @property
    def dead_window(self) -> int:
        return self.dead_tokens or min(200_000, max(self.batch_size, self.tokens // 10))

    def learning_rate(self, cfg: DictConfig) -> float:
        """``lr`` if set, else c / sqrt(n_latents / 2^14): sparsify's width rule with c = 2e-4 for penalty
        architectures and c = 1.6e-3 (8×) for TopK/BatchTopK, whose short CPU runs need it: on SmolLM2
        resid_post.15 (4,608 latents, 1M tokens) held-out NMSE was 0.273 at 1×, 0.221 at 2×, 0.184 at 4×,
        0.167 at 8× (0.8% dead) and 0.175 at 16× (24% dead)."""
        if self.lr:
            return self.lr
        c = 1.6e-3 if cfg.arch in ("topk", "batchtopk") else 2e-4
        return c / math.sqrt(cfg.n_latents / 2**14)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise DictionaryError(f"a training config must be a JSON object, got {type(d).__name__}",
                                  "restore the checkpoint's trainer.json, or start without --resume")
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.betas = tuple(out.betas)
        return out
