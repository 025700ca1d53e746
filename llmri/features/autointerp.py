"""Auto-interpretation: explain features with a language model and score the explanations by detection.

* **Explainer**: a local HF chat model (:class:`HFExplainer`, any ``load_model`` spec) or any
  OpenAI-compatible chat endpoint given by URL (:class:`OpenAIExplainer`). It sees the feature's top
  contexts with the most active tokens marked ``<<like this>>`` and writes a one-line explanation.
* **Detection scoring** (as in Delphi / SAEBench): the scorer sees the explanation and one unmarked
  context at a time — half of them windows where the feature is active (a random sample across activation
  quantiles, not the examples the explanation was written from), half contexts where the feature is
  verifiably silent (re-encoded through the model and dictionary exactly as shown) — and answers Yes/No.
  Score = balanced accuracy (0.5 = chance); with a local model the P(Yes) gives an AUROC too. A control
  scores each feature with another feature's explanation, so the gap over chance can be judged honestly.
* **Cheap labels** (no LLM): the most common max-activating tokens and the top logit tokens.
"""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

import torch

from ..errors import LlmriError
from ..validate import bounded, check, check_number


class ExplainerError(LlmriError):
    """The explainer model or endpoint could not be used."""


# ---------------------------------------------------------------- cheap labels


def _quote(s: str) -> str:
    return "'" + s.replace("\n", "↵") + "'"


def cheap_labels(stats, tokenizer, n_tokens: int = 3, n_logits: int = 3) -> dict[int, str]:
    """``'tok' 'tok' → 'logit' 'logit'`` per active feature: its most frequent max-activating tokens (over
    its top and sampled examples) and its top logit effects."""
    before = stats.meta["before"]
    max_tok = torch.cat([stats.top.tokens[:, :, before], stats.samples.tokens[:, :, before]]).t()  # [n, slots]
    valid = torch.cat([stats.top.value, stats.samples.value]).t() > float("-inf")
    ids = {int(t) for t in max_tok[valid].unique()} | {int(t) for t in stats.logit_top[0][:, :n_logits].flatten()}
    text = {i: tokenizer.decode([i]) for i in ids if i >= 0}
    labels = {}
    for i in range(stats.n):
        if not bool(valid[i].any()):
            continue
        common = [t for t, _ in Counter(max_tok[i][valid[i]].tolist()).most_common(n_tokens)]
        label = " ".join(_quote(text[t]) for t in common)
        if stats.logit_top[0].shape[1]:
            label += " → " + " ".join(_quote(text[int(t)]) for t in stats.logit_top[0][i, :n_logits])
        labels[i] = label
    return labels


# ---------------------------------------------------------------- explainers


class HFExplainer:
    """A local chat model (an llmri :class:`~llmri.model.Model`) as explainer and scorer, greedy decoding."""

    def __init__(self, model, batch_size: int = 16):
        self.model, self.batch_size = model, batch_size
        self.name = model.name
        tok = model.tokenizer
        first = lambda words: sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in words})  # noqa: E731
        self.yes_ids, self.no_ids = first(["Yes", " Yes", "yes", " yes"]), first(["No", " No", "no", " no"])

    def _ids(self, messages: list[dict], room: int = 0) -> list[int]:
        tok = self.model.tokenizer
        if getattr(tok, "chat_template", None):
            ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
            ids = tok(text, add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.hf.config, "max_position_embeddings", None)
        if limit and len(ids) + room > limit:
            raise ExplainerError(f"the prompt ({len(ids)} tokens + {room} to generate) exceeds the explainer's "
                                 f"context of {limit}", "show fewer or shorter examples, or use a longer-context explainer")
        return ids

    @torch.no_grad()
    def complete(self, messages: list[dict], max_tokens: int = 48) -> str:
        ids = torch.tensor([self._ids(messages, max_tokens)], device=self.model.device)
        out = self.model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=self.model.tokenizer.pad_token_id or self.model.bos_id)
        return self.model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def yes_probabilities(self, prompts: list[list[dict]]) -> list[float]:
        """P(Yes) / (P(Yes) + P(No)) for the first answer token of each prompt (case and leading space
        folded), in right-padded batches."""
        out = []
        for s in range(0, len(prompts), self.batch_size):
            rows = [self._ids(m) for m in prompts[s : s + self.batch_size]]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), self.model.bos_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, x in enumerate(rows):
                ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
            logits = self.model.hf(ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
            last = logits[torch.arange(len(rows)), torch.tensor([len(x) - 1 for x in rows])].float().log_softmax(-1)
            diff = torch.logsumexp(last[:, self.yes_ids], 1) - torch.logsumexp(last[:, self.no_ids], 1)
            out += torch.sigmoid(diff).tolist()
        return out


class OpenAIExplainer:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama, OpenAI...).
    The key, if needed, comes from ``OPENAI_API_KEY`` (or ``api_key``)."""

    def __init__(self, url: str, model: str = "", api_key: str | None = None, timeout: float = 120.0):
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model_id, self.timeout = model, timeout
        self.key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.name = f"{model or 'default'} @ {url}"

    def complete(self, messages: list[dict], max_tokens: int = 48) -> str:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if self.model_id:
            body["model"] = self.model_id
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.key}"} if self.key else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
            return reply["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as err:
            raise ExplainerError(f"the explainer endpoint {self.url} failed ({err})",
                                 "check the URL (…/v1), the model name and OPENAI_API_KEY") from None

    def yes_probabilities(self, prompts: list[list[dict]]) -> list[float]:
        """1 for an answer starting with yes, 0 otherwise (chat endpoints give no portable probabilities)."""
        return [1.0 if self.complete(m, max_tokens=3).strip().lower().startswith("yes") else 0.0 for m in prompts]


def make_explainer(spec: str, *, model_name: str = "", device: str = "cpu"):
    """``http(s)://…`` → an endpoint; anything else → a local model spec for ``load_model``."""
    if spec.startswith(("http://", "https://")):
        return OpenAIExplainer(spec, model_name)
    from ..model import load_model

    return HFExplainer(load_model(spec, device=device))


# ---------------------------------------------------------------- prompts


SYSTEM = ("You are a meticulous interpretability researcher. A feature of a language model activates on some "
          "tokens of text. You look at examples and say what the feature detects.")


def _text(tokens: list[str], acts: list[float] | None = None, mark: float = 0.5) -> str:
    """Join tokens; with ``acts``, wrap tokens above ``mark`` × the example's max in << >>."""
    if acts is None:
        return "".join(tokens).replace("\n", " ").strip()
    top = max(acts) if acts else 0
    out = []
    for t, a in zip(tokens, acts):
        out.append(f"<<{t}>>" if top > 0 and a >= mark * top else t)
    return "".join(out).replace("\n", " ").strip()


def explain_prompt(examples: list[tuple[list[str], list[float]]]) -> list[dict]:
    lines = [f"Example {j + 1}: {_text(t, a)}" for j, (t, a) in enumerate(examples)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "The feature is most active on the tokens marked <<like this>>.\n\n"
             + "\n".join(lines) + "\n\nIn one short phrase (under 12 words), what does the feature detect? "
             "Reply with the phrase only."}]


def detect_prompt(explanation: str, tokens: list[str]) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Feature explanation: {explanation}\n\nText: {_text(tokens)}\n\n"
             "Does the feature described by the explanation appear in this text? Answer Yes or No."}]


# ---------------------------------------------------------------- the pipeline


@dataclass
class InterpConfig:
    """What ``llmri interp`` explains and how it scores."""

    features: list[int] | None = None
    """Features to explain (default: ``n_features`` random alive ones); each an index ≥ 0."""
    n_features: int = bounded(20, 1)
    """How many random alive features when ``features`` is not given; ≥ 1."""
    explain_examples: int = bounded(10, 1)
    """Top contexts shown to the explainer; ≥ 1."""
    score_examples: int = bounded(10, 1)
    """Activating contexts scored per feature (and as many non-activating ones); ≥ 1."""
    max_new_tokens: int = bounded(40, 1)
    """Length limit of an explanation; ≥ 1."""
    control: bool = True
    """Also score each feature with another feature's explanation (the chance baseline)."""
    seed: int = bounded(0, 0)
    """Seeds the feature choice and the example draws; ≥ 0."""

    def __post_init__(self):
        check(self, ExplainerError)
        for i in self.features or ():
            check_number("InterpConfig.features entry", i, 0, integer=True, error=ExplainerError)


def _strings(tokenizer, ids: list[int], cache: dict[int, str]) -> list[str]:
    for t in ids:
        if t not in cache:
            cache[t] = tokenizer.decode([t])
    return [cache[t] for t in ids]


@torch.no_grad()
def _silent(model, d, feature: int, contexts: list[list[int]]) -> list[bool]:
    """Whether ``feature`` stays at 0 on every token of each context, encoded exactly as shown (after the
    document-start token; right-padded batch, so padding never affects the real tokens)."""
    from .stats import encode_rows

    if not contexts:
        return []
    width = 1 + max(map(len, contexts))
    ids = torch.full((len(contexts), width), model.bos_id, dtype=torch.long)
    real = torch.zeros_like(ids, dtype=torch.bool)
    for r, c in enumerate(contexts):
        ids[r, 1 : 1 + len(c)], real[r, 1 : 1 + len(c)] = torch.tensor(c), True
    acts = model.capture(ids.to(model.device), list(d.cfg.in_points))
    real = real.to(model.device)
    rows, feats, _ = encode_rows(d, {p: a[real].float() for p, a in acts.items()})
    fired = torch.zeros(int(real.sum()), dtype=torch.bool, device=real.device)
    fired[rows[feats == feature]] = True
    per_context = torch.zeros(len(contexts), dtype=torch.long, device=real.device)
    per_context.index_add_(0, real.nonzero()[:, 0], fired.long())
    return (per_context == 0).tolist()


def _balanced_accuracy(p_pos: list[float], p_neg: list[float]) -> float:
    tpr = sum(p >= 0.5 for p in p_pos) / max(len(p_pos), 1)
    tnr = sum(p < 0.5 for p in p_neg) / max(len(p_neg), 1)
    return (tpr + tnr) / 2


def _auroc(p_pos: list[float], p_neg: list[float]) -> float:
    pairs = [(a > b) + 0.5 * (a == b) for a in p_pos for b in p_neg]
    return sum(pairs) / max(len(pairs), 1)


def _score(explainer, explanation: str, pos: list[list[str]], neg: list[list[str]]) -> dict:
    if not pos or not neg:
        return {"score": None, "auroc": None, "n_pos": len(pos), "n_neg": len(neg),
                "note": "too few activating or silent contexts to score"}
    p = explainer.yes_probabilities([detect_prompt(explanation, t) for t in pos + neg])
    p_pos, p_neg = p[: len(pos)], p[len(pos) :]
    return {"score": _balanced_accuracy(p_pos, p_neg), "auroc": _auroc(p_pos, p_neg), "n_pos": len(pos), "n_neg": len(neg)}


def _pool(stats, rng: random.Random) -> list[list[int]]:
    """Corpus contexts to draw non-activating examples from: sampled windows of up to 200 other features."""
    alive = [i for i in range(stats.n) if int(stats.counts[i]) > 0]
    return [e["tokens"] for j in rng.sample(alive, min(len(alive), 200)) for e in stats.examples(j, "samples")[:3]]


def _scoring_set(stats, model, d, i: int, rng: random.Random, pool, n: int, skip: set[int]) -> tuple[list, list]:
    """``n`` activating contexts of feature ``i`` (its random sample, minus windows in ``skip``) and as many
    contexts on which it is verifiably silent."""
    samples = [e for e in stats.examples(i, "samples") if e["window"] not in skip]
    pos = [e["tokens"] for e in rng.sample(samples, min(n, len(samples)))]
    candidates = rng.sample(pool, min(len(pool), 4 * n))
    neg = [c for c, ok in zip(candidates, _silent(model, d, i, candidates)) if ok][: len(pos)]
    return pos, neg


def interpret(stats, model, d, explainer, cfg: InterpConfig | None = None, progress=None) -> dict[str, dict]:
    """Explain and score features; returns ``{str(feature): {explanation, score, auroc, control_score, …}}``.
    ``model`` and ``d`` are the LM and dictionary the statistics came from (to verify silent contexts)."""
    cfg = cfg or InterpConfig()
    rng = random.Random(cfg.seed)
    alive = [i for i in range(stats.n) if int(stats.counts[i]) > 0]
    if cfg.features is not None:
        bad = [i for i in cfg.features if not 0 <= i < stats.n]
        if bad:
            raise ExplainerError(f"feature {bad[0]} does not exist", f"use indices 0..{stats.n - 1}")
        chosen = list(cfg.features)
    else:
        chosen = sorted(rng.sample(alive, min(cfg.n_features, len(alive))))
    if not chosen:
        raise ExplainerError("no active features to explain", "compute statistics over more tokens")
    tok, cache = model.tokenizer, {}
    pool = _pool(stats, rng)
    strings = lambda ts: [_strings(tok, t, cache) for t in ts]  # noqa: E731
    out: dict[str, dict] = {}
    sets = {}
    for i in chosen:
        top = stats.examples(i, "top")[: cfg.explain_examples]
        if not top:
            out[str(i)] = {"explanation": "", "score": None, "note": "dead feature"}
            continue
        text = explainer.complete(explain_prompt([(_strings(tok, e["tokens"], cache), e["acts"]) for e in top]),
                                  cfg.max_new_tokens)
        text = text.strip().splitlines()[0].strip() if text.strip() else "(empty explanation)"
        pos, neg = _scoring_set(stats, model, d, i, rng, pool, cfg.score_examples, {e["window"] for e in top})
        sets[i] = (strings(pos), strings(neg))
        out[str(i)] = {"explanation": text, "explainer": explainer.name, **_score(explainer, text, *sets[i])}
        if progress:
            progress.advance(1)
    named = list(sets)
    if cfg.control and len(named) > 1:  # each feature's examples scored with the next feature's explanation
        for a, b in zip(named, named[1:] + named[:1]):
            if out[str(a)]["score"] is not None:
                s = _score(explainer, out[str(b)]["explanation"], *sets[a])
                out[str(a)] |= {"control_score": s["score"], "control_auroc": s["auroc"]}
    return out


def summary(explanations: dict[str, dict]) -> dict:
    """Mean scores with their sample size, and the control (another feature's explanation) for comparison."""
    scored = [e for e in explanations.values() if e.get("score") is not None]

    def mean(key: str) -> float | None:
        vals = [e[key] for e in scored if e.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {"features": len(explanations), "scored": len(scored), "mean_score": mean("score"),
            "mean_auroc": mean("auroc"), "mean_control_score": mean("control_score"),
            "mean_control_auroc": mean("control_auroc"),
            "scored_examples": sum(e["n_pos"] + e["n_neg"] for e in scored)}
