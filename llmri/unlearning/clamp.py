"""SAE-feature clamping: unlearning by a sparse dictionary's features, at inference, with no weight changed.

    feats = select_features(model, sae, task, cfg)          # forget-specific features of an SAE at resid_post.L
    clamp(model, sae, feats, strength=4.0)                  # a hook on the model: conditional negative clamping

After Farrell, Lau & Conmy (2024, "Applying sparse autoencoders to unlearn knowledge in language models"):

1. **Dictionary.** A TopK SAE on ``resid_post.L`` (L = ``UnlearnConfig.layer``, as RMU's): ``UnlearnConfig.sae``
   names one trained by ``llmri train`` (or SAELens / sparsify), else one is trained here on the task's own
   rows — every token of the forget and retain rows but the first (the attention sink) — with
   ``sae_latents`` latents, k 32, for ``sae_tokens`` tokens (its seconds count as the method's cost).
2. **Selection** (:func:`select_features`): per latent, the share of forget tokens and of retain tokens on which
   it fires. Features that fire on at most ``sae_retain_max`` of the retain tokens, ranked by how often they
   fire on forget tokens; the top ``sae_features`` are kept. Each gets m_i, its mean activation where it fires
   on forget tokens.
3. **Conditional clamping** (:func:`clamp`): on every token, where a selected feature i is active (a_i > 0) its
   contribution is replaced by −c·m_i (c = ``sae_clamp``; c = 0 ablates it):
   h ← h + Σ_i 1[a_i > 0]·(−c·m_i − a_i)·d_i,
   d_i its raw decoder row. Tokens on which no selected feature fires are untouched, so text without the
   forget features passes through exactly; the SAE's reconstruction error is kept (only the features move).

The hook stays on the model (and on :func:`~llmri.unlearning.evaluate.clone` copies of it): measures and
attacks read the clamped model, as a deployment would serve it; weights are never changed, so a relearning
attack fine-tunes the weights under the clamp (whose correction is a constant per token for gradients) and
4-bit quantisation rounds the weights alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .tasks import Row, Task, UnlearnError

SAE_K = 32
"""Active latents per token of a trained-here SAE."""


class Features(NamedTuple):
    """Selected features and what selection measured."""

    point: str
    """The hook point the SAE reads and writes."""
    ids: list[int]
    """Selected latents, most forget-frequent first."""
    forget_freq: list[float]
    """Share of forget tokens each fires on."""
    retain_freq: list[float]
    """Share of retain tokens each fires on."""
    mean_act: list[float]
    """m_i: mean activation where it fires on forget tokens."""


@torch.no_grad()
def _rows_acts(model, rows: Sequence[Row], point: str, batch_size: int = 16) -> Tensor:
    """[tokens, d] float32 activations at ``point`` of every token of ``rows`` but the first."""
    from .methods import tensors

    out = []
    for k in range(0, len(rows), batch_size):
        ids, mask, _ = tensors(model, rows[k : k + batch_size])
        h = model.capture(ids, [point], attention_mask=mask)[point]
        keep = mask.bool().clone()
        keep[:, 0] = False
        out.append(h[keep].float().cpu())
    return torch.cat(out)


def sae_point(model, cfg) -> str:
    from .methods import rmu_layer

    return model.resolve(f"resid_post.{rmu_layer(model, cfg)}")


def train_sae(model, task: Task, cfg) -> tuple[object, float]:
    """A TopK SAE at :func:`sae_point` trained on the task's rows (module docstring); returns (sae, FLOPs)."""
    from ..dictionaries import DictConfig
    from ..dictionaries.config import DictionaryError
    from ..dictionaries.run import train_in_memory

    point = sae_point(model, cfg)
    x = torch.cat([_rows_acts(model, task.forget, point), _rows_acts(model, task.retain, point)])
    n = cfg.sae_latents or 4 * model.d_model
    dc = DictConfig(kind="sae", in_points=[point], d_in=model.d_model, n_latents=n, k=min(SAE_K, n),
                    model_name=model.name)
    try:
        (sae,) = train_in_memory([dc], {point: x}, cfg.sae_tokens, device=model.device,
                                 batch_size=min(1024, len(x)))
    except DictionaryError as err:
        raise UnlearnError(f"cannot train the clamping SAE: {err.problem}",
                           "use a task with more rows, or pass --sae") from None
    return sae, 12.0 * model.d_model * n * cfg.sae_tokens


def load_sae(path: str, model, cfg):
    """A trained dictionary at ``path`` that reads and writes :func:`sae_point` of ``model``."""
    from ..dictionaries import load
    from ..dictionaries.formats import check_fits
    from ..errors import LlmriError

    try:
        sae = load(path, device=model.device)
        check_fits(sae, model)
    except LlmriError as err:
        raise UnlearnError(f"--sae {path}: {err.problem}", err.fix) from None
    point = sae_point(model, cfg)
    if sae.cfg.kind != "sae" or [model.resolve(p) for p in sae.cfg.in_points] != [point]:
        raise UnlearnError(f"--sae {path} reads {', '.join(sae.cfg.in_points)}, not {point}",
                           f"pass an SAE trained on {point}, or --layer to match the SAE")
    return sae


@torch.no_grad()
def _firing(sae, x: Tensor, batch: int = 4096) -> tuple[Tensor, Tensor]:
    """Per latent: how many rows of ``x`` it fires on, and the sum of its activations there."""
    count = torch.zeros(sae.n_latents)
    total = torch.zeros(sae.n_latents)
    point = sae.cfg.in_points[0]
    for k in range(0, len(x), batch):
        a = sae.encode(sae.inputs({point: x[k : k + batch].to(sae.W_enc.device)})).dense().float().cpu()
        count += (a > 0).sum(0)
        total += a.clamp_min(0).sum(0)
    return count, total


def select_features(model, sae, task: Task, cfg) -> Features:
    """The forget-specific features of ``task`` (module docstring, 2)."""
    point = sae_point(model, cfg)
    return select(sae, _rows_acts(model, task.forget, point), _rows_acts(model, task.retain, point),
                  cfg.sae_features, cfg.sae_retain_max)


def select(sae, forget: Tensor, retain: Tensor, n: int, retain_max: float) -> Features:
    """The ``n`` features firing most often on ``forget`` activations among those firing on at most
    ``retain_max`` of ``retain`` activations ([tokens, d] raw, at the SAE's point)."""
    cf, tf = _firing(sae, forget)
    cr, _ = _firing(sae, retain)
    ff, fr = cf / len(forget), cr / len(retain)
    ok = (fr <= retain_max) & (cf > 0)
    if not ok.any():
        raise UnlearnError(f"no SAE feature fires on forget tokens and on at most {retain_max:g} of retain tokens",
                           "raise --sae-retain-max or use another --layer")
    ids = torch.argsort(torch.where(ok, ff, torch.tensor(-1.0)), descending=True)[: min(n, int(ok.sum()))].tolist()
    return Features(sae.cfg.in_points[0], ids, [round(float(ff[i]), 5) for i in ids],
                    [round(float(fr[i]), 5) for i in ids], [float(tf[i] / cf[i]) for i in ids])


def clamp(model, sae, feats: Features, strength: float):
    """Attach the conditional clamp (module docstring, 3) to ``model``; returns the hook's handle."""
    from ..hooks import attach

    sae.requires_grad_(False)
    ids = torch.tensor(feats.ids, device=sae.W_enc.device)
    target = -strength * torch.tensor(feats.mean_act, device=sae.W_enc.device)
    dec = sae.decoder_rows(0, ids)[:, 0].float()  # [m, d] raw units

    def fn(h: Tensor) -> Tensor:
        flat = h.reshape(-1, h.shape[-1]).float()
        with torch.no_grad():  # a constant offset per token for gradients (a relearning attack trains through it)
            a = sae.encode(sae.inputs({feats.point: flat.detach()})).dense()[:, ids].float()
            delta = torch.where(a > 0, target - a, torch.zeros_like(a)) @ dec
        return (flat + delta).reshape(h.shape).to(h.dtype)

    return attach(model.site(feats.point), fn)


def prepare(model, task: Task, cfg) -> tuple[object, Features, dict]:
    """The SAE (loaded or trained) and its selected features, with what it cost (``seconds``, ``flops``)."""
    if not task.forget or not task.retain:
        raise UnlearnError("SAE clamping needs forget and retain rows", "use a task with both")
    t0 = time.perf_counter()
    flops = 0.0
    if cfg.sae:
        sae = load_sae(cfg.sae, model, cfg)
    else:
        sae, flops = train_sae(model, task, cfg)
    feats = select_features(model, sae, task, cfg)
    n_params = sum(p.numel() for p in model.hf.parameters())
    reads = sum(len(r[0]) for r in task.forget) + sum(len(r[0]) for r in task.retain)
    reads_flops = 2 * n_params * reads * (1 + (not cfg.sae))  # selection's read, and the training rows' read
    return sae, feats, {"seconds": time.perf_counter() - t0, "flops": flops + reads_flops}
