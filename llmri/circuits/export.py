"""Graph files for people: the circuit-tracer / Neuronpedia graph JSON, and suggested supernodes.

Node ids follow circuit-tracer's current frontend: feature ``"{layer}_{feature}_{pos}"``, error
``"{layer}_-1_{pos}"`` (older versions wrote ``"0_{layer}_{pos}"``, which can collide with a layer-0
feature), token ``"E_{token id}_{pos}"``, logit ``"{n_layers + 1}_{token id}_{pos}"``. ``influence`` is
the node's cumulative influence fraction (what the frontend's threshold slider cuts on; smaller = more
important); ``influence_raw`` is the node's own influence on the logits.
"""

from __future__ import annotations

import numpy as np
import torch

from .attribution import Graph
from .prune import Pruned

SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_ids(graph: Graph) -> list[str]:
    """Node id of every node of ``graph``, in node order."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.features.tolist()]
    ids += [f"{l}_-1_{p}" for l in range(graph.n_layers) for p in range(graph.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(graph.input_ids.tolist())]
    ids += [f"{graph.n_layers + 1}_{t}_{graph.n_pos - 1}" for t in graph.logit_tokens.tolist()]
    return ids


def _node(graph: Graph, i: int, nid: str, pruned: Pruned, decode, labels: dict[str, str]) -> dict:
    n_f, L = graph.n_features, graph.n_layers
    infl = {"influence": round(float(pruned.cumulative[i]), 6), "influence_raw": round(float(pruned.influence[i]), 6)}
    if i < n_f:
        l, p, f = graph.features[i].tolist()
        return {"node_id": nid, "feature": _cantor(l, f), "layer": str(l), "ctx_idx": p,
                "feature_type": "cross layer transcoder", "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
                "reverse_ctx_idx": 0, "jsNodeId": f"{l}_{f}-0", "clerp": labels.get(nid, ""),
                "activation": round(float(graph.activations[i]), 6), **infl}
    if i < graph.error_slice.stop:
        l, p = divmod(i - n_f, graph.n_pos)
        return {"node_id": nid, "feature": -1, "layer": str(l), "ctx_idx": p, "feature_type": "mlp reconstruction error",
                "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                "jsNodeId": f"{l}_-1-{p}", "clerp": "", "activation": None, **infl}
    if i < graph.token_slice.stop:
        p = i - graph.error_slice.stop
        t = int(graph.input_ids[p])
        return {"node_id": nid, "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding", "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"E_{t}-{p}",
                "clerp": f'Emb: "{decode(t)}"', "activation": None, **infl}
    j = i - graph.token_slice.stop
    t, prob = int(graph.logit_tokens[j]), float(graph.logit_probs[j])
    return {"node_id": nid, "feature": t, "layer": str(L + 1), "ctx_idx": graph.n_pos - 1, "feature_type": "logit",
            "token_prob": round(prob, 6), "is_target_logit": j == 0, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": f"L_{t}-{graph.n_pos - 1}", "clerp": f'Output "{decode(t)}" (p={prob:.3f})',
            "activation": None, **infl}


def graph_json(graph: Graph, pruned: Pruned, tokenizer, *, slug: str = "graph", scan: str = "",
               node_threshold: float = 0.8, labels: dict[str, str] | None = None,
               supernodes: list[list[str]] | None = None) -> dict:
    """The pruned graph in the circuit-tracer / Neuronpedia graph schema."""
    ids = node_ids(graph)
    decode = lambda t: tokenizer.decode([t])  # noqa: E731
    kept = pruned.node_mask.nonzero().flatten().tolist()
    nodes = [_node(graph, i, ids[i], pruned, decode, labels or {}) for i in kept]
    tgt, src = pruned.edge_mask.nonzero(as_tuple=True)
    w = graph.adjacency[tgt, src].tolist()
    links = [{"source": ids[s], "target": ids[t], "weight": round(x, 6)}
             for s, t, x in zip(src.tolist(), tgt.tolist(), w)]
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": [], "prompt": graph.prompt,
                     "prompt_tokens": [decode(t) for t in graph.input_ids.tolist()], "node_threshold": node_threshold,
                     "schema_version": SCHEMA_VERSION, "info": {"generator": "llmri", **graph.meta}},
        "qParams": {"pinnedIds": [], "supernodes": supernodes or [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def suggest_supernodes(graph: Graph, pruned: Pruned, *, threshold: float = 0.5, min_size: int = 2) -> list[list[str]]:
    """Group kept feature nodes whose edge profiles are alike (average-linkage clustering on the cosine
    distance between their concatenated, L2-normalised incoming and outgoing kept-edge vectors), the way
    one would group them by hand into supernodes. Returns circuit-tracer supernodes: [label, node ids…]."""
    ids = node_ids(graph)
    feats = [i for i in pruned.node_mask.nonzero().flatten().tolist() if i < graph.n_features]
    if len(feats) < min_size:
        return []
    A = graph.adjacency * pruned.edge_mask
    idx = torch.tensor(feats)
    prof = torch.cat([torch.nn.functional.normalize(A[idx], dim=1), torch.nn.functional.normalize(A[:, idx].t(), dim=1)], 1)
    prof = torch.nn.functional.normalize(prof, dim=1).numpy().astype(np.float64)
    if len(feats) == 1:
        return []
    from scipy.cluster.hierarchy import fcluster, linkage  # imported here: loading llmri stays light

    Z = linkage(prof, method="average", metric="cosine")
    labels = fcluster(Z, t=threshold, criterion="distance")
    groups, names = [], {}
    for c in np.unique(labels):
        members = [feats[k] for k in np.nonzero(labels == c)[0]]
        if len(members) >= min_size:
            layers = sorted({int(graph.features[m, 0]) for m in members})
            pos = sorted({int(graph.features[m, 1]) for m in members})
            span = f"L{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"L{layers[0]}"
            name = f"{span} @ {','.join(map(str, pos))}"
            names[name] = names.get(name, 0) + 1
            groups.append([name if names[name] == 1 else f"{name} #{names[name]}"] + [ids[m] for m in members])
    return groups
