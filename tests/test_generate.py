"""Batched greedy chat generation equals a plain argmax loop, whatever the batching."""

import pytest
import torch

from llmri.generate import ChatTemplateError, GenerateConfig, generate, render_ids, stop_ids

PROMPTS = ["the war", "peace and the nation of the people", "a", "the state of the union is strong and the war"]


def argmax_loop(model, ids: list[int], n: int, stops: list[int]) -> list[int]:
    """Reference: one full forward per new token, no cache, no padding."""
    out = []
    for _ in range(n):
        logits = model.hf(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if out[-1] in stops:
            break
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generation_equals_the_argmax_loop(tiny, batch_size):
    model = tiny("llama")
    cfg = GenerateConfig(max_new_tokens=6, batch_size=batch_size)
    gens = generate(model, PROMPTS, cfg)
    stops = stop_ids(model)
    for p, g in zip(PROMPTS, gens):
        ref = argmax_loop(model, render_ids(model, p), 6, stops)
        assert g.tokens == len(ref) and g.finished == (ref[-1] in stops)
        kept = ref[:-1] if g.finished else ref
        assert g.text == model.tokenizer.decode(kept, skip_special_tokens=True)


def test_messages_system_and_prefill_render_through_the_template(tiny):
    from llmri.safety.attacks import attack

    model = tiny("llama")
    a = attack("the war", "prefill")
    tok = model.tokenizer
    ids = render_ids(model, a, system="peace and")
    plain = render_ids(model, "the war")
    words = tok.decode(ids).split()
    assert words.index("peace") < words.index("war")  # the system turn comes first
    tail = tok(a.prefill, add_special_tokens=False)["input_ids"]
    assert ids[-len(tail):] == tail and len(ids) > len(plain) + len(tail)  # the prefill ends the prompt
    assert render_ids(model, [{"role": "user", "content": "the war"}]) == render_ids(model, "the war")


def test_a_model_without_a_chat_template_is_one_line_with_the_fix(tiny):
    model = tiny("gpt2")
    template, model.tokenizer.chat_template = model.tokenizer.chat_template, None
    try:
        with pytest.raises(ChatTemplateError, match="chat_template"):
            generate(model, ["hello"])
    finally:
        model.tokenizer.chat_template = template
