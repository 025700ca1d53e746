"""The cloze set of real facts: the published file is what the generator makes, byte for byte; every record is well
formed (five distinct false answers of its relation's pool, leading spaces, no trailing space, one subject's 2–5
facts); scores equal a one-sequence-at-a-time Hugging Face reference; ``known`` and the module command's checks;
and the real model knows most of a fixed subset (slow)."""

import json
import re
from collections import Counter
from importlib import resources

import numpy as np
import pytest
import torch

from llmri.safety import cloze as C
from llmri.safety import cloze_data as D
from llmri.safety.knowledge import Scores, summarise


@pytest.fixture(scope="module")
def items():
    return C.load_cloze()


def test_the_published_file_is_the_generators_output_byte_for_byte(items):
    text = resources.files("llmri.safety").joinpath("data", C.FILE).read_text(encoding="utf-8")
    # rewrite with `python -m llmri.safety.cloze_data --write` after changing a table
    assert text == "".join(C.to_json(c) + "\n" for c in D.generate())
    assert items == D.generate()
    assert [c.id for c in items] == sorted(c.id for c in items)


def test_size_ids_and_subjects(items):
    assert len(items) >= 400
    per_subject = Counter(c.subject_id for c in items)
    assert len(per_subject) >= 120 and set(per_subject.values()) <= {2, 3, 4, 5}
    assert len({c.id for c in items}) == len(items)
    for c in items:
        assert c.id == f"{c.subject_id}-{c.relation}" and c.subject_id.startswith(c.category + "-"), c.id
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c.id), c.id
    subjects = {}
    for c in items:  # one subject id, one subject text
        assert subjects.setdefault(c.subject_id, c.subject) == c.subject, c.id


def test_every_record_is_well_formed(items):
    for c in items:
        assert isinstance(c.distractors, tuple) and len(c.distractors) == C.N_DISTRACTORS, c.id
        assert len(set(c.distractors)) == C.N_DISTRACTORS and c.answer not in c.distractors, c.id
        for a in (c.answer, *c.distractors):
            assert a.startswith(" ") and not a.startswith("  ") and a == a.rstrip() and len(a) > 1, (c.id, a)
        for p in (c.prompt, c.paraphrase):
            assert p and p == p.strip() and "  " not in p and "{" not in p, (c.id, p)
        assert c.prompt != c.paraphrase, c.id


def _norm(text):
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def test_no_two_records_share_a_normalised_prompt(items):
    prompts = Counter(_norm(p) for c in items for p in (c.prompt, c.paraphrase))
    assert [p for p, n in prompts.items() if n > 1] == []


def test_distractors_are_other_answers_of_the_same_pool_and_never_also_true(items):
    rows = {f["id"]: f for f in D.facts()}
    pools = D.pools(rows.values())
    assert set(rows) == {c.id for c in items}
    for c in items:
        pool = rows[c.id]["pool"]
        assert {d[1:] for d in c.distractors} <= set(pools[pool]) - {c.answer[1:]}, c.id
        assert not {d[1:] for d in c.distractors} & set(D.ALSO_TRUE.get(c.id, ())), c.id
        said = set(re.findall(r"\w+", f"{c.prompt} {c.paraphrase}".lower()))
        assert not [d for d in c.distractors if d[1:].lower() in said], c.id  # never "after October: October"
    assert set(D.ALSO_TRUE) <= set(rows)  # no stale or misspelt exception
    assert set(D.EXTRA) <= set(pools)


def test_slugs_and_articles():
    assert D.slug("the Mona Lisa") == "mona-lisa" and D.slug("Salvador Dalí") == "salvador-dali"
    assert D.slug("Harry Potter and the Philosopher's Stone") == "harry-potter-and-the-philosopher-s-stone"
    assert [D.article(w) for w in ("owl", "dog", "hour")] == ["an owl", "a dog", "an hour"]


def _reference(model, prompt, answer):
    p = model.tokenizer(prompt)["input_ids"]
    a = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = model.hf(input_ids=torch.tensor([p + a])).logits[0].float().log_softmax(-1)
    return float(np.mean([lp[len(p) - 1 + j, a[j]].item() for j in range(len(a))]))


@pytest.mark.parametrize("paraphrased", [False, True])
def test_scores_equal_a_one_sequence_at_a_time_reference(tiny, items, paraphrased):
    model = tiny("llama")
    chosen = [items[i] for i in (0, 7, 100, 333, len(items) - 1)]
    s = C.score_cloze(model, chosen, paraphrased=paraphrased, max_tokens=40)  # several padded batches
    assert s.ids == [c.id for c in chosen] and s.entities == [c.subject_id for c in chosen]
    assert s.perturbed.shape == (5, 5) and np.array_equal(s.answer, s.paraphrased)
    for r, c in enumerate(chosen):
        prompt = c.paraphrase if paraphrased else c.prompt
        for j, a in enumerate((c.answer, *c.distractors)):
            got = s.answer[r] if j == 0 else s.perturbed[r, j - 1]
            assert got == pytest.approx(_reference(model, prompt, a), abs=1e-4), (c.id, a)


def _scores(answer, perturbed, subjects):
    answer = np.log(np.asarray(answer, float))
    return Scores([f"s{i}" for i in range(len(answer))], subjects, answer, answer, np.log(np.asarray(perturbed)))


def test_known_needs_the_probability_and_the_top1(items):
    chosen = items[:4]
    s = _scores([0.6, 0.6, 0.2, 0.35], [[0.1] * 5, [0.1, 0.1, 0.7, 0.1, 0.1], [0.01] * 5, [0.3] * 5],
                [c.subject_id for c in chosen])
    s = s._replace(ids=[c.id for c in chosen])
    assert C.known_mask(s).tolist() == [True, False, False, True]
    assert C.known(chosen, s) == [chosen[0], chosen[3]]
    assert C.known(chosen, s, min_p=0.5) == [chosen[0]]
    assert C.known(chosen, s, min_p=0.1) == [chosen[0], chosen[2], chosen[3]]
    with pytest.raises(ValueError, match="same order"):
        C.known(chosen[::-1], s)
    assert summarise(s, n_boot=50)["entities"] == len({c.subject_id for c in chosen})


def test_the_module_command_refuses_bad_input_in_one_line(capsys, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("a user's file")
    for argv, text in [(["--min-p", "0"], "--min-p"), (["--min-p", "1.5"], "--min-p"), (["--limit", "0"], "--limit"),
                       (["--max-tokens", "0"], "--max-tokens"), (["--out", str(mine)], "already exists"),
                       (["--model", "/nonexistent/model"], "nonexistent")]:
        with pytest.raises(SystemExit) as got:
            C.main(argv)
        err = capsys.readouterr().err.strip()
        assert got.value.code == 2 and text in err and "\n" not in err and "Traceback" not in err, (argv, err)
    assert mine.read_text() == "a user's file"


def test_the_module_command_reports_and_writes_per_item_scores(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cloze.json"
    C.main(["--model", str(tiny_dir("llama")), "--limit", "12", "--min-p", "0.01", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed["n"] == 12 and written["n"] == 12 and len(written["items"]) == 12
    assert sum(v["n"] for v in printed["per_category"].values()) == 12
    assert printed["known"] == sum(r["p"] >= 0.01 and r["top1"] for r in written["items"])
    assert {"probability", "top1", "truth_ratio"} <= set(printed["prompt"]) and "items" not in printed


SUBSET = ("capital", "symbol")
"""Relations of the slow test's fixed subset: the country capitals and the chemical symbols (79 facts)."""


@pytest.mark.slow
def test_the_real_model_knows_most_capitals_and_chemical_symbols(real_model, items):
    """SmolLM2-135M-Instruct knew 54 of these 79 at min_p 0.3 when the set was made (31 capitals, 23 symbols);
    a model that knew nothing would pick the true answer over five false ones 1 time in 6."""
    chosen = [c for c in items if c.relation in SUBSET]
    assert len(chosen) == 79
    s = C.score_cloze(real_model, chosen)
    assert len(C.known(chosen, s)) >= 45
    assert s.top1.mean() >= 0.85
