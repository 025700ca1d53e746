"""Real knowledge of a model: cloze facts it can complete, for unlearning research on knowledge it already has.

    items = load_cloze()                       # project-written facts about real subjects (capitals, authors, …)
    s = score_cloze(model, items)              # ℓ(answer) and ℓ(five false answers) after each prompt
    mine = known(items, s, min_p=0.3)          # the facts the model gets right: candidates to unlearn

Each item is a plain-text prefix that ends right before a short answer ("The capital of France is" →
" Paris"), a differently worded prefix with the same answer (the *paraphrase*), and five false answers of the
same kind drawn from the other answers of the same relation (" Berlin", " Madrid", …). The set and how it is
made are in :mod:`llmri.safety.cloze_data` (``llmri/safety/data/cloze.jsonl``).

Every answer is read, not generated, as raw text (no chat template: a cloze prefix is a document, not a
request): its **mean token log-probability** ℓ(a | prompt), one forward pass per prompt for all six answers
(:func:`llmri.safety.knowledge.packed_logprobs`). The measures are those of :mod:`llmri.safety.knowledge`,
read from the same :class:`~llmri.safety.knowledge.Scores`:

- ``probability`` = exp ℓ(answer): the per-token probability of the true answer;
- **top-1**: the true answer beats all five false ones (chance 1/6 for a model that knows nothing and has no
  preference among the six);
- **truth ratio** R = exp(mean_i ℓ(false_i) − ℓ(answer)): < 1 when the model prefers the truth;
- **known** (:func:`known`): probability ≥ ``min_p`` *and* top-1: the model both produces the answer and
  prefers it to the alternatives. These are the facts whose unlearning can be measured.

With ``paraphrased=True`` the same answers are read after the paraphrase (knowledge that survives rewording).
Intervals (:func:`llmri.safety.knowledge.summarise`): percentile bootstrap over *subjects* (a subject's 2–5
facts are not independent), so a split by subject and its intervals agree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..errors import LlmriError, SafetyError
from ..lens import Lens
from .knowledge import Scores, packed_logprobs, summarise

FILE = "cloze.jsonl"
N_DISTRACTORS = 5


@dataclass(frozen=True)
class Cloze:
    """One fact about a real subject, as a prompt to complete."""

    id: str
    """``{subject_id}-{relation}``; never changes once published."""
    subject_id: str
    """``{category}-{slug of the subject}``, e.g. ``country-france``; the unit of splits and intervals."""
    subject: str
    """The subject as it appears in the text ("France", "the Mona Lisa")."""
    category: str
    """The kind of subject: ``country``, ``element``, ``book``, ``animal``, …"""
    relation: str
    """What the answer is to the subject: ``capital``, ``author``, ``young``, …"""
    prompt: str
    """Plain text that ends right before the answer (no trailing space)."""
    answer: str
    """The true continuation, with its leading space (" Paris")."""
    paraphrase: str
    """A differently worded prompt with the same answer."""
    distractors: tuple[str, ...]
    """Five false answers of the same kind (other answers of the same relation), with leading spaces."""


def to_json(c: Cloze) -> str:
    return json.dumps(asdict(c), ensure_ascii=False)


@lru_cache(maxsize=1)
def _read() -> tuple[Cloze, ...]:
    from .behaviours import packaged_jsonl

    return tuple(Cloze(**{**r, "distractors": tuple(r["distractors"])}) for r in packaged_jsonl(FILE.removesuffix(".jsonl")))


def load_cloze() -> list[Cloze]:
    """The published set (``llmri/safety/data/cloze.jsonl``), sorted by id."""
    return list(_read())


# ------------------------------------------------------------------------------------------------ scoring


def score_cloze(model, items: Sequence[Cloze], paraphrased: bool = False, max_tokens: int = 2048,
                progress: str = "cloze", lens: Sequence[int] | Lens | None = None) -> Scores | list[Scores]:
    """:class:`Scores` of ``items``: ℓ of the answer and of the five distractors after the prompt (or the
    paraphrase), raw text, one read of each prompt for its six answers. ``answer`` and ``paraphrased`` hold the
    same array (the answer is the same after either prompt), ``perturbed`` the distractors, so ``top1`` and
    ``truth_ratio`` compare the answer with them. With ``lens``, one :class:`Scores` per layer read through the
    logit lens, from one forward pass."""
    tok = model.tokenizer
    prompts = [prompt_ids(model, c.paraphrase if paraphrased else c.prompt) for c in items]
    answers = [[tok(a, add_special_tokens=False)["input_ids"] for a in (c.answer, *c.distractors)] for c in items]
    lp = np.array(packed_logprobs(model, prompts, answers, max_tokens, progress=f"{progress}: reading answers",
                                  lens=lens)).reshape(len(items), 1 + N_DISTRACTORS, -1)
    out = [Scores([c.id for c in items], [c.subject_id for c in items], x[:, 0], x[:, 0], x[:, 1:])
           for x in np.moveaxis(lp, -1, 0)]
    return out if lens is not None else out[0]


def prompt_ids(model, text: str) -> list[int]:
    """A cloze prompt's token ids: raw text, with the tokenizer's own special tokens (none for SmolLM2)."""
    return model.tokenizer(text)["input_ids"]


def known_mask(scores: Scores, min_p: float = 0.3) -> np.ndarray:
    """[n] bool: probability of the answer ≥ ``min_p`` and the answer beats all five distractors."""
    return (np.exp(scores.answer) >= min_p) & scores.top1


def known(items: Sequence[Cloze], scores: Scores, min_p: float = 0.3) -> list[Cloze]:
    """The items the model gets right (:func:`known_mask`), in their order."""
    if [c.id for c in items] != list(scores.ids):
        raise ValueError("known() needs the scores of these items, in the same order")
    return [c for c, k in zip(items, known_mask(scores, min_p)) if k]


# ------------------------------------------------------------------------------------------------ report


def report(items: Sequence[Cloze], s: Scores, sp: Scores, min_p: float) -> dict:
    """What a model knows: counts per category, then the measures with intervals over subjects."""
    mask, mask_p = known_mask(s, min_p), known_mask(sp, min_p)
    cats = sorted({c.category for c in items})
    per_cat = {k: {"n": sum(c.category == k for c in items),
                   "known": int(sum(m for c, m in zip(items, mask) if c.category == k))} for k in cats}
    return {"n": len(items), "subjects": len({c.subject_id for c in items}), "min_p": min_p,
            "known": int(mask.sum()), "known_paraphrase": int(mask_p.sum()),
            "known_both": int((mask & mask_p).sum()), "per_category": per_cat,
            "prompt": summarise(s), "paraphrase": summarise(sp)}


def per_item(s: Scores, sp: Scores) -> list[dict]:
    """One row per item: probability and top-1 after the prompt and after the paraphrase."""
    p, pp = np.exp(s.answer), np.exp(sp.answer)
    return [{"id": i, "p": round(float(a), 6), "top1": bool(t), "p_paraphrase": round(float(b), 6),
             "top1_paraphrase": bool(u)} for i, a, t, b, u in zip(s.ids, p, s.top1, pp, sp.top1)]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m llmri.safety.cloze --model M``: how many of the cloze facts M knows (JSON)."""
    import argparse
    from pathlib import Path

    from ..atomic import write_json
    from ..model import load_model

    ap = argparse.ArgumentParser(prog="python -m llmri.safety.cloze", description=main.__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--min-p", type=float, default=0.3, help="probability of the answer that counts as known")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N items")
    ap.add_argument("--max-tokens", type=int, default=2048, help="padded tokens per forward pass")
    ap.add_argument("--out", default=None, help="also write the report and per-item scores to this JSON file")
    args = ap.parse_args(argv)
    try:
        if not 0 < args.min_p <= 1:
            raise SafetyError(f"--min-p must be in (0, 1], got {args.min_p}", "pass e.g. --min-p 0.3")
        if args.limit is not None and args.limit < 1:
            raise SafetyError(f"--limit must be ≥ 1, got {args.limit}", "pass --limit 50, or leave it out for all")
        if args.max_tokens < 1:
            raise SafetyError(f"--max-tokens must be ≥ 1, got {args.max_tokens}", "pass --max-tokens 2048")
        if args.out and Path(args.out).exists():  # a JSON file carries no marker: never replace one not ours
            raise SafetyError(f"{args.out} already exists", "choose a new --out path, or delete that file first")
        items = load_cloze()[: args.limit]
        model = load_model(args.model)
        s = score_cloze(model, items, max_tokens=args.max_tokens, progress="prompts")
        sp = score_cloze(model, items, paraphrased=True, max_tokens=args.max_tokens, progress="paraphrases")
        out = {"model": model.name, "chance_top1": 1 / (1 + N_DISTRACTORS), **report(items, s, sp, args.min_p)}
        if args.out:
            write_json(args.out, {**out, "items": per_item(s, sp)})
    except LlmriError as err:  # a user's mistake: one line, exit 2, as from the CLI
        print(f"llmri: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
