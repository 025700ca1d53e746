"""Feature statistics of a dictionary in one streaming pass over a corpus, with bounded memory.

Per feature (latent; a CLT's are numbered layer-major, ``layer · n + i``):

* density (fraction of kept tokens where it is active) and mean activation when active;
* an exact histogram of its nonzero activations in fixed log10 bins (no second pass for the range);
* the ``top_k`` windows with the highest maximum activation, each stored as a context of ``before`` tokens
  before the window's max token and ``after`` after it, with the feature's activation on every token;
* a uniform random sample of ``samples`` windows where it is active (bottom-k of random keys, i.e. a
  reservoir sample in one pass), stored the same way, from which examples by activation quantile are drawn;
* its most co-occurring features (Jaccard index of the token sets where both are active) over the first
  ``cooc_tokens`` kept tokens;
* the top and bottom logit effects of its decoder vector through the final norm and the unembedding.

Tokens excluded by :class:`llmri.data.Exclusion` (position 0, special tokens, norm outliers) are never
encoded: their activations are 0 and they count towards nothing, though they still show in contexts.
Memory is O(features × (top_k + samples) × context) plus one dense [windows, context, features] batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import data
from ..atomic import atomic_path, write_json
from ..dictionaries.config import DictionaryError
from ..dictionaries.evaluate import active_entries
from ..progress import bar
from ..validate import bounded, check, check_choice, check_number

STATS_FILE = "features.safetensors"
META_FILE = "features.json"


@dataclass
class FeatureConfig:
    """What the statistics pass keeps per feature."""

    tokens: int = bounded(65_536, 1)
    """Corpus tokens to read (whole windows, before exclusion); ≥ 1."""
    context: int = bounded(128, 2)
    """Window length; ≥ 2."""
    batch_size: int = bounded(16, 1)
    """Windows per LM forward; ≥ 1."""
    split: str = "all"
    """Corpus split read (``train``, ``eval`` or ``all``)."""
    top_k: int = bounded(20, 1)
    """Top-activating windows kept per feature; ≥ 1."""
    samples: int = bounded(40, 1)
    """Windows sampled uniformly among those where the feature is active (for quantile examples); ≥ 1."""
    before: int = bounded(16, 0)
    """Context tokens kept before each example's max token; ≥ 0."""
    after: int = bounded(8, 0)
    """Context tokens kept after it; ≥ 0."""
    hist_range: tuple[float, float] = (-4.0, 4.0)
    """log10 range of the activation histogram (values outside go to the under/overflow bins); finite, lo < hi."""
    hist_bins: int = bounded(64, 1)
    """Bins of the activation histogram; ≥ 1."""
    cooc_tokens: int = bounded(131_072, 1)
    """Kept tokens (the first ones read) over which co-occurrence is counted; ≥ 1."""
    neighbours: int = bounded(10, 1)
    """Co-occurring features kept per feature; ≥ 1."""
    logits: int = bounded(10, 1)
    """Top and bottom logit effects kept per feature; ≥ 1."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens never encoded."""
    seed: int = bounded(0, 0)
    """Seeds the corpus order and the random sample; ≥ 0."""
    max_floats: int = bounded(1 << 25, 1)
    """Bound on one dense activation batch (windows × context × features), for wide dictionaries; ≥ 1."""

    def __post_init__(self):
        check(self, DictionaryError)
        check_choice("split", self.split, data.SPLITS, DictionaryError)
        r = self.hist_range
        if not isinstance(r, (tuple, list)) or len(r) != 2:
            raise DictionaryError(f"FeatureConfig.hist_range must be a (lo, hi) pair, got {r!r}", "use e.g. (-4.0, 4.0)")
        check_number("FeatureConfig.hist_range[0]", r[0], error=DictionaryError)
        check_number("FeatureConfig.hist_range[1]", r[1], r[0], lo_open=True, error=DictionaryError)

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


class Windows(NamedTuple):
    """A batch for the statistics pass: token ids, a dictionary's input activations and the kept mask."""

    tokens: Tensor
    """[B, T] token ids."""
    acts: dict[str, Tensor]
    """{point: [B, T, d]} raw model activations."""
    keep: Tensor
    """[B, T] bool: tokens that are encoded (the rest count as inactive)."""


class Examples(NamedTuple):
    """Per feature, up to ``size`` windows: slot-major tensors [size, n, ...] (empty slots have value −inf)."""

    value: Tensor
    """[size, n] the window's max activation (−inf: empty slot)."""
    acts: Tensor
    """[size, n, width] activation on each context token (max token at index ``before``)."""
    tokens: Tensor
    """[size, n, width] token ids (−1 beyond the window)."""
    window: Tensor
    """[size, n] global window number."""


# ---------------------------------------------------------------- the streaming accumulator


class _ExampleBuffer:
    """Keeps, per feature, the ``size`` windows with the highest score and their contexts."""

    def __init__(self, size: int, n: int, cfg: FeatureConfig, device):
        self.size, self.cfg = size, cfg
        self.score = torch.full((size, n), -math.inf, device=device)
        self.ex = Examples(torch.full((size, n), -math.inf, device=device),
                           torch.zeros(size, n, cfg.width, dtype=torch.float16, device=device),
                           torch.full((size, n, cfg.width), -1, dtype=torch.int32, device=device),
                           torch.full((size, n), -1, dtype=torch.long, device=device))

    def offer(self, score: Tensor, A: Tensor, tokens: Tensor, wmax: Tensor, wpos: Tensor, first_window: int) -> None:
        """``score`` [B, n] (−inf: not a candidate); ``A`` [B, T, n] activations; ``wmax``/``wpos`` [B, n].

        Slots are unordered: a candidate that makes a feature's best ``size`` overwrites a slot that no
        longer does, so the work (and the context gathering) is proportional to the entries that change."""
        B, T, n = A.shape
        s, w = score.topk(min(self.size, B), dim=0)  # the batch's best candidates per feature [m, n]
        both = torch.cat([self.score, s])
        chosen = torch.zeros_like(both, dtype=torch.bool).scatter_(0, both.topk(self.size, dim=0).indices, True)
        chosen &= both > -math.inf
        f_in, c_in = chosen[self.size :].t().nonzero(as_tuple=True)  # entering (feature, candidate), by feature
        if not len(f_in):
            return
        f_out, s_out = (~chosen[: self.size]).t().nonzero(as_tuple=True)  # free slots (feature, slot), by feature
        need = torch.bincount(f_in, minlength=n)
        keep = _rank(f_out, n) < need[f_out]  # as many free slots per feature as entering candidates
        f_out, s_out = f_out[keep], s_out[keep]
        wq = w[c_in, f_in]
        pos = wpos[wq, f_in].unsqueeze(-1) - self.cfg.before + torch.arange(self.cfg.width, device=A.device)
        inside = (pos >= 0) & (pos < T)
        pos_c = pos.clamp(0, T - 1)
        self.score[s_out, f_out] = s[c_in, f_in]
        self.ex.value[s_out, f_out] = wmax[wq, f_in]
        self.ex.window[s_out, f_out] = wq + first_window
        self.ex.acts[s_out, f_out] = A[wq.unsqueeze(-1), pos_c, f_in.unsqueeze(-1)].masked_fill(~inside, 0).to(torch.float16)
        self.ex.tokens[s_out, f_out] = tokens[wq.unsqueeze(-1), pos_c].masked_fill(~inside, -1).to(torch.int32)

    def result(self) -> Examples:
        """The slots sorted best first per feature (empty ones last)."""
        order = self.score.argsort(dim=0, descending=True, stable=True)
        return Examples(*(_take(t, order).cpu() for t in self.ex))


def _rank(groups: Tensor, n: int) -> Tensor:
    """Position of each entry within its group, for entries sorted by group."""
    counts = torch.bincount(groups, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(groups), device=groups.device) - starts[groups]


def _take(t: Tensor, order: Tensor) -> Tensor:
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return t.gather(0, index)


class _Accumulator:
    def __init__(self, n: int, cfg: FeatureConfig, device):
        self.n, self.cfg = n, cfg
        self.counts = torch.zeros(n, dtype=torch.long, device=device)
        self.act_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.hist_edges = torch.linspace(*cfg.hist_range, cfg.hist_bins + 1, device=device)
        self.hist = torch.zeros(n * (cfg.hist_bins + 2), dtype=torch.long, device=device)
        self.top = _ExampleBuffer(cfg.top_k, n, cfg, device)
        self.sample = _ExampleBuffer(cfg.samples, n, cfg, device)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.cooc_rows: list[np.ndarray] = []
        self.cooc_cols: list[np.ndarray] = []
        self.cooc_seen = 0
        self.tokens = self.windows = 0

    def update(self, tokens: Tensor, keep: Tensor, rows: Tensor, feats: Tensor, vals: Tensor) -> None:
        """One batch: ``rows`` index the kept tokens (in ``keep.nonzero()`` order), ``feats``/``vals`` the
        active features there (vals > 0)."""
        cfg, n = self.cfg, self.n
        B, T = tokens.shape
        where = keep.nonzero()
        b, t = where[rows, 0], where[rows, 1]
        self.counts += torch.bincount(feats, minlength=n)
        self.act_sum.index_add_(0, feats, vals.double())
        bins = torch.bucketize(vals.log10(), self.hist_edges)  # 0: underflow, hist_bins + 1: overflow
        self.hist += torch.bincount(feats * (cfg.hist_bins + 2) + bins, minlength=self.hist.numel())
        if self.cooc_seen < cfg.cooc_tokens:
            take = rows < cfg.cooc_tokens - self.cooc_seen
            self.cooc_rows.append((rows[take] + self.cooc_seen).cpu().numpy().astype(np.int64))
            self.cooc_cols.append(feats[take].cpu().numpy().astype(np.int64))
            self.cooc_seen += min(int(keep.sum()), cfg.cooc_tokens - self.cooc_seen)
        A = torch.zeros(B, T, n, device=vals.device)
        A[b, t, feats] = vals
        wmax, wpos = A.max(dim=1)
        active = wmax > 0
        self.top.offer(wmax.masked_fill(~active, -math.inf), A, tokens, wmax, wpos, self.windows)
        keys = torch.rand(B, n, generator=self.gen, device=vals.device)
        self.sample.offer((-keys).masked_fill(~active, -math.inf), A, tokens, wmax, wpos, self.windows)
        self.tokens += int(keep.sum())
        self.windows += B


# ---------------------------------------------------------------- the result


@dataclass
class FeatureStats:
    """Everything the dashboards show, for every feature of one dictionary."""

    meta: dict
    """Dictionary name, points, features per layer, model, corpus, exclusion, tokens, config."""
    counts: Tensor
    """[n] kept tokens on which the feature is active."""
    act_sum: Tensor
    """[n] sum of its activations there."""
    hist: Tensor
    """[n, bins + 2] counts of nonzero activations per log10 bin (first/last: under/overflow)."""
    hist_edges: Tensor
    """[bins + 1] log10 bin edges."""
    top: Examples
    samples: Examples
    neighbours: Tensor
    """[n, m] most co-occurring features (−1: none)."""
    jaccard: Tensor
    """[n, m] their Jaccard index."""
    logit_top: tuple[Tensor, Tensor]
    """([n, l] token ids, [n, l] effects) with the largest logit effect."""
    logit_bottom: tuple[Tensor, Tensor]
    """The same for the most negative effects."""
    logit_hist: Tensor
    """[n, bins] histogram of the logit effects over the whole vocabulary, in equal bins over ``logit_range``."""
    logit_range: Tensor
    """[n, 2] (min, max) logit effect of each feature."""

    @property
    def n(self) -> int:
        return len(self.counts)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["tokens"])

    @property
    def density(self) -> Tensor:
        return self.counts.double() / max(self.n_tokens, 1)

    @property
    def max_activation(self) -> Tensor:
        return self.top.value[0].clamp_min(0)

    @property
    def mean_activation(self) -> Tensor:
        return self.act_sum / self.counts.clamp_min(1)

    def name(self, i: int) -> str:
        """``L{layer}/{index}`` for a CLT's features, the plain index otherwise."""
        per = self.meta.get("features_per_layer")
        return f"L{self.meta['layers'][i // per]}/{i % per}" if per else str(i)

    def _arrays(self, which: str) -> Examples:
        """The example buffers as numpy arrays (converted once: per-feature access is then cheap)."""
        cache = self.__dict__.setdefault("_numpy", {})
        if which not in cache:
            ex = self.top if which == "top" else self.samples
            cache[which] = Examples(ex.value.numpy(), round_sig(ex.acts.float().numpy(), 4), ex.tokens.numpy(),
                                    ex.window.numpy())
        return cache[which]

    def examples(self, i: int, which: str = "top") -> list[dict]:
        """Examples of feature ``i`` (``top`` or ``samples``), best first: value, window, tokens, acts (4
        significant digits), and the index of the max token in ``tokens``."""
        value, acts, tokens, window = (a[:, i] for a in self._arrays(which))
        before = self.meta["before"]
        out = []
        for s in np.argsort(-value, kind="stable"):
            if value[s] == -math.inf:
                break
            valid = tokens[s] >= 0
            out.append({"value": float(value[s]), "window": int(window[s]), "tokens": tokens[s][valid].tolist(),
                        "acts": acts[s][valid].tolist(),
                        "max_index": int(before - np.count_nonzero(~valid[:before]))})
        return out

    def quantile_groups(self, i: int, groups: int = 5, per_group: int = 5) -> list[dict]:
        """The sampled examples split into ``groups`` equal-count activation quantiles (highest first)."""
        ex = self.examples(i, "samples")
        if not ex:
            return []
        chunks = np.array_split(np.arange(len(ex)), min(groups, len(ex)))
        out = []
        for j, idx in enumerate(chunks):
            part = [ex[k] for k in idx]
            lo, hi = part[-1]["value"], part[0]["value"]
            q_hi, q_lo = 1 - j / len(chunks), 1 - (j + 1) / len(chunks)
            out.append({"quantile": [round(q_lo, 3), round(q_hi, 3)], "range": [lo, hi],
                        "examples": part[: per_group]})
        return out

    def histogram(self, i: int) -> tuple[list[float], list[int]]:
        """(log10 bin centres, counts) of feature ``i``'s nonzero activations, under/overflow folded in."""
        h = self.hist[i].clone()
        h[1] += h[0]
        h[-2] += h[-1]
        centres = ((self.hist_edges[1:] + self.hist_edges[:-1]) / 2).tolist()
        return centres, h[1:-1].tolist()

    def save(self, folder: str | Path) -> Path:
        """Write ``features.safetensors`` + ``features.json`` into ``folder`` (atomically, as a whole)."""
        tensors = {"counts": self.counts, "act_sum": self.act_sum, "hist": self.hist, "hist_edges": self.hist_edges,
                   "neighbours": self.neighbours, "jaccard": self.jaccard, "logit_top_ids": self.logit_top[0],
                   "logit_top_vals": self.logit_top[1], "logit_bottom_ids": self.logit_bottom[0],
                   "logit_bottom_vals": self.logit_bottom[1], "logit_hist": self.logit_hist,
                   "logit_range": self.logit_range}
        for prefix, ex in (("top", self.top), ("samples", self.samples)):
            tensors |= {f"{prefix}.{k}": v for k, v in ex._asdict().items()}
        with atomic_path(folder, directory=True, kind="features") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATS_FILE))
            write_json(tmp / META_FILE, self.meta)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> FeatureStats:
        folder = Path(folder)
        if not (folder / STATS_FILE).exists() or not (folder / META_FILE).exists():
            raise DictionaryError(f"no feature statistics in {folder}", "compute them with `llmri dashboard DICT`")
        t = load_file(str(folder / STATS_FILE))
        ex = {p: Examples(*(t[f"{p}.{k}"] for k in Examples._fields)) for p in ("top", "samples")}
        return cls(json.loads((folder / META_FILE).read_text()), t["counts"], t["act_sum"], t["hist"], t["hist_edges"],
                   ex["top"], ex["samples"], t["neighbours"], t["jaccard"], (t["logit_top_ids"], t["logit_top_vals"]),
                   (t["logit_bottom_ids"], t["logit_bottom_vals"]), t["logit_hist"], t["logit_range"])


def round_sig(a: np.ndarray, digits: int) -> np.ndarray:
    """Round to ``digits`` significant digits (vectorised; zeros and non-finite values pass through)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where((a != 0) & np.isfinite(a), np.floor(np.log10(np.abs(a))), 0)
    scale = 10.0 ** (digits - 1 - mag)
    return np.where(np.isfinite(a), np.round(a * scale) / scale, a)


# ---------------------------------------------------------------- encoding


def encode_rows(d, acts: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Active features of raw activations ``{point: [N, d]}``: (rows, features, values), values > 0."""
    return active_entries(d, d.encode(d.inputs(acts)))


# ---------------------------------------------------------------- sources of windows


def model_windows(model, docs: list[data.Document], points: list[str], cfg: FeatureConfig) -> Iterator[Windows]:
    """Windows of a corpus run through the model, with the exclusion rule applied at every point."""
    spec = data.WindowSpec(context=cfg.context, split=cfg.split, seed=cfg.seed)
    for kb in data.kept_activations(model, docs, points, windows=spec, batch_size=cfg.batch_size,
                                    exclusion=cfg.exclusion, limit_tokens=cfg.tokens):
        yield Windows(kb.tokens.to(model.device), kb.acts, kb.keep)


def row_windows(tokens: Tensor, keep: Tensor, rows: dict[str, Tensor], batch_size: int = 16) -> Iterator[Windows]:
    """Windows rebuilt from kept rows (as the scan's statistics pass collects them): ``tokens``/``keep``
    [W, T], ``rows`` {point: [keep.sum(), d]} in ``keep.nonzero()`` order."""
    offsets = torch.cumsum(keep.sum(1), 0) - keep.sum(1)
    for s in range(0, len(tokens), batch_size):
        k = keep[s : s + batch_size]
        lo = int(offsets[s])
        hi = lo + int(k.sum())
        acts = {}
        for p, r in rows.items():
            full = torch.zeros(*k.shape, r.shape[-1], dtype=r.dtype, device=r.device)
            full[k] = r[lo:hi]
            acts[p] = full
        yield Windows(tokens[s : s + batch_size], acts, k)


# ---------------------------------------------------------------- the pass


def collect(d, windows: Iterable[Windows], cfg: FeatureConfig | None = None, *, model=None, total_tokens: int | None = None,
            meta: dict | None = None, logit_features: Tensor | None = None) -> FeatureStats:
    """Statistics of every feature of dictionary ``d`` over ``windows`` (see the module docstring).
    ``model`` (the LM the dictionary belongs to) is needed for the logit effects; without it they are empty.
    ``logit_features``: compute the logit effects of these features only (the rest get none: zero ids and
    values) — for one-off statistics that are read for a few features and never saved."""
    cfg = cfg or FeatureConfig()
    n = d.n_latents
    device = next(d.parameters()).device
    acc = _Accumulator(n, cfg, device)
    points = list(d.cfg.in_points)
    with torch.no_grad(), bar("feature statistics", total=total_tokens, unit="tokens") as progress:
        for w in windows:
            B, T = w.tokens.shape
            step = max(1, cfg.max_floats // (T * n))  # windows per dense batch
            for s in range(0, B, step):
                keep = w.keep[s : s + step].to(device)
                x = {p: w.acts[p][s : s + step].to(device)[keep].float() for p in points}
                rows, feats, vals = encode_rows(d, x)
                acc.update(w.tokens[s : s + step].to(device), keep, rows, feats, vals)
            progress.advance(w.tokens.numel())
    if acc.windows == 0:
        raise DictionaryError("no windows to compute feature statistics on", "use a larger corpus or more --tokens")
    neighbours, jaccard = cooccurrence(acc, cfg.neighbours)
    logits = (LogitEffects.empty(n) if model is None else logit_effects(model, d, cfg.logits) if logit_features is None
              else logit_effects(model, d, cfg.logits, features=logit_features))
    info = {**d.describe(), "tokens": acc.tokens, "windows": acc.windows, "cooc_tokens": acc.cooc_seen,
            "exclusion": cfg.exclusion.describe(), "before": cfg.before, "after": cfg.after,
            "config": {k: v for k, v in asdict(cfg).items() if k != "exclusion"}, **(meta or {})}
    info = json.loads(json.dumps(info))  # the same plain-JSON values as after a save/load
    return FeatureStats(info, acc.counts.cpu(), acc.act_sum.cpu(), acc.hist.view(n, -1).cpu(), acc.hist_edges.cpu(),
                        acc.top.result(), acc.sample.result(),
                        neighbours, jaccard, logits.top, logits.bottom, logits.hist, logits.range)


def cooccurrence(acc: _Accumulator, m: int) -> tuple[Tensor, Tensor]:
    """Top-``m`` features by Jaccard index |i ∧ j| / |i ∨ j| over the co-occurrence sample."""
    import scipy.sparse as sps

    n = acc.n
    rows = np.concatenate(acc.cooc_rows) if acc.cooc_rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(acc.cooc_cols) if acc.cooc_cols else np.zeros(0, dtype=np.int64)
    B = sps.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(max(acc.cooc_seen, 1), n))
    C = (B.T @ B).tocsr()
    c = np.asarray(C.diagonal())
    idx = np.full((n, m), -1, dtype=np.int64)
    jac = np.zeros((n, m), dtype=np.float32)
    for i in range(n):
        lo, hi = C.indptr[i], C.indptr[i + 1]
        j, both = C.indices[lo:hi], C.data[lo:hi]
        other = j != i
        j, both = j[other], both[other]
        if not len(j):
            continue
        score = both / (c[i] + c[j] - both)
        best = np.argsort(-score, kind="stable")[:m]
        idx[i, : len(best)], jac[i, : len(best)] = j[best], score[best]
    return torch.from_numpy(idx), torch.from_numpy(jac)


class LogitEffects(NamedTuple):
    top: tuple[Tensor, Tensor]
    """([n, count] token ids, [n, count] effects), largest first."""
    bottom: tuple[Tensor, Tensor]
    """The most negative, most negative first."""
    hist: Tensor
    """[n, bins] histogram of the effects over the vocabulary."""
    range: Tensor
    """[n, 2] its (min, max)."""

    @classmethod
    def empty(cls, n: int) -> LogitEffects:
        none = (torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0))
        return cls(none, none, torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 2))


@torch.no_grad()
def logit_effects(model, d, count: int = 10, bins: int = 32, chunk: int = 1024, *,
                  features: Tensor | None = None) -> LogitEffects:
    """Logit effect of each feature's direction w: W_U · norm(w) − W_U · norm(0), with w scaled to unit RMS
    (the norm's linear part with its denominator fixed; a positive rescaling does not change rankings or
    the histogram's shape). ``features``: only these rows are computed; the others stay zero."""
    norm = model.site("final_norm").module
    W_U = model.hf.get_output_embeddings().weight
    dirs = d.decoder_directions()
    n = len(dirs)
    if dirs.shape[1] != W_U.shape[1]:
        return LogitEffects.empty(n)
    if features is not None:
        some = logit_effects(model, _Rows(dirs[features]), count, bins, chunk)
        full = LogitEffects((torch.zeros(n, count, dtype=torch.long), torch.zeros(n, count)),
                            (torch.zeros(n, count, dtype=torch.long), torch.zeros(n, count)),
                            torch.zeros(n, bins, dtype=torch.long), torch.zeros(n, 2))
        for mine, theirs in zip((*full.top, *full.bottom, full.hist, full.range), (*some.top, *some.bottom, some.hist, some.range)):
            mine[features.cpu()] = theirs.to(mine.dtype)
        return full
    zero = norm(torch.zeros(1, dirs.shape[1], device=W_U.device, dtype=W_U.dtype)).float()
    parts = []
    for s in range(0, n, chunk):
        v = dirs[s : s + chunk].to(W_U.device, W_U.dtype)
        v = v / v.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        eff = (norm(v).float() - zero) @ W_U.float().t()
        top, bot = eff.topk(count, dim=1), (-eff).topk(count, dim=1)
        lo, hi = eff.min(1, keepdim=True).values, eff.max(1, keepdim=True).values
        which = eff.sub_(lo).mul_(bins / (hi - lo).clamp_min(1e-12)).clamp_(0, bins - 1).long()  # eff is spent here
        which += torch.arange(len(v), device=which.device).unsqueeze(1) * bins
        hist = torch.bincount(which.flatten(), minlength=len(v) * bins).view(len(v), bins)
        parts.append((top.indices, top.values, bot.indices, -bot.values, hist, torch.cat([lo, hi], 1)))
    cols = [torch.cat(c).cpu() for c in zip(*parts)]
    return LogitEffects((cols[0], cols[1]), (cols[2], cols[3]), cols[4], cols[5])


class _Rows(NamedTuple):
    """Given decoder directions, standing in for a dictionary in :func:`logit_effects`."""

    rows: Tensor

    def decoder_directions(self) -> Tensor:
        return self.rows


def feature_stats(model, d, docs: list[data.Document], cfg: FeatureConfig | None = None, *, meta: dict | None = None) -> FeatureStats:
    """The statistics pass over a corpus with the live model (one forward per batch, early exit after the
    dictionary's deepest input point)."""
    cfg = cfg or FeatureConfig()
    n_windows = max(1, cfg.tokens // cfg.context)
    windows = model_windows(model, docs, list(d.cfg.in_points), cfg)
    return collect(d, windows, cfg, model=model, total_tokens=n_windows * cfg.context,
                   meta={"model": model.name, **(meta or {})})
