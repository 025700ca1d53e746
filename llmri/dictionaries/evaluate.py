"""Evaluate dictionaries on held-out tokens: reconstruction, sparsity, and what splicing them in costs.

Definitions: NMSE = FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖²; explained variance = 1 − FVU; L0 = mean
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

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .. import data
from ..hooks import attach
from ..progress import bar
from ..validate import bounded, check
from .config import DictionaryError
from .protocol import Dictionary


@dataclass
class EvalConfig:
    """What ``llmri eval`` measures on."""

    tokens: int = bounded(65_536, 0)
    """Held-out tokens (after exclusion) for reconstruction, L0, dead and density; ≥ 0 (0: skip)."""
    ce_tokens: int = bounded(16_384, 0)
    """Held-out tokens run through the model for the CE/KL splice evaluation (whole windows); ≥ 0 (0: skip)."""
    context: int = bounded(128, 2)
    """Window length; ≥ 2."""
    batch_size: int = bounded(16, 1)
    """Windows per LM forward; ≥ 1."""
    split: str = "eval"
    """Corpus split evaluated on."""
    dense_threshold: float = bounded(0.1, 0, 1, lo_open=True)
    """A latent active on more than this fraction of tokens counts as dense; in (0, 1]."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens left out of every metric (and passed through unchanged when splicing)."""

    def __post_init__(self):
        check(self, DictionaryError)


# ---------------------------------------------------------------- reconstruction metrics


class Reconstruction:
    """Accumulates NMSE (around the global mean), L0 and latent firing counts batch by batch."""

    def __init__(self, d: Dictionary, dense_threshold: float = 0.1):
        self.d, self.dense_threshold = d, dense_threshold
        self.points = d.cfg.out_points
        self.counts = torch.zeros(d.n_latents, dtype=torch.float64)
        self.sq = {p: 0.0 for p in self.points}
        self.s1: dict[str, Tensor] = {}
        self.s2 = {p: 0.0 for p in self.points}
        self.l0_sum, self.seen = 0, 0

    @torch.no_grad()
    def update(self, batch: dict[str, Tensor]) -> None:
        d = self.d
        x, y = d.inputs(batch), d.targets(batch)
        acts = d.encode(x)
        y_hat = d.decode_all(acts, x)
        y, y_hat = y.reshape(len(y), len(self.points), -1), y_hat.reshape(len(y), len(self.points), -1)  # [tokens, point, d]
        for i, p in enumerate(self.points):
            y_p = y[:, i].double()
            self.sq[p] += (y_hat[:, i].double() - y_p).pow(2).sum().item()
            self.s1[p] = y_p.sum(0) + self.s1.get(p, 0)
            self.s2[p] += y_p.pow(2).sum().item()
        idx = _active_indices(d, acts)
        self.counts += torch.bincount(idx.cpu(), minlength=d.n_latents).double()
        self.l0_sum += idx.numel()
        self.seen += len(y)

    def result(self) -> dict:
        seen = max(self.seen, 1)
        var = {p: self.s2[p] - self.s1[p].pow(2).sum().item() / seen for p in self.points}
        fvu = sum(self.sq.values()) / sum(var.values())
        density = self.counts / seen
        alive = density[density > 0]
        hist, edges = torch.histogram(alive.log10().float(), bins=20) if alive.numel() else (torch.zeros(0), torch.zeros(0))
        return {
            "tokens": self.seen,
            "nmse": fvu,
            "explained_variance": 1.0 - fvu,
            "nmse_per_point": {p: self.sq[p] / var[p] for p in self.points},
            "l0": self.l0_sum / seen,
            "dead_fraction": (density == 0).double().mean().item(),
            "dense_fraction": (density > self.dense_threshold).double().mean().item(),
            "dense_threshold": self.dense_threshold,
            "density_histogram": {"log10_density_edges": edges.tolist(), "counts": hist.tolist(),
                                  "dead": int((density == 0).sum())},
            "density": density,
        }


def reconstruction_metrics(d: Dictionary, batches: Iterator[dict[str, Tensor]], tokens: int,
                           dense_threshold: float = 0.1) -> dict:
    """NMSE, explained variance, L0, dead/dense fractions and feature densities over ``tokens`` tokens."""
    acc = Reconstruction(d, dense_threshold)
    for batch in batches:
        if acc.seen >= tokens:
            break
        acc.update(batch)
    return acc.result()


def active_entries(d: Dictionary, acts) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, latents, values) of the positive entries of encoded ``acts``; a CLT's latents are numbered
    layer-major (``layer · n + i``)."""
    parts = acts if isinstance(acts, list) else [acts]
    per = d.cfg.n_latents if isinstance(acts, list) else 0
    pos = [a.vals > 0 for a in parts]
    return (torch.cat([a.rows[p] for a, p in zip(parts, pos)]),
            torch.cat([a.idx[p] + l * per for l, (a, p) in enumerate(zip(parts, pos))]),
            torch.cat([a.vals[p].float() for a, p in zip(parts, pos)]))


def _active_indices(d: Dictionary, acts) -> Tensor:
    return active_entries(d, acts)[1]


# ---------------------------------------------------------------- splicing


@contextmanager
def spliced(model, d: Dictionary, keep: Tensor, *, zero: bool = False, clean: dict[str, Tensor] | None = None):
    """Run the model with ``d`` spliced in (or its activations zero-ablated) at the kept positions.

    ``keep`` is a [batch, seq] bool mask; ``clean`` holds the clean activations of a crosscoder's inputs.
    """
    handles = []
    keep3 = keep.to(model.device)[..., None]

    def replace_with(fn):
        def hook(x: Tensor) -> Tensor:
            new = torch.zeros_like(x) if zero else fn(x).to(x.dtype)
            return torch.where(keep3, new, x)

        return hook

    reads, writes = d.splice(None if zero else clean)
    try:
        for p, fn in reads:  # first, so that a point both read and replaced (an SAE's) is read before
            handles.append(attach(model.site(p), fn))
        for p, fn in writes:
            handles.append(attach(model.site(p), replace_with(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def ce_metrics(model, dicts: Dictionary | list[Dictionary], windows: Iterator[Tensor], tokens: int, *,
               batch_size: int = 16, exclusion: data.Exclusion | None = None) -> dict | list[dict]:
    """Clean, spliced and zero-ablated next-token CE (nats) and KL(clean ‖ spliced) over the windows that
    hold ``tokens`` tokens (rounded up to whole windows; predictions are scored at kept positions only),
    for one dictionary or several (the clean pass is shared)."""
    single = not isinstance(dicts, list)
    dicts = [dicts] if single else dicts
    exclusion = exclusion or data.Exclusion()
    sums = [{"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0, "n": 0} for _ in dicts]
    points = sorted({p for d in dicts for p in d.cfg.in_points})
    windows = iter(windows)
    first = next(windows, None)
    if first is None:
        raise DictionaryError("no text for the CE evaluation", "use a corpus with an eval split")
    n_windows = -(-tokens // len(first))
    with bar("splice evaluation", total=n_windows * len(first), unit="tokens") as b:
        for kb in data.kept_activations(model, itertools.chain([first], windows), points + ["logits"],
                                        batch_size=batch_size, exclusion=exclusion, outlier_points=[],
                                        limit_windows=n_windows, stop_early=False, progress=b):
            batch, clean_acts = kb.tokens.to(model.device), kb.acts
            lp_clean = clean_acts["logits"].float()[:, :-1].log_softmax(-1)
            target = batch[:, 1:]
            for d, acc in zip(dicts, sums):
                keep = kb.kept_at(d.cfg.in_points)
                clean_in = {p: clean_acts[p] for p in d.cfg.in_points}
                m = keep[:, :-1]  # predictions made at kept positions, for the next token
                for name, zero in (("spliced", False), ("zero", True)):
                    with spliced(model, d, keep, zero=zero, clean=clean_in):
                        logits = model.hf(input_ids=batch, use_cache=False).logits.float()
                    lp = logits[:, :-1].log_softmax(-1)
                    acc[name] += -lp.gather(-1, target[..., None])[..., 0][m].sum().item()
                    if not zero:
                        acc["kl"] += (lp_clean.exp() * (lp_clean - lp)).sum(-1)[m].sum().item()
                acc["clean"] += -lp_clean.gather(-1, target[..., None])[..., 0][m].sum().item()
                acc["n"] += int(m.sum())
    out = []
    for acc in sums:
        n = max(acc["n"], 1)
        ce = {k: acc[k] / n for k in ("clean", "spliced", "zero", "kl")}
        gap = ce["zero"] - ce["clean"]
        out.append({
            "ce_tokens": acc["n"],
            "ce_clean": ce["clean"],
            "ce_spliced": ce["spliced"],
            "ce_zero_ablation": ce["zero"],
            "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / gap if gap else float("nan"),
            "kl_clean_spliced": ce["kl"],
        })
    return out[0] if single else out


def evaluate_many(model, dicts: list[Dictionary], docs: list[data.Document], cfg: EvalConfig | None = None,
                  batches: Iterator[dict[str, Tensor]] | None = None) -> list[dict]:
    """Every metric of the module docstring for each dictionary, sharing the model's passes: one capture
    pass feeds every reconstruction metric, one clean pass per batch serves every CE evaluation.
    Reconstruction batches come from ``batches`` if given (e.g. an eval store), else from the model over the
    ``cfg.split`` split of ``docs``."""
    from .sources import ModelSource

    cfg = cfg or EvalConfig()
    spec = data.WindowSpec(context=cfg.context, split=cfg.split)
    points = sorted({p for d in dicts for p in d.cfg.in_points + d.cfg.out_points})
    modes = [d.training for d in dicts]
    for d in dicts:
        d.eval()
    try:
        accs = [Reconstruction(d, cfg.dense_threshold) for d in dicts]
        if cfg.tokens:
            if batches is None:
                batches = iter(ModelSource(model, docs, points, 1024, windows=spec, lm_batch=cfg.batch_size,
                                           pool_batches=1, exclusion=cfg.exclusion))
            with bar("reconstruction evaluation", total=cfg.tokens, unit="tokens") as b:
                for batch in batches:
                    if accs[0].seen >= cfg.tokens:
                        break
                    for acc in accs:
                        acc.update(batch)
                    b.advance(len(next(iter(batch.values()))))
        recs = [acc.result() for acc in accs]
        ces = (ce_metrics(model, dicts, data.token_windows(model, docs, spec), cfg.ce_tokens,
                          batch_size=cfg.batch_size, exclusion=cfg.exclusion) if cfg.ce_tokens else [{} for _ in dicts])
    finally:
        for d, mode in zip(dicts, modes):
            d.train(mode)
    out = []
    for rec, ce in zip(recs, ces):
        density = rec.pop("density")
        out.append({**rec, **ce, "excluded": cfg.exclusion.describe(), "config": asdict(cfg), "_density": density})
    return out


def evaluate(model, d: Dictionary, docs: list[data.Document], cfg: EvalConfig | None = None,
             store_batches: Iterator[dict[str, Tensor]] | None = None) -> dict:
    """:func:`evaluate_many` for one dictionary."""
    return evaluate_many(model, [d], docs, cfg, store_batches)[0]
