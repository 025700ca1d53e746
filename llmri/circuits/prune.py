"""Influence, pruning and the two graph scores (definitions as in circuit-tracer / Ameisen et al. 2025).

* Normalised matrix Â = |A| with each row divided by its sum (a target's inputs as fractions).
* Influence of node j = Σ_{k≥1} (w Âᵏ)_j with w the logit probabilities on the logit nodes: the total
  fraction of the output a node accounts for through all paths (Â is nilpotent: the graph is acyclic).
* Node pruning keeps the features that make up ``node_threshold`` of the total feature influence (sorted,
  cumulative); logits, tokens and error nodes are kept. Edge pruning keeps the edges that make up
  ``edge_threshold`` of the total edge influence, edge score = Â[t, s] × (influence(t) + w_t), at most
  ``max_edges`` of them. Nodes that are left with no outgoing edge (logits excepted) are dropped, repeatedly.
* Replacement score = influence of tokens / (influence of tokens + errors): how much of the output is
  explained from the prompt through features rather than through error nodes.
* Completeness score = Σ_t (1 − fraction of t's input from error nodes) × (influence(t) + w_t) / Σ_t (…):
  the influence-weighted fraction of every node's input that features and tokens explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import LlmriError
from ..validate import bounded, check
from .attribution import Graph


@dataclass
class PruneConfig:
    """Pruning thresholds."""

    node_threshold: float = bounded(0.8, 0, 1, lo_open=True)
    """Keep the features that account for this fraction of the total feature influence on the logits; in (0, 1]."""
    edge_threshold: float = bounded(0.98, 0, 1, lo_open=True)
    """Keep the edges that account for this fraction of the total edge influence; in (0, 1]."""
    max_edges: int | None = bounded(10_000, 1, none=True)
    """Then keep at most this many of them, the highest-scoring (a diffuse graph can keep 10⁵–10⁶ edges at
    0.98, more than a file or a viewer is any use with); ≥ 1, None: no cap."""

    def __post_init__(self):
        check(self, LlmriError)


class Pruned(NamedTuple):
    node_mask: Tensor
    """[N] kept nodes."""
    edge_mask: Tensor
    """[N, N] kept edges (rows targets, columns sources)."""
    cumulative: Tensor
    """[N] each node's cumulative influence fraction in influence order (what node_threshold cuts on)."""
    influence: Tensor
    """[N] each node's influence on the logits."""


class Scores(NamedTuple):
    replacement: float
    completeness: float


def normalized(adjacency: Tensor) -> Tensor:
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-10)


def influence(norm: Tensor, weights: Tensor, max_steps: int = 1000) -> Tensor:
    """Σ_{k≥1} w·Âᵏ by repeated multiplication until the product vanishes (acyclic graphs)."""
    cur = weights @ norm
    total = cur.clone()
    for _ in range(max_steps):
        if not cur.any():
            break
        cur = cur @ norm
        total += cur
    return total


def _cumulative_mask(scores: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Mask of the highest scores that make up ``threshold`` of their total, and the cumulative fractions."""
    flat = scores.flatten()
    order = flat.argsort(descending=True)
    csum = flat[order].cumsum(0) / flat.sum().clamp_min(1e-10)
    cum = torch.empty_like(flat)
    cum[order] = csum
    n_keep = int((csum < threshold).sum()) + 1
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:n_keep]] = True
    mask &= flat > 0
    return mask.view_as(scores), cum.view_as(scores)


def prune(graph: Graph, cfg: PruneConfig | None = None) -> Pruned:
    cfg = cfg or PruneConfig()
    A = graph.adjacency
    w = graph.logit_weights()
    norm = normalized(A)
    infl = influence(norm, w)
    n_f = graph.n_features
    node_mask = torch.ones(A.shape[0], dtype=torch.bool)
    cum = torch.zeros(A.shape[0])
    if n_f:
        keep_f, cum_f = _cumulative_mask(infl[:n_f], cfg.node_threshold)
        node_mask[:n_f] = keep_f
        cum[:n_f] = cum_f
    others = slice(n_f, A.shape[0])
    _, cum[others] = _cumulative_mask(infl[others], 1.0)
    # edges among kept nodes, scored by how much output influence flows through them
    pruned_norm = normalized(A * node_mask[None, :] * node_mask[:, None])
    out_infl = influence(pruned_norm, w) + w
    edge_scores = pruned_norm * out_infl[:, None]
    edge_mask, _ = _cumulative_mask(edge_scores, cfg.edge_threshold)
    if cfg.max_edges is not None and int(edge_mask.sum()) > cfg.max_edges:
        kept_scores = edge_scores[edge_mask]
        cut = kept_scores.topk(cfg.max_edges).values[-1]
        edge_mask &= edge_scores >= cut
    logits = torch.zeros_like(node_mask)
    logits[graph.logit_slice] = True
    while True:  # drop nodes left without an outgoing edge (and their incoming edges)
        has_out = edge_mask.any(0) | logits
        dead = node_mask & ~has_out
        if not dead.any():
            break
        node_mask &= ~dead
        edge_mask &= node_mask[None, :] & node_mask[:, None]
    node_mask[graph.logit_slice] = True
    node_mask[graph.token_slice] = True  # the prompt is always shown
    return Pruned(node_mask, edge_mask, cum, infl)


def scores(graph: Graph) -> Scores:
    """Replacement and completeness scores of the (unpruned) graph."""
    norm = normalized(graph.adjacency)
    w = graph.logit_weights()
    infl = influence(norm, w)
    err, tok = graph.error_slice, graph.token_slice
    token_infl, error_infl = infl[tok].sum(), infl[err].sum()
    replacement = token_infl / (token_infl + error_infl).clamp_min(1e-10)
    non_error = 1 - norm[:, err].sum(1)
    out = infl + w
    completeness = (non_error * out).sum() / out.sum()
    return Scores(float(replacement), float(completeness))
