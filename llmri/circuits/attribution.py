"""Attribution graphs: direct linear effects between the nodes of a prompt's replacement model.

Nodes, in this order (circuit-tracer's): selected features, error nodes (layer-major, one per (layer,
position)), token embeddings (one per position), logits (last position). ``adjacency[target, source]`` is
the direct effect of the source on the target's pre-activation (a feature's encoder input, or a logit minus
the mean logit): source activation × gradient through the frozen, linear replacement model. Error and token
nodes have no inputs.

Rows are computed with batched backward passes: the replacement model runs once on ``batch_size`` copies of
the prompt with the graph kept, and each backward pass injects one target per copy. Logit rows come first;
then feature rows in the order of their current influence on the logits (re-estimated after every batch),
up to ``max_feature_nodes``. Memory: the retained forward pass (≈ batch_size × prompt length tokens) plus a
``(max_feature_nodes + logits) × (active features + (L + 1)·P)`` fp32 row buffer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import data, progress
from ..atomic import atomic_path, write_json
from ..errors import LlmriError
from ..validate import bounded, check
from . import replacement as rp
from .transcoders import Transcoders


@dataclass
class AttributionConfig:
    """How much of the graph to compute."""

    max_logits: int = bounded(10, 1)
    """At most this many output tokens are attributed; ≥ 1."""
    logit_probability: float = bounded(0.95, 0, 1, lo_open=True)
    """Output tokens are taken in order of probability until their cumulative probability reaches this;
    in (0, 1]."""
    max_feature_nodes: int | None = bounded(4096, 1, none=True)
    """Rows are computed for at most this many features (the most influential first); ≥ 1, None: all active."""
    batch_size: int = bounded(0, 0)
    """Targets per backward pass (prompt copies in the retained forward); ≥ 0, 0: min(64, 8192 // prompt length)."""
    influence_every: int = bounded(1, 1)
    """Re-estimate feature influence after this many batches of feature rows; ≥ 1."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Positions without features (their whole MLP output is an error node): by default those excluded from
    dictionary training (position 0, special tokens, norm outliers)."""

    def __post_init__(self):
        check(self, LlmriError)


class GraphError(LlmriError):
    """A graph file that cannot be read."""


@dataclass
class Graph:
    """An attribution graph (fp32, on the CPU)."""

    prompt: str
    input_ids: Tensor
    """[P] prompt token ids."""
    tokens: list[str]
    """Prompt tokens as text."""
    n_layers: int
    features: Tensor
    """[n_sel, 3] (layer, position, feature index) of the selected features, in node order."""
    activations: Tensor
    """[n_sel] their activations."""
    logit_tokens: Tensor
    """[n_logits] attributed output token ids (most likely first)."""
    logit_probs: Tensor
    """[n_logits] their probabilities."""
    adjacency: Tensor
    """[N, N] direct effects, rows = targets, columns = sources, in node order."""
    n_active: int
    """Active features in the replacement model (the selected ones are a subset)."""
    meta: dict = field(default_factory=dict)
    """Model, transcoders, configuration and timings."""

    @property
    def n_pos(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        e = self.error_slice.stop
        return slice(e, e + self.n_pos)

    @property
    def logit_slice(self) -> slice:
        t = self.token_slice.stop
        return slice(t, t + self.n_logits)

    def save(self, path: str | Path) -> Path:
        """``path`` (a .safetensors file) plus a ``.json`` sidecar with the text fields, both written atomically."""
        path = Path(path)
        tensors = {"input_ids": self.input_ids, "features": self.features, "activations": self.activations,
                   "logit_tokens": self.logit_tokens, "logit_probs": self.logit_probs, "adjacency": self.adjacency}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        write_json(path.with_suffix(".json"), {"prompt": self.prompt, "tokens": self.tokens, "n_layers": self.n_layers,
                                               "n_active": self.n_active, "meta": self.meta})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        path = Path(path)
        if path.suffix != ".safetensors" or not path.exists() or not path.with_suffix(".json").exists():
            raise GraphError(f"no attribution graph at {path}",
                             "give the .safetensors file written by `llmri trace` (its .json sidecar next to it)")
        side = json.loads(path.with_suffix(".json").read_text())
        t = load_file(str(path))
        return cls(side["prompt"], t["input_ids"], side["tokens"], side["n_layers"], t["features"], t["activations"],
                   t["logit_tokens"], t["logit_probs"], t["adjacency"], side["n_active"], side.get("meta", {}))

    def logit_weights(self) -> Tensor:
        w = torch.zeros(self.adjacency.shape[0])
        w[self.logit_slice] = self.logit_probs
        return w


def salient_logits(logits: Tensor, cfg: AttributionConfig) -> tuple[Tensor, Tensor]:
    """Most likely next tokens until their cumulative probability reaches ``logit_probability``."""
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.sort(descending=True)
    n = int((top_p.cumsum(0) < cfg.logit_probability).sum()) + 1
    n = max(1, min(n, cfg.max_logits))
    return top_i[:n], top_p[:n]


def logit_directions(model, tokens: Tensor) -> Tensor:
    """Unembedding rows of ``tokens`` minus the mean row: what a logit-minus-mean-logit reads from the final norm."""
    W = model.hf.get_output_embeddings().weight.float()
    return W[tokens] - W.mean(0)


def influence_on_sources(rows: Tensor, row_sums: Tensor, row_cols: Tensor, weights: Tensor, steps: int,
                         chunk: int = 256) -> Tensor:
    """Influence of every column on the weighted rows through the computed rows (|rows| normalised by
    ``row_sums``, their absolute sums), without materialising the normalised matrix.

    ``row_cols[i]`` is the column of row i's node when it is also a source (features), −1 otherwise."""
    inv = 1.0 / row_sums.clamp_min(1e-10)
    has_col = row_cols >= 0
    # row influence r = weights + Σ_k r_k·norm[k, col(i)]: iterate on the square block of computed rows
    square = rows[:, row_cols.clamp_min(0)].abs() * inv[:, None] * has_col[None, :]
    r, cur = weights.clone(), weights.clone()
    for _ in range(steps):
        cur = cur @ square
        if not cur.any():
            break
        r += cur
    coef = r * inv
    out = torch.zeros(rows.shape[1])
    for i in range(0, rows.shape[0], chunk):
        out += coef[i:i + chunk] @ rows[i:i + chunk].abs()
    return out


def attribute(model, tcs: Transcoders, prompt: str | Tensor, cfg: AttributionConfig | None = None) -> Graph:
    """The attribution graph of ``prompt`` (text, or a 1-D tensor of token ids) through transcoders ``tcs``."""
    cfg = cfg or AttributionConfig()
    t0 = time.perf_counter()
    if isinstance(prompt, str):
        if not prompt.strip():
            raise rp.PromptError("the prompt is empty", "give the text to trace, e.g. \"The capital of France is\"")
        input_ids = model.tokenize([prompt]).input_ids[0]
        text = prompt
    else:
        input_ids, text = prompt.long().cpu(), model.tokenizer.decode(prompt)
    with _float32(model):
        rep = rp.build(model, tcs, input_ids, cfg.exclusion)
        graph = _graph(model, tcs, rep, cfg, text)
    graph.meta["seconds"] = round(time.perf_counter() - t0, 2)
    return graph


def _graph(model, tcs: Transcoders, rep: rp.Replacement, cfg: AttributionConfig, text: str) -> Graph:
    L, P = rep.n_layers, rep.n_pos
    n_f = int(rep.activation.shape[0])
    n_cols = n_f + L * P + P
    B = cfg.batch_size or max(1, min(64, 8192 // P))
    logit_tok, logit_p = salient_logits(rep.logits[-1], cfg)
    logit_vecs = logit_directions(model, logit_tok.to(rep.errors.device))
    max_feat = n_f if cfg.max_feature_nodes is None else min(n_f, cfg.max_feature_nodes)
    n_logits = int(logit_tok.shape[0])
    rows = torch.zeros(n_logits + max_feat, n_cols)
    row_sums = torch.zeros(n_logits + max_feat)
    row_cols = torch.full((n_logits + max_feat,), -1, dtype=torch.long)

    reads = [f"mlp_in.{l}" for l in range(L)] + ["final_norm"]
    c = rep.coefficients(B)
    outs = rep.forward(*c, reads=reads)
    out_list = [outs[r] for r in reads]

    def backward(targets: list[tuple[int, int, Tensor]]) -> Tensor:
        """targets: (read index, position, vector); returns their rows [len, n_cols]."""
        grads = [None] * len(reads)
        for b, (ri, pos, vec) in enumerate(targets):
            if grads[ri] is None:
                grads[ri] = torch.zeros_like(out_list[ri])
            grads[ri][b, pos] = vec
        used = [i for i, g in enumerate(grads) if g is not None]
        g = torch.autograd.grad([out_list[i] for i in used], list(c), [grads[i] for i in used],
                                retain_graph=True, allow_unused=True)
        g = [torch.zeros_like(ci) if gi is None else gi for ci, gi in zip(c, g)]
        return torch.cat([g[0], g[1].flatten(1), g[2]], 1)[: len(targets)].detach().cpu()

    n_rows = 0
    with progress.bar("attribution", n_logits + max_feat, "rows") as bar:
        for i in range(0, n_logits, B):
            chunk = [(L, P - 1, logit_vecs[j]) for j in range(i, min(i + B, n_logits))]
            rows[n_rows:n_rows + len(chunk)] = backward(chunk)
            row_sums[n_rows:n_rows + len(chunk)] = rows[n_rows:n_rows + len(chunk)].abs().sum(1)
            n_rows += len(chunk)
            bar.advance(len(chunk))
        visited = torch.zeros(n_f, dtype=torch.bool)
        weights = torch.zeros(rows.shape[0])
        weights[:n_logits] = logit_p.cpu()
        n_visited, batches, infl = 0, 0, None
        while n_visited < max_feat:
            if infl is None or batches % cfg.influence_every == 0:
                infl = influence_on_sources(rows[:n_rows], row_sums[:n_rows], row_cols[:n_rows], weights[:n_rows],
                                            L + 2)[:n_f]
            score = infl.masked_fill(visited, -1.0)
            take = min(B, max_feat - n_visited)
            top = score.topk(take).indices
            if score[top[0]] <= 0 and cfg.max_feature_nodes is not None:
                break  # nothing left with any influence
            visited[top] = True
            chunk = []
            for f in top.tolist():
                l = int(rep.layer[f])
                w, _ = tcs.encoder(l, rep.feature[f:f + 1])
                chunk.append((l, int(rep.pos[f]), w[0].detach()))
            rows[n_rows:n_rows + take] = backward(chunk)
            row_sums[n_rows:n_rows + take] = rows[n_rows:n_rows + take].abs().sum(1)
            row_cols[n_rows:n_rows + take] = top
            n_rows += take
            n_visited += take
            batches += 1
            bar.advance(take)
    outs = out_list = c = None  # free the retained forward pass before assembling the graph

    sel = row_cols[n_logits:n_rows]
    n_sel = int(sel.shape[0])
    N = n_sel + L * P + P + n_logits
    keep_cols = torch.cat([sel, torch.arange(n_f, n_cols)])
    adj = torch.zeros(N, N)
    adj[:n_sel, : n_sel + L * P + P] = rows[n_logits:n_rows][:, keep_cols]
    adj[N - n_logits:, : n_sel + L * P + P] = rows[:n_logits][:, keep_cols]
    feats = torch.stack([rep.layer[sel], rep.pos[sel], rep.feature[sel]], 1).cpu() if n_sel else torch.zeros(0, 3, dtype=torch.long)
    return Graph(
        prompt=text, input_ids=rep.input_ids.cpu(), tokens=model.token_strings(rep.input_ids.cpu()), n_layers=L,
        features=feats, activations=rep.activation[sel].detach().cpu(), logit_tokens=logit_tok.cpu(),
        logit_probs=logit_p.cpu(), adjacency=adj, n_active=n_f,
        meta={"model": getattr(model, "name", ""), "config": json.loads(json.dumps(asdict(cfg), default=str)),
              "batch_size": B},
    )


class _float32:
    """Run the model in fp32 for the duration (attribution is computed in fp32); restore its dtype after."""

    def __init__(self, model):
        self.model, self.dtype = model, next(model.hf.parameters()).dtype

    def __enter__(self):
        if self.dtype != torch.float32:
            self.model.hf.float()

    def __exit__(self, *exc):
        if self.dtype != torch.float32:
            self.model.hf.to(self.dtype)
