"""A jailbreak under the microscope: where an attack breaks the path from "harmful request" to "refusal".

    res = explain(model, "runs/explain", ExplainConfig(attacks=("prefix_injection", "acronym", "past_tense")))

**Cases.** Among the first ``candidates`` HarmBench behaviours, those the model refuses unattacked (keyword
judge on a greedy answer of ``max_new_tokens``) and answers under an attack; up to ``cases`` of them, one per
attack in the order given before a second of any. The hidden-word attack (``acronym``, Anthropic 2025, "On the
Biology of a Large Language Model") is always explained when it is asked for, successful or not.

**The direction.** r̂: the refusal direction of ``direction`` (``llmri refusal extract``), else the difference of
mean ``resid_pre.layer`` activations at the last prompt token on ``n_train`` harmful and as many length-matched
harmless fitting prompts (Arditi et al.'s candidate at that layer; matched as in :mod:`llmri.safety.detect`). Every state is read
*centred*: cos(x − μ_l, r̂), μ_l the mean ``resid_pre.l`` over all kept tokens of those prompts (the raw cosine is
positive almost everywhere, since the difference of means shares the stream's common offset). τ is the
``tau_quantile`` quantile (0.99) of the centred cosine at r̂'s layer over *every* kept token of the harmless
fitting prompts: a state is "on the refusal direction" when it is more refusal-like than 99% of the states a
harmless prompt ever passes through. (The midpoint of the two classes' mean cosine at the last token, the
earlier rule and ``tau_quantile`` 0, is calibrated on last tokens only and is crossed by ordinary request tokens
of harmless and harmful prompts alike, so it could not say *when* a request is recognised; both are reported.)

**Token by token** (for the unattacked and the attacked prompt, each followed by the model's own first
``response_tokens`` answer tokens): cos(``resid_pre.l`` − μ_l, r̂) at every layer and position (a layer × token map, like
the MRI's), and the refusal score at every position, log p(R) − log(1 − p(R)) of the next token (R: the refusal
openings of :data:`llmri.safety.evaluate.REFUSAL_STARTS`; at the first answer position it is the evaluation's
refusal score, elsewhere it says how likely a refusal would start there). ``first_on``: the first position after
the user's message starts where the state at the direction's layer crosses τ: in the prompt (the request is
recognised before the answer) or only in the answer (the hidden-word case: the model assembles the word first).

**Attribution graphs** (``trace``): the graph of the first answer token of both prompts with the same transcoders
(``transcoders``, else the model's default set, :func:`llmri.circuits.default_transcoders`), written as trace
folders the viewer opens. Each is summarised by the influence (on the output, circuit-tracer's pruning weights)
of two supernodes: **refusal** — features whose decoder writes along r̂ (cos ≥ ``aligned``) at the
post-instruction positions, where the answer is decided — and **harmful request** — features writing along r̂
inside the user's message. An attack that breaks the path leaves the request features in and the refusal ones
out, or takes both out. Because a LoRA organism's r̂ need not be what its graphs use, two **graph-defined**
supernodes are read too, with no direction involved: per region (the user's message; the post-instruction
positions) the fewest features holding ``cover`` (half) of the region's influence on the *refusal logits* (the
refusal openings among the graph's logit nodes, weighted by their probabilities). They are defined on the
unattacked graph and looked up, as the same (layer, feature) pairs in the same regions, in the attacked graph:
how much of its output influence do the unattacked prompt's refusal carriers still hold? All four supernodes are
offered in each graph's viewer as the first suggested groups.

**The page** (``index.html``): per case the two prompts and answers as short snippets, the token-by-token figure,
the two graphs' supernode influences, top features and top next tokens side by side, and both graph viewers
side by side (each trace folder's own page, in a frame).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_path, check_target, claimed, mark, write_figure, write_json
from ..errors import SafetyError
from ..generate import GenerateConfig, generate, render_ids
from ..progress import say
from ..validate import bounded, check

KIND = "explained jailbreaks"


@dataclass
class ExplainConfig:
    """Settings of :func:`explain`."""

    attacks: tuple[str, ...] = ("prefix_injection", "acronym", "past_tense", "refusal_suppression", "hypothetical")
    """Attacks tried (prompt-only; ``acronym`` is the hidden-word case)."""
    cases: int = bounded(3, 1)
    """Successful jailbreaks explained at most (the hidden-word case comes on top); ≥ 1."""
    candidates: int = bounded(40, 1)
    """HarmBench behaviours searched for refused-unattacked, answered-attacked pairs; ≥ 1."""
    max_new_tokens: int = bounded(48, 1)
    """Tokens of each greedy answer the keyword judge reads; ≥ 1."""
    response_tokens: int = bounded(24, 1)
    """Answer tokens followed after the prompt in the token-by-token view; ≥ 1."""
    direction: str | None = None
    """A refusal direction folder (``llmri refusal extract``); None: the difference of means at ``layer``."""
    layer: int | None = bounded(None, 0, none=True)
    """Layer of the difference-of-means direction (None: two thirds of the depth); unused with ``direction``."""
    n_train: int = bounded(64, 2)
    """Harmful and harmless fitting prompts (each) for that direction and the threshold τ; ≥ 2."""
    tau_quantile: float = bounded(0.99, 0, 1, hi_open=True)
    """τ: this quantile of the centred cosine over every token of the harmless fitting prompts at r̂'s layer;
    0: the midpoint of the two classes' mean cosine at the last token; in [0, 1)."""
    trace: bool = True
    """Also build the attribution graphs of the first answer token (needs transcoders: trains the default set once)."""
    transcoders: str | None = None
    """Transcoders for the graphs (a folder ``llmri trace --transcoders`` takes); None: the model's default set."""
    aligned: float = bounded(0.1, 0, 1, lo_open=True)
    """Cosine between a feature's decoder and r̂ from which it belongs to a supernode; in (0, 1]."""
    cover: float = bounded(0.5, 0, 1, lo_open=True)
    """Graph-defined supernodes: the fewest features of a region holding this share of its influence on the
    refusal logits; in (0, 1]."""
    max_feature_nodes: int = bounded(1024, 1)
    """Features whose rows each graph computes (the most influential first); ≥ 1."""
    batch_size: int = bounded(16, 1)
    """Prompts decoded together; ≥ 1."""
    seed: int = bounded(0, 0)
    """Seed of the attacks and of the fitting-prompt draw."""

    def __post_init__(self):
        from .attacks import NEEDS_OPTIONS, compose

        check(self, SafetyError)
        self.attacks = tuple(self.attacks)
        if not self.attacks:
            raise SafetyError("no attack to explain", "give at least one attack, e.g. --attacks acronym,prefix_injection")
        for spec in self.attacks:
            needs = [n for n in compose(spec).names if n in NEEDS_OPTIONS]
            if needs:
                raise SafetyError(f"attack {needs[0]!r} cannot be explained here (it needs a direction, a searched "
                                  "suffix or a trigger)", "use prompt-only attacks")


# ------------------------------------------------------------------------------------------------ direction


class Direction(NamedTuple):
    """The direction the trajectories are read along."""

    u: Tensor
    """r̂, [d] unit."""
    layer: int
    tau: float
    """Threshold on the centred cosine at ``layer`` (``ExplainConfig.tau_quantile``)."""
    mean: Tensor
    """[L, d] the mean ``resid_pre.l`` over every kept token of the fitting prompts (subtracted before the cosine)."""
    midpoint: float = float("nan")
    """The midpoint of the harmful and harmless mean centred cosines at the last prompt token (the other rule)."""
    harmless_above_midpoint: float = float("nan")
    """Share of the harmless fitting prompts' tokens whose centred cosine exceeds ``midpoint``."""


def direction_and_threshold(model, cfg: ExplainConfig) -> Direction:
    """r̂, its layer, the per-layer token mean and τ (module docstring)."""
    from .behaviours import fitting
    from .detect import length_matched
    from .refusal import RefusalConfig, fitting_prompts, load_direction, mean_resid_pre

    fit = fitting_prompts(RefusalConfig(n_train=cfg.n_train, n_val=1, seed=cfg.seed))
    fit["harmless_train"] = length_matched(fit["harmful_train"], [b.prompt for b in fitting()["harmless"]])
    if cfg.direction is not None:
        d = load_direction(cfg.direction, model)
        r, layer = d.vector, d.layer
    else:
        layer = cfg.layer if cfg.layer is not None else (2 * model.n_layers) // 3
        if layer >= model.n_layers:
            raise SafetyError(f"layer {layer} is outside {model.name}'s {model.n_layers} layers",
                              f"use --layer in 0…{model.n_layers - 1}")
        means = [mean_resid_pre(model, fit[k], 1, cfg.batch_size)[0, layer] for k in ("harmful_train", "harmless_train")]
        r = (means[0] - means[1]).float()
    u = r / r.norm()
    mean = token_means(model, fit["harmful_train"] + fit["harmless_train"], cfg.batch_size)
    cos = [last_cosines(model, fit[k], layer, u, mean[layer], cfg.batch_size).mean()
           for k in ("harmful_train", "harmless_train")]
    midpoint = float((cos[0] + cos[1]) / 2)
    every = token_cosines(model, fit["harmless_train"], layer, u, mean[layer], cfg.batch_size)
    tau = float(torch.quantile(every.double(), cfg.tau_quantile)) if cfg.tau_quantile else midpoint
    return Direction(u, layer, tau, mean, midpoint, float((every > midpoint).double().mean()))


@torch.no_grad()
def kept_states(model, prompts, points: list[str], batch_size: int):
    """Per batch of the prompts: ({point: [B, T, d] states on the CPU}, [B, T] mask of the tokens that are
    neither padding nor special) — the tokens every per-token statistic here reads."""
    from .refusal import _batches

    special = torch.tensor(sorted(model.special_ids))
    for ids, mask in _batches(model, prompts, batch_size):
        keep = (mask.bool() & ~torch.isin(ids, special.to(ids.device))).cpu()
        acts = model.capture(ids, points, attention_mask=mask)
        yield {p: a.float().cpu() for p, a in acts.items()}, keep


def token_means(model, prompts, batch_size: int) -> Tensor:
    """[L, d] mean ``resid_pre.l`` over the prompts' tokens that are neither padding nor special."""
    points = [f"resid_pre.{l}" for l in range(model.n_layers)]
    total, count = torch.zeros(model.n_layers, model.d_model, dtype=torch.float64), 0
    for acts, keep in kept_states(model, prompts, points, batch_size):
        for l, p in enumerate(points):
            total[l] += acts[p][keep].double().sum(0)
        count += int(keep.sum())
    return (total / max(count, 1)).float()


def centred_cos(x: Tensor, mean: Tensor, u: Tensor) -> Tensor:
    """cos(x − mean, u) along the last axis (``mean`` broadcast)."""
    return torch.nn.functional.cosine_similarity(x - mean, u.expand_as(x), dim=-1)


@torch.no_grad()
def last_cosines(model, prompts, layer: int, u: Tensor, mean: Tensor, batch_size: int) -> Tensor:
    """cos(``resid_pre.layer`` − mean, u) at each prompt's last token."""
    from .refusal import _batches

    out = []
    for ids, mask in _batches(model, prompts, batch_size):
        x = model.capture(ids, [f"resid_pre.{layer}"], attention_mask=mask)[f"resid_pre.{layer}"][:, -1].float().cpu()
        out.append(centred_cos(x, mean[None], u[None]))
    return torch.cat(out)


@torch.no_grad()
def token_cosines(model, prompts, layer: int, u: Tensor, mean: Tensor, batch_size: int) -> Tensor:
    """cos(``resid_pre.layer`` − mean, u) at every token of the prompts that is neither padding nor special."""
    point = f"resid_pre.{layer}"
    return torch.cat([centred_cos(acts[point][keep], mean[None], u[None])
                      for acts, keep in kept_states(model, prompts, [point], batch_size)])


# ------------------------------------------------------------------------------------------------ cases


def find_cases(model, cfg: ExplainConfig) -> tuple[list[dict], dict]:
    """The successful jailbreaks to explain (and the hidden-word case) and, per attack, how often it worked."""
    from .attacks import compose
    from .behaviours import load_set
    from .judges import make_judge

    judge = make_judge("keyword")
    gen = GenerateConfig(cfg.max_new_tokens, cfg.batch_size)
    items = sorted(load_set("harmbench"), key=lambda b: b.id)[: cfg.candidates]
    plain = generate(model, [b.prompt for b in items], gen, progress="unattacked answers")
    refused = [(b, g) for b, g, v in zip(items, plain, judge.judge([(b.prompt, g.text) for b, g in zip(items, plain)]))
               if v.label == "refusal"]
    found: dict[str, list[dict]] = {}
    tried: dict[str, dict] = {}
    for spec in cfg.attacks:
        atk = compose(spec)
        attacked = [atk(b.prompt, cfg.seed) for b, _ in refused]
        answers = generate(model, attacked, gen, progress=f"answers, {spec}")
        verdicts = judge.judge([(b.prompt, g.text) for (b, _), g in zip(refused, answers)])
        found[spec] = [{"attack": spec, "id": b.id, "request": b.prompt, "attacked": a, "plain_answer": p.text,
                        "attacked_answer": g.text, "succeeded": True}
                       for (b, p), a, g, v in zip(refused, attacked, answers, verdicts) if v.label != "refusal"]
        tried[spec] = {"refused_unattacked": len(refused), "answered_attacked": len(found[spec])}
        if spec == "acronym" and not found[spec] and refused:  # the hidden-word case is shown either way
            (b, p), a, g = refused[0], attacked[0], answers[0]
            found[spec] = [{"attack": spec, "id": b.id, "request": b.prompt, "attacked": a, "plain_answer": p.text,
                            "attacked_answer": g.text, "succeeded": False}]
    cases, rank = [], 0
    while len(cases) < cfg.cases and any(rank < len(v) for v in found.values()):
        cases += [v[rank] for k, v in found.items() if rank < len(v) and k != "acronym"][: cfg.cases - len(cases)]
        rank += 1
    cases += found.get("acronym", [])[:1]
    tried["n_candidates"] = len(items)
    return cases, tried


# ------------------------------------------------------------------------------------------------ token by token


@torch.no_grad()
def trajectory(model, prompt, answer: str, d: Direction, response_tokens: int) -> dict:
    """cos(``resid_pre.l`` − mean_l, r̂) [L, T] and the next-token refusal score [T] over the prompt and the first answer
    tokens; ``start``: where the user's message begins, ``answer_at``: the first answer position."""
    from .evaluate import refusal_token_ids
    from .refusal import post_instruction_tokens

    p_ids = render_ids(model, prompt)
    a_ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"][:response_tokens]
    ids = torch.tensor([p_ids + a_ids], device=model.device)
    points = [f"resid_pre.{l}" for l in range(model.n_layers)]
    acts = model.capture(ids, points)
    logits = model.hf(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1).cpu()
    x = torch.stack([acts[p][0].float().cpu() for p in points])  # [L, T, d]
    cos = centred_cos(x, d.mean[:, None], d.u[None, None])
    p_r = logits[:, refusal_token_ids(model)].logsumexp(-1)
    score = p_r - torch.log1p(-p_r.exp().clamp(max=1 - 1e-7))
    start = user_start(model, prompt)
    return {"tokens": [model.tokenizer.decode([t]) for t in p_ids + a_ids], "cos": cos, "refusal_score": score,
            "start": start, "answer_at": len(p_ids), "post_instruction": post_instruction_tokens(model)}


def user_start(model, prompt) -> int:
    """The position of the first token of the prompt's last user message (its text's start in the rendered
    template, tokenized up to there)."""
    from ..generate import messages_of

    tok = model.tokenizer
    messages, _ = messages_of(prompt)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = text[: text.rfind(messages[-1]["content"])]
    return len(tok(head, add_special_tokens=False)["input_ids"])


def first_on(traj: dict, layer: int, tau: float) -> dict:
    """Where the state at ``layer`` first crosses τ after the user's message begins (None: never)."""
    row = traj["cos"][layer].numpy()
    hits = [t for t in range(traj["start"], len(row)) if row[t] > tau]
    if not hits:
        return {"position": None, "token": None, "where": "never", "offset_from_answer": None}
    t = hits[0]
    return {"position": t, "token": traj["tokens"][t], "offset_from_answer": t - traj["answer_at"],
            "where": "prompt" if t < traj["answer_at"] else "answer"}


# ------------------------------------------------------------------------------------------------ graphs


class Aligned(NamedTuple):
    """Per feature node of a graph: the cosine of its decoder write with r̂ and the two supernode masks."""

    cos: Tensor
    request: Tensor
    """Written along r̂ (cos ≥ ``aligned``) inside the user's message: the harmful-request supernode."""
    refusal: Tensor
    """Written along r̂ at the post-instruction positions: the refusal supernode."""


@torch.no_grad()
def aligned_features(graph, tcs, u: Tensor, aligned: float, user: tuple[int, int], post_from: int) -> Aligned:
    """Which feature nodes of ``graph`` write along r̂ (decoder summed over the layers it writes), and where."""
    feats = graph.features
    cos = torch.zeros(graph.n_features)
    for layer in feats[:, 0].unique().tolist():
        sel = (feats[:, 0] == layer).nonzero().flatten()
        dec = tcs.decoder(layer, feats[sel, 2].to(tcs.device)).float().cpu().sum(1)  # summed over written layers
        cos[sel] = torch.nn.functional.cosine_similarity(dec, u[None].to(dec.dtype), dim=-1)
    pos = feats[:, 1]
    return Aligned(cos, (cos >= aligned) & (pos >= user[0]) & (pos < user[1]), (cos >= aligned) & (pos >= post_from))


def output_influence(graph, norm: Tensor | None = None) -> Tensor:
    """[n_features] each feature's influence on the output (circuit-tracer's pruning weights)."""
    from ..circuits.prune import influence, normalized

    norm = normalized(graph.adjacency) if norm is None else norm
    return influence(norm, graph.logit_weights())[: graph.n_features]


@torch.no_grad()
def supernodes(graph, a: Aligned, infl: Tensor | None = None) -> dict:
    """Influence on the output (shares of the total) of the harmful-request and refusal supernodes, and the top
    features by influence (``infl``: :func:`output_influence`, computed if not given)."""
    infl = output_influence(graph) if infl is None else infl
    total = float(infl.sum()) or 1.0
    feats = graph.features
    top = infl.argsort(descending=True)[:10].tolist()
    return {"refusal_influence": float(infl[a.refusal].sum()) / total, "refusal_features": int(a.refusal.sum()),
            "request_influence": float(infl[a.request].sum()) / total, "request_features": int(a.request.sum()),
            "top_logits": [[int(t), float(p)] for t, p in zip(graph.logit_tokens.tolist(), graph.logit_probs.tolist())],
            "top_features": [{"layer": int(feats[i, 0]), "position": int(feats[i, 1]), "token": graph.tokens[int(feats[i, 1])],
                              "feature": int(feats[i, 2]), "influence": float(infl[i]) / total, "cos_r": float(a.cos[i])}
                             for i in top]}


class Paths(NamedTuple):
    """Graph-defined supernodes: the features that carry the graph's refusal logits (no direction involved)."""

    influence: Tensor
    """[n_features] influence of each feature on the refusal-opening logit nodes (their probabilities as weights)."""
    request: Tensor
    """Inside the user's message: the fewest features holding ``cover`` of that region's influence on refusal."""
    refusal: Tensor
    """At the post-instruction positions, chosen the same way."""
    refusal_mass: float
    """Probability of the refusal openings among the graph's logit nodes (0: no refusal logit to explain)."""


@torch.no_grad()
def refusal_paths(graph, refusal_ids, user: tuple[int, int], post_from: int, cover: float,
                  norm: Tensor | None = None) -> Paths:
    """Features by their influence on the refusal-opening logits (:func:`llmri.safety.evaluate.refusal_token_ids`
    among the graph's logit nodes, weighted by their probabilities): per region (the user's message; the
    post-instruction positions), the fewest features holding ``cover`` of the region's total (``norm``: the
    graph's normalised adjacency, computed if not given)."""
    from ..circuits.prune import influence, normalized

    is_r = torch.isin(graph.logit_tokens, torch.as_tensor(list(refusal_ids), dtype=graph.logit_tokens.dtype))
    w = torch.zeros(graph.adjacency.shape[0])
    w[graph.logit_slice] = graph.logit_probs.float() * is_r
    if is_r.any():
        infl = influence(normalized(graph.adjacency) if norm is None else norm, w)[: graph.n_features]
    else:
        infl = torch.zeros(graph.n_features)
    request, refusal = (_cover(infl, r, cover) for r in _regions(graph, user, post_from))
    return Paths(infl, request, refusal, float(graph.logit_probs[is_r].sum()))


def _regions(graph, user: tuple[int, int], post_from: int) -> tuple[Tensor, Tensor]:
    """Feature masks of the user's message and of the post-instruction positions."""
    pos = graph.features[:, 1]
    return (pos >= user[0]) & (pos < user[1]), pos >= post_from


def looked_up(graph, p: Paths, keys: tuple[set, set], user: tuple[int, int], post_from: int) -> Paths:
    """``p`` (this graph's refusal paths) with its supernodes replaced by the features carrying ``keys`` — the
    (layer, feature) pairs of another graph's request and refusal supernodes — in the same regions: the
    unattacked prompt's carriers looked up in an attacked prompt's graph."""
    pairs = [tuple(f) for f in graph.features[:, [0, 2]].tolist()]
    request, refusal = (r & torch.tensor([q in k for q in pairs], dtype=torch.bool)
                        for r, k in zip(_regions(graph, user, post_from), keys))
    return p._replace(request=request, refusal=refusal)


def _cover(infl: Tensor, region: Tensor, cover: float) -> Tensor:
    """The fewest features of ``region`` whose influence sums to ``cover`` of the region's total (none if it is 0)."""
    vals = torch.where(region, infl, torch.zeros_like(infl))
    total = float(vals.sum())
    out = torch.zeros_like(region)
    if total <= 0:
        return out
    order = vals.argsort(descending=True)
    n = int((vals[order].cumsum(0) < cover * total).sum()) + 1
    out[order[:n]] = True
    return out & region


def path_keys(graph, p: Paths) -> tuple[set, set]:
    """The (layer, feature) pairs of the two graph-defined supernodes (to look them up in another graph)."""
    return tuple({(int(f[0]), int(f[2])) for f in graph.features[m].tolist()} for m in (p.request, p.refusal))


def path_summary(graph, p: Paths, out_infl: Tensor | None = None) -> dict:
    """Shares of the output influence (``out_infl``, :func:`output_influence`, computed if not given) and of the
    refusal influence held by the graph-defined supernodes, with their sizes."""
    out_infl = output_influence(graph) if out_infl is None else out_infl
    total, r_total = float(out_infl.sum()) or 1.0, float(p.influence.sum()) or 1.0
    return {"refusal_logit_mass": p.refusal_mass,
            **{f"{name}_{k}": v for name, m in (("request", p.request), ("refusal", p.refusal))
               for k, v in (("features", int(m.sum())), ("influence", float(out_infl[m].sum()) / total),
                            ("share_of_refusal", float(p.influence[m].sum()) / r_total))}}


def named_groups(graph, a: Aligned, paths: Paths | None = None) -> list[list[str]]:
    """The supernodes as viewer groups (``[label, node ids…]``), offered for one-click grouping: the two written
    along r̂, then (``paths``) the two carrying the refusal logits."""
    from ..circuits.export import node_ids

    ids = node_ids(graph)
    groups = [("harmful request (writes along r̂, in the request)", a.request),
              ("refusal (writes along r̂, after the request)", a.refusal)]
    if paths is not None:
        groups += [("request → refusal logits (graph-defined, in the request)", paths.request),
                   ("refusal logits' carriers (graph-defined, after the request)", paths.refusal)]
    return [[label, *(ids[i] for i in mask.nonzero().flatten().tolist())] for label, mask in groups]


def _graphs(model, case: dict, traj_plain: dict, traj_att: dict, u: Tensor, cfg: ExplainConfig, tcs, folder: Path,
            name: str) -> dict:
    from ..circuits.attribution import AttributionConfig, attribute
    from ..circuits.pipeline import TraceConfig, write_trace

    from ..circuits.prune import normalized
    from .evaluate import refusal_token_ids

    out, keys, refusal_ids = {}, None, refusal_token_ids(model)
    (folder / "graphs").mkdir(exist_ok=True)
    for label, prompt, traj in (("plain", case["request"], traj_plain), ("attacked", case["attacked"], traj_att)):
        ids = torch.tensor(render_ids(model, prompt))
        graph = attribute(model, tcs, ids, AttributionConfig(max_feature_nodes=cfg.max_feature_nodes))
        post_from = traj["answer_at"] - traj["post_instruction"]
        user = (traj["start"], post_from)
        a = aligned_features(graph, tcs, u, cfg.aligned, user, post_from)
        norm = normalized(graph.adjacency)  # read once per graph by every influence below
        infl = output_influence(graph, norm)
        out[label] = supernodes(graph, a, infl)
        paths = refusal_paths(graph, refusal_ids, user, post_from, cfg.cover, norm)
        out[label]["paths"] = path_summary(graph, paths, infl)
        if keys is None:
            keys = path_keys(graph, paths)
        else:  # the unattacked graph's carriers, looked up in this one
            out[label]["plain_paths"] = path_summary(graph, looked_up(graph, paths, keys, user, post_from), infl)
        for row in out[label]["top_logits"]:
            row.insert(1, model.tokenizer.decode([row[0]]))
        summary = write_trace(model, tcs, graph, folder / "graphs" / f"{name}-{label}", TraceConfig(validate_top=0, feature_tokens=0),
                              transcoder_path=cfg.transcoders, slug=f"{name}-{label}", supernodes=named_groups(graph, a, paths))
        out[label]["scores"] = {k: summary[k] for k in ("replacement_score", "completeness_score")}
        out[label]["viewer"] = f"graphs/{name}-{label}/index.html"
    return out


# ------------------------------------------------------------------------------------------------ run


def explain(model, out: str | Path, cfg: ExplainConfig | None = None) -> dict:
    """Find, follow and trace successful jailbreaks of ``model`` into ``out`` (a folder llmri owns):
    ``explain.json``, ``index.html`` (every case, both graphs side by side), one ``case-N.png`` (layer × token
    maps and refusal scores, unattacked above attacked) per case, ``graphs/`` (trace folders) and
    ``answers.jsonl`` (local research records)."""
    cfg = cfg or ExplainConfig()
    out = Path(out)
    check_target(out, KIND)
    t0 = time.perf_counter()
    d = direction_and_threshold(model, cfg)
    u, layer, tau = d.u, d.layer, d.tau
    cases, tried = find_cases(model, cfg)
    say(f"llmri: {len(cases)} case(s) to explain on {model.name} (direction at layer {layer}, τ = {tau:.3f})")
    tcs = None
    if cfg.trace and cases:
        from ..circuits import default_transcoders, load_transcoders

        tcs = load_transcoders(cfg.transcoders or default_transcoders(model), model.n_layers, device=model.device)
    with claimed(out, KIND) as folder:
        mark(folder, KIND, "explain.json", "index.html", "answers.jsonl", "graphs",
             *(f"case-{i}.png" for i in range(len(cases))))
        records = []
        for i, case in enumerate(cases):
            tp = trajectory(model, case["request"], case["plain_answer"], d, cfg.response_tokens)
            ta = trajectory(model, case["attacked"], case["attacked_answer"], d, cfg.response_tokens)
            rec = {"case": i, "attack": case["attack"], "id": case["id"], "succeeded": case["succeeded"],
                   "plain": view(tp, layer, tau), "attacked": view(ta, layer, tau)}
            if tcs is not None:
                rec["graphs"] = _graphs(model, case, tp, ta, u, cfg, tcs, folder, f"case-{i}")
            write_figure(folder / f"case-{i}.png", plot_case(tp, ta, layer, tau, case))
            records.append(rec)
        with atomic_path(folder / "answers.jsonl") as tmp:
            tmp.write_text("".join(json.dumps({k: (v if k != "attacked" else _messages(v)) for k, v in c.items()}) + "\n"
                                   for c in cases))
        summary = {"kind": KIND, "model": model.name, "direction": {"from": cfg.direction or "difference of means",
                   "layer": layer, "threshold": tau, "threshold_rule": f"quantile {cfg.tau_quantile} of harmless tokens"
                   if cfg.tau_quantile else "midpoint of the last-token class means", "midpoint": d.midpoint,
                   "harmless_tokens_above_midpoint": d.harmless_above_midpoint}, "attacks": tried, "cases": records, "config": asdict(cfg),
                   "judge": "keyword", "seconds": round(time.perf_counter() - t0, 1)}
        with atomic_path(folder / "index.html") as tmp:
            tmp.write_text(render_html(summary, cases), encoding="utf-8")
        write_json(folder / "explain.json", summary)  # last: the folder is whole once it exists
    return summary


SNIPPET = 120
"""Characters of a request or an answer the page shows (the full records stay in ``answers.jsonl``)."""


def snippet(text: str, n: int = SNIPPET) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_html(summary: dict, cases: list[dict]) -> str:
    """The explain folder's ``index.html``: per case the token-by-token figure, the two graphs' supernode
    summaries side by side and both graph viewers (iframes of the trace folders). Autoescaped: model and
    prompt text never reaches the page as markup."""
    import jinja2

    snippets = [{"request": snippet(c["request"]), "attacked": snippet(c["attacked"].messages[-1]["content"] + (
                 f" [assistant prefill: {c['attacked'].prefill}]" if c["attacked"].prefill else "")),
                 "plain_answer": snippet(c["plain_answer"], 80), "attacked_answer": snippet(c["attacked_answer"], 80)}
                for c in cases]
    env = jinja2.Environment(loader=jinja2.PackageLoader("llmri", "templates"), autoescape=True)
    return env.get_template("explain.html.j2").render(s=summary, snippets=snippets)


def _messages(attacked) -> dict:
    return {"messages": attacked.messages, "prefill": attacked.prefill}


def view(traj: dict, layer: int, tau: float) -> dict:
    """What ``explain.json`` keeps of a trajectory: the answer-position refusal score, the first crossing, the
    cosine at the direction's layer per token (rounded) and where the answer starts."""
    return {"refusal_score_at_answer": float(traj["refusal_score"][traj["answer_at"] - 1]),
            "first_on": first_on(traj, layer, tau), "answer_at": traj["answer_at"], "start": traj["start"],
            "cos_at_layer": [round(float(c), 4) for c in traj["cos"][layer]],
            "max_refusal_score_in_answer": float(traj["refusal_score"][traj["answer_at"] - 1 :].max())}


def plot_case(tp: dict, ta: dict, layer: int, tau: float, case: dict):
    """Layer × token cos(x, r̂) maps and the refusal score per token, unattacked (top) and attacked (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(max(10, 0.16 * max(len(tp["tokens"]), len(ta["tokens"]))), 11),
                             gridspec_kw={"height_ratios": [3, 1, 3, 1]}, constrained_layout=True)
    lim = float(max(tp["cos"].abs().max(), ta["cos"].abs().max()))
    for (ax, ax2), traj, label in ((axes[:2], tp, "unattacked"), (axes[2:], ta, f"attacked: {case['attack']}")):
        cos = traj["cos"].numpy()
        im = ax.imshow(cos, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.axvline(traj["answer_at"] - 0.5, color="black", linewidth=1)
        ax.axhline(layer, color="grey", linewidth=0.5, linestyle=":")
        ax.set_ylabel("layer")
        ax.set_title(f"{label}: cos(resid_pre − μ, r̂) (black line: the answer starts; dotted: the direction's layer)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
        t = np.arange(len(traj["tokens"]))
        ax2.plot(t, traj["refusal_score"].numpy(), color="tab:red", label="refusal score (next token)")
        ax2.set_ylabel("refusal score", color="tab:red", fontsize=8)
        ax3 = ax2.twinx()
        ax3.plot(t, cos[layer], color="tab:blue", linewidth=0.8)
        ax3.axhline(tau, color="tab:blue", linestyle=":", linewidth=0.8)
        ax3.set_ylabel(f"cos at layer {layer} (dotted: τ)", color="tab:blue", fontsize=8)
        ax2.axvline(traj["answer_at"] - 0.5, color="black", linewidth=1)
        ax2.set_xlim(-0.5, len(t) - 0.5)
        ax2.set_xticks(t, [s.replace("\n", "⏎")[:10] for s in traj["tokens"]], rotation=90, fontsize=6)
        ax2.legend(fontsize=7, loc="upper left")
    return fig
