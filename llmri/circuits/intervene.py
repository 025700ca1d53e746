"""Feature interventions on the real model, and the check that a graph predicts their effects.

An intervention sets transcoder features at (layer, position) to new activations — ablate (0), scale
(factor × current) or clamp (any value, also for a feature that was not active) — by adding
``(new − current) · W_dec`` to the MLP outputs the feature writes to. Everything downstream is the real
model: its MLPs respond as they do, and ``freeze`` says what is held at the clean run's values:
``"attention"`` (the attention patterns), ``"all"`` (patterns and norm denominators — the linear regime
attribution graphs describe; large edits can blow up there, since nothing renormalises the stream) or
``"none"`` (everything recomputed).

Validation compares, for the most influential features of a graph, the graph's prediction of an
intervention's effect on the top logit (the linear effect through every path of the graph, features
responding 1:1 to their pre-activation as active JumpReLU/TopK/ReLU features do, error nodes held) with the
effect measured on the model.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import InterventionError
from . import replacement as rp
from .attribution import Graph


class FeatureEdit(NamedTuple):
    layer: int
    pos: int
    feature: int
    value: float
    """The feature's new activation."""


def current_activation(rep: rp.Replacement, layer: int, pos: int, feature: int) -> float:
    hit = (rep.layer == layer) & (rep.pos == pos) & (rep.feature == feature)
    return float(rep.activation[hit][0]) if hit.any() else 0.0


def scaled(rep: rp.Replacement, layer: int, pos: int, feature: int, factor: float) -> FeatureEdit:
    """``factor`` × the feature's current activation (0: ablation)."""
    return FeatureEdit(layer, pos, feature, factor * current_activation(rep, layer, pos, feature))


FREEZE = ("all", "attention", "none")


def run(rep: rp.Replacement, edits: list[FeatureEdit], *, freeze: str = "attention") -> Tensor:
    """Logits [P, V] of the prompt with ``edits`` applied."""
    model, tcs = rep.model, rep.tcs
    P = rep.n_pos
    adds: dict[int, Tensor] = {}
    for e in edits:
        if not (0 <= e.layer < rep.n_layers and 0 <= e.pos < P and 0 <= e.feature < tcs.n_features):
            raise InterventionError(f"no feature {e.feature} at layer {e.layer}, position {e.pos}",
                                    f"layers 0..{rep.n_layers - 1}, positions 0..{P - 1}, features 0..{tcs.n_features - 1}")
        delta = e.value - current_activation(rep, e.layer, e.pos, e.feature)
        dec = tcs.decoder(e.layer, torch.tensor([e.feature], device=rep.errors.device))[0]
        for j, m in enumerate(tcs.out_layers(e.layer)):
            adds.setdefault(m, torch.zeros(P, dec.shape[-1], device=dec.device))[e.pos] += delta * dec[j]
    if freeze not in FREEZE:
        raise InterventionError(f"unknown freeze mode '{freeze}'", f"use one of {', '.join(FREEZE)}")
    patch = {f"mlp_out.{m}": (lambda x, a=a: x + a.to(x.dtype)) for m, a in adds.items()}
    frozen = rep.freezer.frozen(norms=freeze == "all") if freeze != "none" else nullcontext()
    with torch.no_grad(), frozen, model.intervene(patch):
        return model.capture(rep.input_ids[None], ["logits"])["logits"][0].float()


def logit_change(rep: rp.Replacement, edits: list[FeatureEdit], tokens: Tensor, *, freeze: str = "attention") -> Tensor:
    """Change of (logit − mean logit) at the last position for ``tokens``."""
    after = run(rep, edits, freeze=freeze)[-1]
    before = rep.logits[-1].float()
    return ((after - after.mean()) - (before - before.mean()))[tokens.to(after.device)].cpu()


def predicted_change(graph: Graph, feature_nodes: list[int], factor: float) -> Tensor:
    """The graph's linear prediction of the change of each logit node's value when feature node i's
    activation is multiplied by ``factor``: [len(feature_nodes), n_logits]."""
    n_f = graph.n_features
    A = graph.adjacency.double()
    act = graph.activations.double()
    J_ff = A[:n_f, :n_f] / act[None, :]          # ∂pre_t/∂a_u among features
    J_lf = A[graph.logit_slice, :n_f] / act[None, :]
    out = []
    for i in feature_nodes:
        da = torch.zeros(n_f, dtype=torch.float64)
        da[i] = (factor - 1.0) * act[i]
        total = da.clone()
        for _ in range(graph.n_layers + 1):       # paths are at most n_layers features long
            da = J_ff @ da
            if not da.abs().max() > 0:
                break
            total += da
        out.append(J_lf @ total)
    return torch.stack(out).float() if out else torch.zeros(0, graph.n_logits)


class Validation(NamedTuple):
    nodes: list[int]
    """Feature nodes tested (graph node indices), most influential first."""
    predicted: list[float]
    """Predicted change of the top logit (minus mean logit)."""
    measured: list[float]
    """Measured change."""
    pearson: float
    """Over the finite measurements."""
    spearman: float
    factor: float
    freeze: str
    diverged: int
    """Interventions whose measured logits were not finite (only with freeze="all")."""


def validate(model, tcs, graph: Graph, *, top: int = 20, factor: float = 0.0, freeze: str = "attention",
             influence: Tensor | None = None, exclusion=None) -> Validation:
    """Predicted vs. measured effect of scaling each of the ``top`` most influential features by ``factor``."""
    from scipy.stats import pearsonr, spearmanr

    from .prune import influence as node_influence
    from .prune import normalized

    if graph.n_features == 0:
        raise InterventionError("the graph has no feature nodes to validate", "trace a prompt where features are active")
    infl = influence if influence is not None else node_influence(normalized(graph.adjacency), graph.logit_weights())
    nodes = infl[: graph.n_features].argsort(descending=True)[:top].tolist()
    rep = rp.build(model, tcs, graph.input_ids, exclusion)
    target = graph.logit_tokens[:1]
    pred = predicted_change(graph, nodes, factor)[:, 0].tolist()
    meas = []
    for i in nodes:
        l, p, f = graph.features[i].tolist()
        meas.append(float(logit_change(rep, [scaled(rep, l, p, f, factor)], target, freeze=freeze)[0]))
    finite = [i for i, m in enumerate(meas) if math.isfinite(m)]
    x, y = [pred[i] for i in finite], [meas[i] for i in finite]
    ok = len(finite) > 2 and np.std(x) > 0 and np.std(y) > 0
    r = float(pearsonr(x, y)[0]) if ok else float("nan")
    rho = float(spearmanr(x, y)[0]) if ok else float("nan")
    return Validation(nodes, pred, meas, r, rho, factor, freeze, len(meas) - len(finite))
