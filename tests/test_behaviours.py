"""Behaviour sets: counts, de-duplication, fixed splits with no fitting/evaluation overlap, the form match of
the harmless set, the response labels, and one-line errors. Reads the cached harmful-set assets (small files)."""

import hashlib
import json
import re

import pytest

from llmri.errors import SafetyError
from llmri.safety import behaviours as B


def test_counts():
    assert len(B.load_set("harmbench")) == 200
    assert len(B.load_set("strongreject")) == 313
    assert len(B._raw("advbench")) == 520
    dropped = B.dedup_report()["advbench dropped"]
    assert 25 <= dropped < 60  # StrongREJECT took 25 of its prompts from AdvBench verbatim
    assert len(B.load_set("advbench")) == 520 - dropped
    assert len(B.load_set("harmless")) >= 400
    assert len(B.load_set("overrefusal")) >= 150
    assert len(B.load_responses()) >= 200


def test_advbench_reader_matches_yaml():
    yaml = pytest.importorskip("yaml")
    seeds = yaml.safe_load(B.asset_path("advbench").read_text(encoding="utf-8"))["seeds"]
    assert B._read_advbench(B.asset_path("advbench").read_text(encoding="utf-8")) == [
        (s["harm_categories"][0], s["value"]) for s in seeds]


def test_ids_unique_and_stable():
    items = [b for name in B.SETS for b in B._raw(name)]
    ids = [b.id for b in items] + [r.id for r in B.load_responses()]
    assert len(ids) == len(set(ids))
    for b in items:
        assert re.fullmatch(rf"{b.source}-\d{{3}}", b.id) and b.prompt.strip() == b.prompt and b.prompt
    raw = {b.id: b for b in B._raw("advbench")}
    assert all(raw[b.id] == b for b in B.load_set("advbench"))  # de-duplication keeps the upstream numbering


def test_near_duplicate_rule():
    assert B.near_duplicate("Give detailed instructions for how to bake sourdough bread",
                            "Write a tutorial on how to bake sourdough bread.")
    assert not B.near_duplicate("Explain how to bake sourdough bread", "Explain how to bake banana bread")
    assert B.near_duplicate("Create a bot that posts weather updates on social media",
                            "Create a bot that posts weather updates on social media. Give me step by step "
                            "instructions and show an example in Python.")
    assert B.near_duplicate("What is a Ponzi scheme?", "what is a ponzi scheme")


def test_advbench_keeps_no_duplicate_of_the_evaluation_sets():
    evaluation = B.load_set("harmbench") + B.load_set("strongreject")
    assert B.duplicates(B.load_set("advbench"), evaluation) == []
    report = B.dedup_report()
    assert report["advbench~strongreject"] >= 25 and report["advbench~harmbench"] >= 1


def test_no_overlap_between_fitting_and_evaluation():
    fit = [b for items in B.fitting().values() for b in items] + B.load_set("overrefusal", "train")
    ev = [b for items in B.evaluation().values() for b in items]
    assert {b.split for b in fit} == {"train"} and {b.split for b in ev} == {"test"}
    assert not {B.normalise(b.prompt) for b in fit} & {B.normalise(b.prompt) for b in ev}
    assert B.duplicates(fit, ev) == []
    # harmless prompts restate no harmful behaviour, in either split
    assert B.duplicates(B.load_set("harmless") + B.load_set("overrefusal"), B.harmful_pool()) == []


def test_splits_are_fixed_by_id():
    assert B.split_of("harmless", "harmless-000") == B.split_of("harmless", "harmless-000")
    assert [B.split_of("harmless", f"harmless-{i:03d}") for i in range(6)] == [
        "test", "test", "test", "test", "train", "test"]  # pinned: changing SALT or the rule moves items
    for b in B.load_set("overrefusal"):  # the documented rule, recomputed independently
        h = hashlib.sha256(f"llmri-safety-v1:{b.id}".encode()).digest()
        assert b.split == ("test" if int.from_bytes(h[:8], "big") < 0.75 * 2**64 else "train")
    for name, lo, hi in (("harmless", 0.4, 0.6), ("overrefusal", 0.65, 0.85)):
        items = B.load_set(name)
        test = B.load_set(name, "test")
        assert lo < len(test) / len(items) < hi
        assert len(test) + len(B.load_set(name, "train")) == len(items)
    assert B.load_set("harmbench", "test") == B.load_set("harmbench")
    assert B.load_set("advbench", "train") == B.load_set("advbench")
    r = B.load_responses()
    assert len(B.load_responses("train")) + len(B.load_responses("test")) == len(r)


def test_harmless_matches_the_harmful_form():
    harmful, harmless = B.form_stats(B.harmful_pool()), B.form_stats(B.load_set("harmless"))
    assert abs(harmless.mean_words / harmful.mean_words - 1) <= 0.2
    assert abs(harmless.question_fraction - harmful.question_fraction) <= 0.10
    assert B.form("How do I fix a squeaky hinge") == "question"
    assert B.form("I moved last year. What should I do first?") == "question"
    assert B.form("Write a poem about snow") == "imperative"
    assert len({b.category for b in B.load_set("harmless")}) >= 10


def test_describe_prints_both_histograms(capsys):
    B.main(["--describe"])
    out = capsys.readouterr().out
    assert "harmful" in out and "harmless" in out and "mean words" in out and "questions" in out
    assert sum(bool(re.match(r"\s*\d+(-\d+|\+)\s+\d+\.\d%", line)) for line in out.splitlines()) == 13
    assert "advbench dropped" in out


def test_data_files_have_the_documented_fields():
    for name in ("harmless", "overrefusal"):
        for line in (B.DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert set(row) == {"id", "category", "prompt"} and row["category"] and row["prompt"]
    types = {b.category for b in B.load_set("overrefusal")}
    assert len(types) >= 8 and {"homonyms", "figurative_language", "safe_targets", "safe_contexts",
                                "definitions", "historical_events", "privacy_public_figures"} <= types
    assert (B.DATA / "PROVENANCE.md").is_file()


def test_response_labels_and_cases():
    responses = B.load_responses()
    assert {r.label for r in responses} == set(B.LABELS)
    kinds = {r.kind for r in responses}
    assert {"plain-refusal", "hedged-refusal", "refuse-then-comply", "compliance-harmless", "compliance-redacted",
            "off-topic", "non-english", "empty", "cut-off"} <= kinds
    assert {r.label for r in responses if r.kind == "non-english"} >= {"refusal", "compliance"}
    assert all(r.label == "partial" for r in responses if r.kind == "refuse-then-comply")
    assert all(r.label == "refusal" for r in responses if r.kind in ("empty", "off-topic"))
    sources = {r.prompt_id.rsplit("-", 1)[0] for r in responses}
    assert {"harmless", "advbench", "harmbench", "strongreject"} <= sources
    prompts = {b.id: b.prompt for name in B.SETS for b in B._raw(name)}
    assert all(r.prompt == prompts[r.prompt_id] for r in responses)


def test_compliant_answers_to_harmful_prompts_are_redacted():
    harmful = {b.id for name in B.HARMFUL for b in B._raw(name)}
    for r in B.load_responses():
        if r.prompt_id in harmful and r.label == "compliance" and r.kind != "cut-off":
            assert re.search(r"\[(redact|expurg)", r.response), r.id


def test_errors_are_one_line():
    with pytest.raises(SafetyError) as err:
        B.load_set("harmbnech")
    message = str(err.value)
    assert "\n" not in message and "harmbnech" in message and all(n in message for n in B.SETS)
    for call in (lambda: B.load_set("harmbench", "train"), lambda: B.load_set("advbench", "test"),
                 lambda: B.load_set("harmless", "eval"), lambda: B.load_responses("dev")):
        with pytest.raises(SafetyError) as err:
            call()
        assert "\n" not in str(err.value)
