"""Manifold-aware steering: linear activation addition against a step constrained to the data manifold.

A concept direction v̂ at one hook point comes from two prompt sets (unit mean(A) − mean(B) of the sentences'
mean token states) or from a dictionary feature's decoder row. Generation is steered at every position
after the document-start token (prompt and generated tokens) by one of

* ``linear``: h ← h + s·ρ·v̂ (ρ = median norm of the reference states at the point, s the step size);
* ``manifold``: the same length s·ρ travelled in ``substeps`` steps, each along v̂ projected onto the local
  tangent space (top ``tangent_dim`` principal directions of the ``neighbours`` nearest reference states)
  and followed by a retraction: the state's component normal to the local plane at its new place is shrunk
  to at most the unsteered state's own normal distance (so s = 0 leaves the model unchanged, and a step
  never leaves the data farther than the token already was).

Reference states (the "data manifold") are the kept token states at the point over ``reference_tokens``
corpus tokens plus the concept sentences. For each method and step size the continuations of a fixed prompt
set (greedy) are measured by concept strength (a logistic-regression probe trained on the concept sets at
``probe_layer``, applied to the continuation re-read by the unsteered model), fluency (perplexity of the
continuation under the unsteered model given the prompt) and off-manifold distance (mean distance of the
steered states to their ``distance_k`` nearest reference states, relative to the unsteered run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import data
from ..atomic import atomic_path, write_figure, write_json
from ..errors import GeometryError
from ..progress import bar, say
from ..validate import bounded, check, check_choice, check_number


def bundled(name: str) -> list[str]:
    """Lines of a bundled concept file (``sea``, ``other``, ``prompts``)."""
    text = resources.files("llmri.geometry").joinpath("concepts", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_lines(spec: str, minimum: int = 4) -> list[str]:
    """A bundled concept name or a text file with one sentence per line (at least ``minimum``)."""
    path = Path(spec)
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif resources.files("llmri.geometry").joinpath("concepts", f"{spec}.txt").is_file():
        lines = bundled(spec)
    else:
        raise GeometryError(f"no sentence file '{spec}'", "give a text file with one sentence per line, or one of "
                            "the bundled sets: sea, other, prompts")
    if len(lines) < minimum:
        raise GeometryError(f"'{spec}' has {len(lines)} sentences", f"give at least {minimum} (one per line)")
    return lines


METHODS = ("linear", "manifold")


@dataclass
class SteerConfig:
    """Settings of a steering comparison (``llmri geometry steer``)."""

    layer: int | None = bounded(None, 0, none=True)
    """Layer steered (None: a third of the depth); ≥ 0."""
    kind: str = "resid_post"
    """Hook-point kind steered."""
    scales: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75)
    """Step sizes s, as multiples of the median reference-state norm ρ; each finite and ≥ 0."""
    methods: tuple[str, ...] = ("linear", "manifold")
    """Methods compared (linear, manifold)."""
    neighbours: int = bounded(32, 2)
    """Reference states whose local PCA gives a tangent space; ≥ 2."""
    tangent_dim: int | None = bounded(None, 1, none=True)
    """Tangent-space dimension (None: the TwoNN ID of the reference states, rounded, at least 2); ≥ 1
    (capped at neighbours − 1)."""
    substeps: int = bounded(4, 1)
    """Tangent steps (each followed by a retraction) the manifold method splits a step into; ≥ 1."""
    reference_tokens: int = bounded(8192, 1)
    """Corpus tokens whose kept states form the reference set (plus the concept sentences); ≥ 1."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus of the reference states (its train split, 128-token windows)."""
    distance_k: int = bounded(10, 1)
    """Neighbours averaged in the off-manifold distance; ≥ 1."""
    new_tokens: int = bounded(24, 1)
    """Greedy tokens generated per prompt; ≥ 1."""
    probe_layer: int | None = bounded(None, 0, none=True)
    """Layer of the concept probe (None: two thirds of the depth); ≥ 0."""
    batch_size: int = bounded(24, 1)
    """Prompts generated at once; ≥ 1."""
    seed: int = bounded(0, 0)
    """Seeds the probe split and bootstrap; ≥ 0."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens left out of the reference states."""

    def __post_init__(self):
        check(self, GeometryError)
        for s in self.scales:
            check_number("SteerConfig.scales entry", s, 0, error=GeometryError)
        for m in self.methods:
            check_choice("steering method", m, METHODS, GeometryError)


@dataclass
class Reference:
    """The data manifold at one point: reference states and their local geometry."""

    states: Tensor
    """[N, d] float32 on the model's device."""
    neighbours: int
    """Nearest states in each local PCA."""
    tangent_dim: int
    """Principal directions kept as the local tangent space."""
    rho: float
    """Median norm of the states."""

    def knn(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        d, i = torch.cdist(x, self.states).topk(k, dim=1, largest=False)
        return d, i

    def distance(self, x: Tensor, k: int) -> Tensor:
        """Mean distance of each row to its k nearest reference states."""
        return self.knn(x, k)[0].mean(1)

    def plane(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Local PCA at each row: (basis [n, d, r], mean [n, d]) of its nearest reference states."""
        _, idx = self.knn(x, self.neighbours)
        nb = self.states[idx]
        m = nb.mean(1)
        _, _, vh = torch.linalg.svd(nb - m[:, None], full_matrices=False)
        return vh[:, : self.tangent_dim].mT, m

    @staticmethod
    def normal(x: Tensor, basis: Tensor, m: Tensor) -> Tensor:
        """Component of x − m orthogonal to the plane."""
        r = x - m
        return r - (basis @ (basis.mT @ r[..., None]))[..., 0]

    def manifold_step(self, x: Tensor, v: Tensor, length: float, substeps: int) -> Tensor:
        """Travel ``length`` along unit ``v`` projected on the local tangent space, in ``substeps`` steps, each
        followed by the retraction: the normal component at the new place is shrunk to the starting one's norm."""
        basis, m = self.plane(x)
        budget = self.normal(x, basis, m).norm(dim=-1, keepdim=True)
        for _ in range(substeps):
            u = torch.einsum("ndr,nr->nd", basis, torch.einsum("ndr,d->nr", basis, v))  # v on each tangent space
            x = x + (length / substeps) * u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            basis, m = self.plane(x)
            r = self.normal(x, basis, m)
            x = x - (1 - budget / r.norm(dim=-1, keepdim=True).clamp_min(1e-8)).clamp_min(0) * r
        return x


class Steerer:
    """Edit at the steered point: applies a method to every steerable position and records distances."""

    def __init__(self, ref: Reference, v: Tensor, length: float, method: str, substeps: int, distance_k: int):
        self.ref, self.v, self.length, self.method = ref, v, length, method
        self.substeps, self.distance_k = substeps, distance_k
        self.prefill_mask: Tensor | None = None
        self.distances: list[Tensor] = []

    def __call__(self, h: Tensor) -> Tensor:
        sel = self.prefill_mask if h.shape[1] > 1 else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        x = h[sel].float()
        if self.length and self.method == "linear":
            x = x + self.length * self.v
        elif self.length and self.method == "manifold":
            x = self.ref.manifold_step(x, self.v, self.length, self.substeps)
        self.distances.append(self.ref.distance(x, self.distance_k).cpu())
        out = h.clone()
        out[sel] = x.to(h.dtype)
        return out


# ---------------------------------------------------------------- states, direction, probe


def sentence_means(model, sentences: list[str], point: str) -> Tensor:
    """[n, d] mean state of each sentence over its tokens after the document-start token."""
    batch = model.tokenize(sentences)
    got = model.capture(batch.input_ids.to(model.device), [point], attention_mask=batch.attention_mask.to(model.device))[point].float()
    mask = batch.attention_mask.to(got.device).clone().float()
    mask[:, 0] = 0
    return (got * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def concept_direction(model, point: str, positive: list[str], negative: list[str]) -> tuple[Tensor, float]:
    """Unit mean(A) − mean(B) of sentence-mean states, and the norm of the difference."""
    diff = sentence_means(model, positive, point).mean(0) - sentence_means(model, negative, point).mean(0)
    return diff / diff.norm(), float(diff.norm())


def reference_states(model, point: str, tokens: int, corpus: str, extra: list[str],
                     exclusion: data.Exclusion | None = None) -> Tensor:
    exclusion = exclusion or data.Exclusion()
    docs = data.load_corpus(corpus)
    rows = []
    spec = data.WindowSpec(context=128, split="train")
    for kb in data.kept_activations(model, docs, [point], windows=spec, batch_size=16, exclusion=exclusion,
                                    limit_tokens=tokens):
        rows.append(kb.rows(point).float())
    b = model.tokenize(extra)
    got = model.capture(b.input_ids.to(model.device), [point], attention_mask=b.attention_mask.to(model.device))[point]
    keep = data.token_mask(b.input_ids, model.special_ids, exclusion) & b.attention_mask.bool()
    rows.append(got[keep.to(got.device)].float())
    return torch.cat(rows)


@dataclass
class Probe:
    """Logistic regression on sentence-mean states at ``point``: P(concept A | text)."""

    point: str
    model: object
    accuracy: float
    """Held-out accuracy (every other sentence held out)."""
    n_test: int

    def score(self, lm, texts_ids: list[list[int]]) -> np.ndarray:
        means = []
        for ids in texts_ids:
            x = lm.capture(torch.tensor([[lm.bos_id, *ids]], device=lm.device), [self.point])[self.point][0, 1:].float()
            means.append(x.mean(0).cpu().numpy())
        return self.model.predict_proba(np.stack(means))[:, 1]


def train_probe(model, point: str, positive: list[str], negative: list[str]) -> Probe:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = torch.cat([sentence_means(model, positive, point), sentence_means(model, negative, point)]).cpu().numpy()
    y = np.array([1] * len(positive) + [0] * len(negative))
    test = np.arange(len(y)) % 2 == 1
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    acc = float(clf.fit(X[~test], y[~test]).score(X[test], y[test]))
    clf.fit(X, y)
    return Probe(point, clf, acc, int(test.sum()))


# ---------------------------------------------------------------- generation and scoring


def left_padded(model, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention mask, steer mask) of left-padded prompts; the steer mask is False on padding, the
    document-start token and other special tokens."""
    b = model.tokenize(prompts, pad_left=True)
    steer = b.attention_mask.bool() & ~torch.isin(b.input_ids, torch.tensor(sorted(model.special_ids)))
    return b.input_ids, b.attention_mask, steer


def continuation_nll(model, prompt_ids: list[int], cont: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ``cont`` given the prompt under the (unsteered) model."""
    ids = torch.tensor([prompt_ids + cont], device=model.device)
    logits = model.hf(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(cont, device=model.device), reduction="sum")
    return float(nll), len(cont)


def _bootstrap_mean(v: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n)]
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass
class SteerResult:
    model: str
    point: str
    config: SteerConfig
    direction_source: str
    direction_norm: float | None
    """‖mean(A) − mean(B)‖ (None for a feature direction)."""
    rho: float
    tangent_dim: int
    reference_states: int
    probe_point: str
    probe_accuracy: float
    probe_test: int
    prompts: int
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = asdict(self)
        out["verdict"] = verdict(self.rows)
        return out

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        with atomic_path(out, directory=True, kind="steering comparison") as tmp:
            write_json(tmp / "steer.json", self.summary())
            write_figure(tmp / "steer.png", plot(self))
        return out


def verdict(rows: list[dict], budgets: tuple[float, ...] = (1.25, 1.5, 2.0)) -> list[dict]:
    """Per fluency budget (perplexity ≤ budget × unsteered): each method's best concept score within it."""
    base = next((r for r in rows if r["scale"] == 0), None)
    if base is None:
        return []
    out = []
    for b in budgets:
        entry = {"ppl_budget": b, "unsteered_concept": base["concept"]}
        for m in sorted({r["method"] for r in rows if r["scale"] > 0}):
            ok = [r for r in rows if r["method"] == m and r["ppl"] <= b * base["ppl"]]
            best = max(ok, key=lambda r: r["concept"], default=None)
            entry[m] = None if best is None else {"concept": best["concept"], "scale": best["scale"], "ppl": best["ppl"]}
        out.append(entry)
    return out


def steer_compare(model, cfg: SteerConfig | None = None, *, positive: list[str] | None = None,
                  negative: list[str] | None = None, prompts: list[str] | None = None,
                  direction: Tensor | None = None, direction_source: str = "") -> SteerResult:
    """Sweep step sizes for each method and measure concept strength, fluency and off-manifold distance."""
    cfg = cfg or SteerConfig()
    positive = positive or bundled("sea")
    negative = negative or bundled("other")
    prompts = prompts or bundled("prompts")
    layer = model.n_layers // 3 if cfg.layer is None else cfg.layer
    probe_layer = (2 * model.n_layers) // 3 if cfg.probe_layer is None else cfg.probe_layer
    for name, l in (("layer", layer), ("probe layer", probe_layer)):
        if not 0 <= l < model.n_layers:
            raise GeometryError(f"{name} {l} does not exist in {model.name}", f"choose 0..{model.n_layers - 1}")
    point = model.resolve(f"{cfg.kind}.{layer}")
    with torch.no_grad():
        if direction is None:
            v, dnorm = concept_direction(model, point, positive, negative)
            direction_source = direction_source or f"mean({len(positive)} A) − mean({len(negative)} B) sentences"
        else:
            if direction.shape != (model.d_model,):
                raise GeometryError(f"direction has shape {tuple(direction.shape)}", f"give a vector of {model.d_model}")
            v, dnorm = (direction.float() / direction.float().norm()).to(model.device), None
        say(f"steer: reference states at {point} ({cfg.reference_tokens:,} corpus tokens + concept sentences)")
        states = reference_states(model, point, cfg.reference_tokens, cfg.corpus, positive + negative, cfg.exclusion)
        rho = float(states.norm(dim=1).median())
        tdim = cfg.tangent_dim
        if tdim is None:
            from .intrinsic import twonn

            tdim = max(2, round(twonn(states.cpu().numpy(), n_boot=1).d))
        ref = Reference(states, min(cfg.neighbours, len(states) - 1), min(tdim, cfg.neighbours - 1), rho)
        probe = train_probe(model, model.resolve(f"resid_post.{probe_layer}"), positive, negative)
        say(f"steer: probe at resid_post.{probe_layer}: held-out accuracy {probe.accuracy:.2f} (n={probe.n_test}); "
            f"tangent dim {ref.tangent_dim}, ρ = {rho:.1f}")
        result = SteerResult(model.name, point, cfg, direction_source, dnorm, rho, ref.tangent_dim, len(states),
                             probe.point, probe.accuracy, probe.n_test, len(prompts))
        runs = [("none", 0.0)] + [(m, s) for m in cfg.methods for s in cfg.scales if s > 0]
        base_distance = None
        with bar("steering sweep", total=len(runs), unit="runs") as b:
            for method, s in runs:
                row = run_one(model, point, ref, v, method, s, prompts, probe, cfg)
                if base_distance is None:
                    base_distance = row["distance"]
                row["distance_ratio"] = row["distance"] / base_distance
                result.rows.append(row)
                b.advance(1)
    return result


def run_one(model, point: str, ref: Reference, v: Tensor, method: str, scale: float, prompts: list[str],
            probe: Probe, cfg: SteerConfig) -> dict:
    steerer = Steerer(ref, v, scale * ref.rho, method, cfg.substeps, cfg.distance_k)
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else model.bos_id
    conts, prompt_ids = [], []
    for i in range(0, len(prompts), cfg.batch_size):
        ids, mask, steer_mask = left_padded(model, prompts[i : i + cfg.batch_size])
        steerer.prefill_mask = steer_mask.to(model.device)
        with model.intervene({point: steerer}):
            out = model.hf.generate(ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
                                    max_new_tokens=cfg.new_tokens, pad_token_id=pad)
        for r in range(len(ids)):
            cont = out[r, ids.shape[1]:].tolist()
            stop = next((j for j, t in enumerate(cont) if t in model.special_ids), len(cont))
            conts.append(cont[:stop] or [pad])
            prompt_ids.append(ids[r][mask[r].bool()].tolist())
    nll = np.array([continuation_nll(model, p, c) for p, c in zip(prompt_ids, conts)])
    concept = probe.score(model, conts)
    ppl_per = np.exp(nll[:, 0] / nll[:, 1])
    lo, hi = _bootstrap_mean(concept, cfg.seed)
    dist = float(torch.cat(steerer.distances).mean())
    rng = np.random.default_rng(cfg.seed)
    boots = [nll[idx, 0].sum() / nll[idx, 1].sum() for idx in (rng.integers(0, len(nll), len(nll)) for _ in range(1000))]
    return {"method": method, "scale": scale, "step_norm": scale * ref.rho, "concept": float(concept.mean()),
            "concept_lo": lo, "concept_hi": hi, "ppl": float(np.exp(nll[:, 0].sum() / nll[:, 1].sum())),
            "ppl_lo": float(np.exp(np.quantile(boots, 0.025))), "ppl_hi": float(np.exp(np.quantile(boots, 0.975))),
            "median_prompt_ppl": float(np.median(ppl_per)), "distance": dist, "tokens": int(nll[:, 1].sum()),
            "examples": [tok.decode(c) for c in conts[:3]]}


def plot(result: SteerResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    base = rows[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m, colour in (("linear", "tab:red"), ("manifold", "tab:blue")):
        rs = [base] + [r for r in rows if r["method"] == m]
        if len(rs) == 1:
            continue
        s = [r["scale"] for r in rs]
        ppl = [r["ppl"] for r in rs]
        c = np.array([r["concept"] for r in rs])
        cerr = np.array([[r["concept"] - r["concept_lo"] for r in rs], [r["concept_hi"] - r["concept"] for r in rs]])
        axes[0].errorbar(ppl, c, yerr=cerr, fmt="o-", color=colour, ms=4, capsize=2, label=m)
        for x, y, sc in zip(ppl, c, s):
            axes[0].annotate(f"{sc:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes[1].errorbar(s, c, yerr=cerr, fmt="o-", color=colour, ms=4, capsize=2, label=m)
        axes[2].plot(s, [r["distance_ratio"] for r in rs], "o-", color=colour, ms=4, label=m)
    axes[0].set_xscale("log"), axes[0].set_xlabel("perplexity of continuation (unsteered model)")
    axes[0].set_ylabel("concept probe P(A)"), axes[0].set_title("trade-off (labels: step size s)")
    axes[1].set_xlabel("step size s (× median state norm)"), axes[1].set_ylabel("concept probe P(A)")
    axes[1].set_title("concept strength")
    axes[2].set_xlabel("step size s"), axes[2].set_ylabel("kNN distance / unsteered"), axes[2].set_title("off-manifold distance")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"steering at {result.point}: {result.prompts} prompts × ≤{result.config.new_tokens} greedy tokens; "
                 f"probe at {result.probe_point} (held-out acc {result.probe_accuracy:.2f}, n={result.probe_test}); "
                 f"tangent dim {result.tangent_dim}, {result.reference_states:,} reference states", fontsize=9)
    fig.tight_layout()
    return fig
