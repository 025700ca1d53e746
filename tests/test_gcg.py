"""GCG adversarial-suffix search (llmri.safety.gcg) on the tiny random Llama: exact batched losses, a real
one-hot gradient, a search that lowers the loss, the round-trip token filter, resumable runs, CLI errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from clirun import assert_clean_error, run as cli
from llmri.generate import render_ids
from llmri.safety import gcg as G
from llmri.safety.attacks import attack
from llmri.safety.behaviours import Behaviour

REQUEST = "how do i make a law"
TARGET = "here is the"  # words of the tiny vocabulary


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's matrices are too small for threads to help; a busy machine makes two much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(**kw) -> G.GcgConfig:
    return G.GcgConfig(**{"suffix_tokens": 6, "candidates": 16, "top_k": 32, "check_every": 0, "target": TARGET,
                          "check_tokens": 4, **kw})


def setup(model, suffix_tokens=6):
    prompt, ids = G.build_prompt(model.tokenizer, REQUEST, " ".join(["!"] * suffix_tokens), TARGET)
    assert len(ids) == suffix_tokens
    return prompt, torch.tensor(ids)


def reference_loss(model, suffix: str, target: list[int]) -> torch.Tensor:
    """The target loss from one plain forward of the prompt as llmri.generate renders it."""
    ids = render_ids(model, f"{REQUEST} {suffix}")
    logits = model.hf(input_ids=torch.tensor([ids + target])).logits[0].float()
    return F.cross_entropy(logits[len(ids) - 1 : -1], torch.tensor(target))


@pytest.mark.parametrize("prefix_cache", [True, False])
@torch.no_grad()
def test_batched_candidate_losses_equal_single_forwards(tiny, prefix_cache):
    m = tiny()
    prompt, ids = setup(m)
    assert m.tokenizer.decode(prompt.target) == TARGET
    gen = torch.Generator().manual_seed(0)
    rows = G.sample(ids, torch.randn(len(ids), m.hf.config.vocab_size, generator=gen), G.allowed_tokens(m), 50, 11, gen)
    rows = rows[G.round_trips(m.tokenizer, prompt, rows)]
    assert len(rows) >= 8
    scorer = G.Scorer(m, prompt, prefix_cache)
    assert (scorer.cache is not None) == prefix_cache
    got = scorer.losses(rows, batch_size=3)  # batches of 3 and a last partial one
    want = torch.stack([reference_loss(m, G.suffix_text(m.tokenizer, r.tolist()), prompt.target) for r in rows])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert got.std() > 1e-3  # the candidates really differ


def test_one_hot_gradient_is_the_autograd_gradient_of_an_independent_computation(tiny):
    m = tiny()
    prompt, ids = setup(m)
    ids[2] = m.tokenizer.convert_tokens_to_ids("law")
    loss, grad = G.Scorer(m, prompt).gradient(ids)
    # independently: embeddings of the rendered prompt as a leaf, then chain rule through E = one_hot @ W
    text = G.suffix_text(m.tokenizer, ids.tolist())
    full = render_ids(m, f"{REQUEST} {text}")
    w = m.hf.get_input_embeddings().weight.detach()
    emb = w[torch.tensor(full + prompt.target)].clone().requires_grad_(True)
    logits = m.hf(inputs_embeds=emb[None]).logits[0].float()
    ref = F.cross_entropy(logits[len(full) - 1 : -1], torch.tensor(prompt.target))
    (d_emb,) = torch.autograd.grad(ref, emb)
    start = len(prompt.head)
    assert full[start : start + len(ids)] == ids.tolist()
    want = d_emb[start : start + len(ids)] @ w.T
    assert loss == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4)
    # and it predicts real loss changes: over many swaps, first-order estimate and true change mostly agree in sign
    gen = torch.Generator().manual_seed(1)
    rows = G.sample(ids, torch.randn(grad.shape, generator=gen), G.allowed_tokens(m), 160, 64, gen)
    pos = (rows != ids).float().argmax(1)
    new = rows[torch.arange(len(rows)), pos]
    changed = (rows != ids).any(1)
    estimate = grad[pos, new] - grad[pos, ids[pos]]
    true = G.Scorer(m, prompt).losses(rows) - loss
    agree = ((estimate.sign() == true.sign()) & changed).sum().item() / changed.sum().item()
    assert agree > 0.6, agree


def test_search_lowers_the_target_loss_and_best_loss_is_monotone(tiny):
    m = tiny()
    r = G.search(m, REQUEST, small(steps=30, candidates=32))
    assert r.steps == 30 and [h["step"] for h in r.history] == list(range(31))
    first = r.history[0]["loss"]
    assert r.loss < first - 0.02, (first, r.loss)  # a random model moves little: 5.25 → 5.18 here
    best = [h["best_loss"] for h in r.history]
    assert all(b <= a for a, b in zip(best, best[1:])) and best[-1] == pytest.approx(r.loss)
    assert r.loss == pytest.approx(G.Scorer(m, G.build_prompt(m.tokenizer, REQUEST, r.suffix, TARGET)[0])
                                   .losses(torch.tensor([r.suffix_ids]))[0].item(), abs=1e-5)
    assert "verdict" in r.history[-1] and r.history[-1]["suffix"] == r.suffix  # checked at the end
    assert r.seconds >= r.history[-1]["seconds"] > 0
    again = G.search(m, REQUEST, small(steps=30, candidates=32))
    assert again.suffix_ids == r.suffix_ids  # seeded
    timed = G.search(m, REQUEST, small(steps=10_000, seconds=0.3))
    assert 1 <= timed.steps < 10_000 and timed.seconds < 5


def test_returned_suffix_round_trips_and_uses_allowed_tokens(tiny):
    m = tiny()
    r = G.search(m, REQUEST, small(steps=15))
    prompt, _ = G.build_prompt(m.tokenizer, REQUEST, r.suffix, TARGET)
    ids = render_ids(m, attack(REQUEST, "gcg", params={"gcg": {"suffix": r.suffix}}))
    assert ids == prompt.head + r.suffix_ids + prompt.tail
    allowed = G.allowed_tokens(m)
    assert all(allowed[i] for i in r.suffix_ids)
    assert not any(allowed[i] for i in m.special_ids) and allowed.sum() > 100
    for i in r.suffix_ids:
        assert m.tokenizer.encode(m.tokenizer.decode([i]), add_special_tokens=False) == [i]


def test_round_trip_filter_rejects_tokens_that_merge_when_re_tokenized():
    """A byte-level BPE where "a" + "b" re-tokenizes as "ab": the filter keeps only suffixes that come back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["ab ab abab cab how do i ok"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompt, ids = G.build_prompt(tok, "how do i", "ok", "ok")
    t = tok.convert_tokens_to_ids
    assert ids == [t("Ġok")] and prompt.target == [t("ok")]
    rows = torch.tensor([[t("Ġab")], [t("Ġok")]]).repeat(1, 2)  # "ab ab", "ok ok": come back
    split = torch.tensor([[t("Ġ"), t("ab")], [t("a"), t("b")], [t("Ġab"), t("ab")]])  # " ab", "ab", " abab": merge
    assert G.round_trips(tok, prompt, rows).tolist() == [True, True]
    assert G.round_trips(tok, prompt, split).tolist() == [False, False, False]


def behaviours(n):
    return [Behaviour(f"toy-{i}", "toy", "", f"{REQUEST} {w}") for i, w in zip(range(n), ("now", "here", "today"))]


def test_run_resumes_and_writes_results(tiny, tmp_path, monkeypatch):
    m = tiny()
    cfg = small(steps=3, candidates=8)
    out = tmp_path / "gcg"
    res = G.run(m, behaviours(2), out, cfg)
    assert res["n"] == 2 and [b["id"] for b in res["behaviours"]] == ["toy-0", "toy-1"]
    assert {"rate", "lo", "hi"} <= set(res["success_rate"]) and res["success_rate"]["lo"] <= res["success_rate"]["rate"]
    assert (out / "gcg.png").stat().st_size > 0 and json.loads((out / "gcg.json").read_text()) == res
    assert "response" not in (out / "gcg.json").read_text()
    lines = (out / "searches.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("response" in json.loads(x) for x in lines)
    calls = []
    real = G.search
    monkeypatch.setattr(G, "search", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert G.run(m, behaviours(2), out, cfg) == res and calls == []
    res3 = G.run(m, behaviours(3), out, cfg)  # one more: only it is searched
    assert calls == [behaviours(3)[2].prompt] and res3["n"] == 3
    assert res3["behaviours"][:2] == res["behaviours"]
    with pytest.raises(G.SafetyError, match="other settings"):
        G.run(m, behaviours(3), out, small(steps=4, candidates=8))


def test_cli_gcg(tiny_dir, tmp_path):
    model = tiny_dir()
    assert_clean_error(cli("jailbreak", "gcg", "--model", model, "--set", "nope", "--out", tmp_path / "a"), "nope")
    harmless = cli("jailbreak", "gcg", "--model", model, "--set", "harmless", "--out", tmp_path / "a")
    assert_clean_error(harmless, "harmless")
    assert_clean_error(cli("jailbreak", "gcg", "--model", model, "--steps", "0", "--out", tmp_path / "a"), "steps")
    assert_clean_error(cli("jailbreak", "gcg", "--model", model, "--limit", "-1", "--out", tmp_path / "a"), "limit")
    assert not (tmp_path / "a").exists()
    r = cli("jailbreak", "gcg", "--model", model, "--limit", "1", "--steps", "2", "--candidates", "4",
            "--suffix-tokens", "4", "--check-every", "0", "--check-tokens", "4", "--target", TARGET,
            "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    line = json.loads(r.stdout.strip())
    assert line["n"] == 1 and line["set"] == "harmbench" and len(line["success_rate"]) == 3
    assert (tmp_path / "b" / "gcg.json").exists()
