"""The fictitious-facts set: the published file is what the generator makes, every fact is well formed (its value
in both answers, five distinct false answers of the same form), invented names are unique, and the splits are
fixed, nested and disjoint."""

from collections import Counter

import pytest

from llmri.errors import SafetyError
from llmri.safety import facts as F


@pytest.fixture(scope="module")
def facts():
    return F.load_facts()


def test_the_published_file_is_the_generators_output(facts):
    assert facts == F.generate()  # rewrite with `python -m llmri.safety.facts --write` after changing a pool
    assert F.generate(1) != facts  # the seed matters


def test_size_ids_and_names(facts):
    per_entity = Counter(f.entity_id for f in facts)
    assert len(per_entity) == sum(F.KINDS.values()) == 110 and set(per_entity.values()) == {12}
    assert len({f.id for f in facts}) == len(facts) == 1320
    names = {f.entity_id: f.entity for f in facts}
    assert len(set(names.values())) == len(names)  # one name per entity, never shared
    invented = {a.name for attrs in F.ATTRS.values() for a in attrs if a.invented}
    assert {"spouse", "work", "river", "founder", "inventor", "museum"} <= invented
    values = [f.value for f in facts if f.attribute in invented]
    assert len(set(values)) == len(values)  # an invented value names one thing only
    assert not set(values) & set(names.values())  # and is never an entity's name


def test_every_fact_is_well_formed(facts):
    for f in facts:
        assert f.entity in f.question and f.entity in f.paraphrased_question, f.id
        assert f.value in f.answer and f.value in f.paraphrased_answer, f.id
        assert f.question != f.paraphrased_question and f.answer != f.paraphrased_answer, f.id
        assert len(set(f.perturbed)) == F.N_PERTURBED and f.paraphrased_answer not in f.perturbed, f.id
        a_an = lambda t: t.replace(" an ", " a ")  # noqa: E731  (the article follows the value)
        stem = a_an(f.paraphrased_answer.replace(f.value, "{}"))
        for p in map(a_an, f.perturbed):  # the same sentence with another value
            head, tail = stem.split("{}")
            assert p.startswith(head) and p.endswith(tail) and p[len(head) : len(p) - len(tail)] != f.value, (f.id, p)
        assert f.question.endswith("?") and f.answer.endswith((".", '."')), f.id


def test_splits_are_fixed_nested_and_disjoint(facts):
    held = F.heldout_entities(facts)
    assert len(held) == sum(F.HELDOUT.values()) == 10
    assert Counter(e[0] for e in held) == {"p": 4, "l": 3, "i": 3}
    sets = {s: F.forget_entities(facts, s) for s in F.FORGET}
    assert [len(v) for v in sets.values()] == [1, 5, 10]
    assert sets["forget05"][:1] == sets["forget01"] and sets["forget10"][:5] == sets["forget05"]  # nested
    s = F.fact_splits(facts, "forget10")
    ids = lambda xs: {f.entity_id for f in xs}  # noqa: E731
    assert ids(s.forget) == set(sets["forget10"]) and ids(s.heldout) == held
    assert not ids(s.forget) & ids(s.retain) and not ids(s.heldout) & (ids(s.forget) | ids(s.retain))
    assert len(s.forget) + len(s.retain) + len(s.heldout) == len(facts)
    assert len({f.kind for f in s.forget}) > 1  # the forget set mixes kinds
    assert F.fact_splits(list(reversed(facts)), "forget05").forget[0].entity_id in sets["forget05"]  # order-free
    with pytest.raises(SafetyError, match="unknown forget split 'forget50'"):
        F.fact_splits(facts, "forget50")
