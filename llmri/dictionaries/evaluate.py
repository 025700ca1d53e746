"""Evaluate dictionaries on held-out tokens: reconstruction, sparsity, and what splicing them in costs.

Definitions (DESIGN.md §5): NMSE = FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖²; explained variance = 1 − FVU; L0 = mean
number of active latents per token; dead = never active over the evaluated tokens; dense = active on more
than ``dense_threshold`` of them; CE loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean) with
KL(clean ‖ spliced). Splicing:

* SAE: its point is replaced by the reconstruction;
* transcoder: its MLP's output is replaced by the transcoder applied to the MLP's actual input;
* CLT: every MLP output is replaced at once (layer by layer, each encoder reading the spliced model's MLP
  input);
* crosscoder (acausal): every point it covers is replaced by the reconstruction computed from the clean
  run's activations.

Zero ablation sets the same activations to 0. Excluded tokens (position 0, special tokens, activation-norm
outliers of the dictionary's input) keep their original activations and are left out of every metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import data
from ..hooks import attach
from ..progress import bar
from . import sparse as sp
from .clt import CrossLayerTranscoder
from .coder import SparseCoder

Dictionary = SparseCoder | CrossLayerTranscoder


@dataclass
class EvalConfig:
    """What ``llmri eval`` measures on."""

    tokens: int = 65_536
    """Held-out tokens (after exclusion) for reconstruction, L0, dead and density."""
    ce_tokens: int = 16_384
    """Held-out tokens for the CE/KL splice evaluation."""
    context: int = 128
    """Window length."""
    batch_size: int = 16
    """Windows per LM forward."""
    split: str = "eval"
    """Corpus split evaluated on."""
    dense_threshold: float = 0.1
    """A latent active on more than this fraction of tokens counts as dense."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens left out of every metric (and passed through unchanged when splicing)."""


# ---------------------------------------------------------------- reconstruction metrics


@torch.no_grad()
def reconstruction_metrics(d: Dictionary, batches: Iterator[dict[str, Tensor]], tokens: int,
                           dense_threshold: float = 0.1) -> dict:
    """NMSE, explained variance, L0, dead/dense fractions and feature densities over ``tokens`` tokens."""
    n_lat = d.n_latents
    counts = torch.zeros(n_lat, dtype=torch.float64)
    points = d.cfg.out_points
    sq = {p: 0.0 for p in points}
    s1: dict[str, Tensor] = {}
    s2 = {p: 0.0 for p in points}
    l0_sum, seen = 0, 0
    for batch in batches:
        if seen >= tokens:
            break
        x, y = d.inputs(batch), d.targets(batch)
        acts = d.encode(x)
        y_hat = d._decode_all(acts) if isinstance(d, CrossLayerTranscoder) else d.decode(acts, x)
        for i, p in enumerate(points):
            y_p = _point_slice(d, y, i).double()
            sq[p] += (_point_slice(d, y_hat, i).double() - y_p).pow(2).sum().item()
            s1[p] = y_p.sum(0) + s1.get(p, 0)
            s2[p] += y_p.pow(2).sum().item()
        idx = _active_indices(d, acts)
        counts += torch.bincount(idx.cpu(), minlength=n_lat).double()
        l0_sum += idx.numel()
        seen += len(y)
    var = {p: s2[p] - s1[p].pow(2).sum().item() / seen for p in points}
    fvu = sum(sq.values()) / sum(var.values())
    density = counts / max(seen, 1)
    alive = density[density > 0]
    hist, edges = torch.histogram(alive.log10().float(), bins=20) if alive.numel() else (torch.zeros(0), torch.zeros(0))
    return {
        "tokens": seen,
        "nmse": fvu,
        "explained_variance": 1.0 - fvu,
        "nmse_per_point": {p: sq[p] / var[p] for p in points},
        "l0": l0_sum / max(seen, 1),
        "dead_fraction": (density == 0).double().mean().item(),
        "dense_fraction": (density > dense_threshold).double().mean().item(),
        "dense_threshold": dense_threshold,
        "density_histogram": {"log10_density_edges": edges.tolist(), "counts": hist.tolist(),
                              "dead": int((density == 0).sum())},
        "density": density,
    }


def _point_slice(d: Dictionary, t: Tensor, i: int) -> Tensor:
    if isinstance(d, CrossLayerTranscoder):
        return t[:, i]
    w = d.cfg.d_out
    return t[:, i * w : (i + 1) * w]


def _active_indices(d: Dictionary, acts) -> Tensor:
    if isinstance(acts, list):  # CLT: latents numbered layer-major
        return torch.cat([a.idx[a.vals > 0] + l * d.cfg.n_latents for l, a in enumerate(acts)])
    return acts.idx[acts.vals > 0]


# ---------------------------------------------------------------- splicing


@contextmanager
def spliced(model, d: Dictionary, keep: Tensor, *, zero: bool = False, clean: dict[str, Tensor] | None = None):
    """Run the model with ``d`` spliced in (or its activations zero-ablated) at the kept positions.

    ``keep`` is a [batch, seq] bool mask; ``clean`` holds the clean activations of a crosscoder's inputs.
    """
    cfg = d.cfg
    handles = []
    keep3 = keep.to(model.device)[..., None]

    def replace_with(fn):
        def hook(x: Tensor) -> Tensor:
            new = torch.zeros_like(x) if zero else fn(x).to(x.dtype)
            return torch.where(keep3, new, x)

        return hook

    try:
        if cfg.kind == "sae":
            p = cfg.in_points[0]
            handles.append(attach(model.site(p), replace_with(lambda x: d.reconstruct({p: x})[p])))
        elif cfg.kind == "crosscoder":
            recon = None if zero else d.reconstruct(clean)
            for p in cfg.out_points:
                handles.append(attach(model.site(p), replace_with(lambda x, p=p: recon[p])))
        elif cfg.kind == "transcoder":
            stash = {}
            handles.append(attach(model.site(cfg.in_points[0]), _stash(stash, "in")))
            out_p = cfg.out_points[0]
            handles.append(attach(model.site(out_p), replace_with(
                lambda x: d.reconstruct({cfg.in_points[0]: stash["in"]})[out_p])))
        else:  # CLT: encode each layer from the spliced model's MLP input, write the sum of decoders
            feats: list[sp.Sparse] = []
            for l, (p_in, p_out) in enumerate(zip(cfg.in_points, cfg.out_points)):
                handles.append(attach(model.site(p_in), _clt_encode(d, l, feats)))
                handles.append(attach(model.site(p_out), replace_with(lambda x, l=l: _clt_decode(d, l, feats, x))))
        yield
    finally:
        for h in handles:
            h.remove()


def _stash(store: dict, key: str):
    def fn(x: Tensor):
        store[key] = x
        return None

    return fn


def _clt_encode(d: CrossLayerTranscoder, layer: int, feats: list):
    def fn(x: Tensor):
        if layer == 0:
            feats.clear()
        flat = x.reshape(-1, x.shape[-1]) * d.in_scale[layer]
        feats.append(d.encode_layer(flat.to(d.W_enc.dtype), layer))
        return None

    return fn


def _clt_decode(d: CrossLayerTranscoder, layer: int, feats: list, x: Tensor) -> Tensor:
    y = d.decode_layer(feats[: layer + 1], layer) / d.out_scale[layer]
    return y.reshape(x.shape)


@torch.no_grad()
def ce_metrics(model, d: Dictionary, windows: Iterator[Tensor], tokens: int, *, batch_size: int = 16,
               exclusion: data.Exclusion | None = None) -> dict:
    """Clean, spliced and zero-ablated next-token CE (nats) and KL(clean ‖ spliced) over ``tokens`` tokens."""
    exclusion = exclusion or data.Exclusion()
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n = 0
    with bar("splice evaluation", total=tokens, unit="tokens") as b:
        for batch in data.batched(windows, batch_size):
            if n >= tokens:
                break
            batch = batch.to(model.device)
            points = sorted(set(d.cfg.in_points))
            clean_acts = model.capture(batch, points + ["logits"], stop_early=False)
            keep = data.token_mask(batch, model.special_ids, exclusion)
            for p in d.cfg.in_points:
                keep &= ~data.outlier_mask(clean_acts[p], keep, exclusion)
            clean_logits = clean_acts["logits"].float()
            clean_in = {p: clean_acts[p] for p in points}
            with spliced(model, d, keep, clean=clean_in):
                spl_logits = model.hf(input_ids=batch, use_cache=False).logits.float()
            with spliced(model, d, keep, zero=True, clean=clean_in):
                zero_logits = model.hf(input_ids=batch, use_cache=False).logits.float()
            # predictions made at kept positions, for the next token
            m = keep[:, :-1]
            target = batch[:, 1:]
            for name, logits in (("clean", clean_logits), ("spliced", spl_logits), ("zero", zero_logits)):
                ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
                sums[name] += ce[m].sum().item()
            lp_clean = clean_logits[:, :-1].log_softmax(-1)
            lp_spl = spl_logits[:, :-1].log_softmax(-1)
            kl = (lp_clean.exp() * (lp_clean - lp_spl)).sum(-1)
            sums["kl"] += kl[m].sum().item()
            n += int(m.sum())
            b.advance(batch.numel())
    ce = {k: v / max(n, 1) for k, v in sums.items()}
    gap = ce["zero"] - ce["clean"]
    return {
        "ce_tokens": n,
        "ce_clean": ce["clean"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / gap if gap else float("nan"),
        "kl_clean_spliced": ce["kl"],
    }


def evaluate(model, d: Dictionary, docs: list[data.Document], cfg: EvalConfig | None = None,
             store_batches: Iterator[dict[str, Tensor]] | None = None) -> dict:
    """Every metric of the module docstring; reconstruction batches come from ``store_batches`` if given,
    else from the model over the ``cfg.split`` split of ``docs``."""
    from .sources import ModelSource

    cfg = cfg or EvalConfig()
    spec = data.WindowSpec(context=cfg.context, split=cfg.split)
    points = sorted(set(d.cfg.in_points + d.cfg.out_points))
    was_training = d.training
    d.eval()
    try:
        if store_batches is None:
            store_batches = iter(ModelSource(model, docs, points, 1024, windows=spec, lm_batch=cfg.batch_size,
                                             pool_batches=1, exclusion=cfg.exclusion))
        rec = reconstruction_metrics(d, store_batches, cfg.tokens, cfg.dense_threshold)
        ce = ce_metrics(model, d, data.token_windows(model, docs, spec), cfg.ce_tokens, batch_size=cfg.batch_size,
                        exclusion=cfg.exclusion) if cfg.ce_tokens else {}
    finally:
        d.train(was_training)
    density = rec.pop("density")
    return {**rec, **ce, "excluded": cfg.exclusion.describe(), "config": asdict(cfg), "_density": density}
