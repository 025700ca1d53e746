"""Reading fictitious knowledge: answer log-probabilities equal an HF reference computed one prompt at a time,
the truth ratio / top-1 / forget quality on known inputs, intervals over entities; and on the real model, which
has never seen these entities, top-1 and log truth ratio sit at their no-knowledge values (slow)."""

import numpy as np
import pytest
import torch

from llmri.generate import render_ids
from llmri.safety import knowledge as K
from llmri.safety.facts import fact_splits, load_facts


def test_answer_logprobs_equal_a_one_at_a_time_reference(tiny):
    model = tiny("llama")
    qs = ["Where was Ula born?", "Where was Ula born?", "What is the Kessvik loom made of?", "Who?", "Who?", "Who?"]
    ans = ["Ula was born in the city of Genoa.", "Genoa.", "Brass.",
           "Nobody at all, as far as anyone in the town can remember.", "Nobody.", "The mayor of the town."]
    # shared questions read once (packed answers); padded batches of different lengths and widths
    got = K.answer_logprobs(model, qs, ans, max_tokens=40)
    for q, a, g in zip(qs, ans, got):
        p = render_ids(model, q)
        t = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model.hf(input_ids=torch.tensor([p + t])).logits[0].float().log_softmax(-1)
        ref = np.mean([lp[len(p) - 1 + j, t[j]].item() for j in range(len(t))])
        assert g == pytest.approx(ref, abs=1e-4)


def test_the_logit_lens_reads_each_layer_and_is_the_output_at_the_last(tiny):
    model = tiny("llama")
    qs, ans = ["Where was Ula born?", "Where was Ula born?", "Who?"], ["Genoa.", "In the city of Oslo.", "Nobody."]
    last = model.n_layers - 1
    got = K.answer_logprobs(model, qs, ans, max_tokens=40, lens=[0, last])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[:, 1], K.answer_logprobs(model, qs, ans, max_tokens=40), atol=1e-5)
    norm, unembed = model.hf.get_submodule(model.adapter.final_norm), model.hf.get_output_embeddings()
    for q, a, g in zip(qs, ans, got[:, 0]):  # layer 0 by hand, one answer at a time
        p = render_ids(model, q)
        t = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        h = model.capture(torch.tensor([p + t]), ["resid_post.0"])["resid_post.0"][0]
        with torch.no_grad():
            lp = unembed(norm(h)).float().log_softmax(-1)
        assert g == pytest.approx(np.mean([lp[len(p) - 1 + j, t[j]].item() for j in range(len(t))]), abs=1e-4)


def _scores(para, pert, entities=None):
    n = len(para)
    return K.Scores([str(i) for i in range(n)], entities or [str(i) for i in range(n)], np.asarray(para, float),
                    np.asarray(para, float), np.asarray(pert, float))


def test_truth_ratio_top1_and_forget_quality_on_known_inputs():
    s = _scores([-1.0, -2.0], [[-2.0] * 5, [-1.0, -3.0, -3.0, -3.0, -3.0]])
    np.testing.assert_allclose(s.truth_ratio, [np.exp(-1.0), np.exp(-2.6 + 2.0)])
    assert s.top1.tolist() == [True, False]
    rng = np.random.default_rng(0)
    a = _scores(rng.normal(size=200), rng.normal(size=(200, 5)))
    assert K.forget_quality(a, a) == pytest.approx(1.0)
    knows = _scores(a.paraphrased + 3.0, a.perturbed)  # prefers the truth by far: another distribution
    assert K.forget_quality(knows, a) < 1e-6
    with pytest.raises(ValueError, match="same facts"):
        K.forget_quality(a, _scores(rng.normal(size=3), rng.normal(size=(3, 5))))


def test_summaries_are_means_with_intervals_over_entities():
    rng = np.random.default_rng(1)
    s = _scores(rng.normal(size=60), rng.normal(size=(60, 5)), entities=[f"e{i // 12}" for i in range(60)])
    out = K.summarise(s, n_boot=200)
    assert out["n"] == 60 and out["entities"] == 5
    assert out["top1"]["mean"] == pytest.approx(s.top1.mean())
    assert out["log_truth_ratio"]["lo"] <= out["log_truth_ratio"]["mean"] <= out["log_truth_ratio"]["hi"]
    assert out["probability"]["mean"] == pytest.approx(np.exp(s.answer).mean())


def test_score_facts_reads_seven_answers_per_fact(tiny):
    model = tiny("llama")
    facts = load_facts()[:3]
    s = K.score_facts(model, facts, max_tokens=64)
    assert s.perturbed.shape == (3, 5) and s.ids == [f.id for f in facts]
    ref = K.answer_logprobs(model, [facts[1].question], [facts[1].perturbed[2]])[0]
    assert s.perturbed[1, 2] == pytest.approx(ref, abs=1e-5)


def test_the_module_command_refuses_bad_input_in_one_line(capsys):
    for argv, text in [(["--forget", "forget50"], "unknown forget split"), (["--max-tokens", "0"], "--max-tokens"),
                       (["--model", "/nonexistent/model"], "nonexistent")]:
        with pytest.raises(SystemExit) as got:
            K.main(argv)
        err = capsys.readouterr().err.strip()
        assert got.value.code == 2 and text in err and "\n" not in err and "Traceback" not in err, (argv, err)


@pytest.mark.slow
def test_the_real_model_knows_none_of_the_facts(real_model):
    """SmolLM2 never saw these entities: the true value and the five false ones are exchangeable draws from one
    pool, so top-1 is at 1/6 and the log truth ratio at 0 (95% intervals over entities), whatever its priors."""
    s = K.score_facts(real_model, fact_splits(forget="forget10").heldout + fact_splits(forget="forget10").forget)
    out = K.summarise(s)
    assert out["entities"] == 20
    assert out["top1"]["lo"] <= 1 / 6 <= out["top1"]["hi"], out["top1"]
    assert out["log_truth_ratio"]["lo"] <= 0 <= out["log_truth_ratio"]["hi"], out["log_truth_ratio"]
