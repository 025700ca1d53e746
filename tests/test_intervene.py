"""Interventions change activations and logits by exactly what a direct computation predicts."""

import pytest
import torch

from tiny import ARCHS

import llmri
from llmri import Ablate, Add, Clamp, Patch, Scale
from llmri.errors import InterventionError


def _ids(model, batch=2, seq=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.vocab_size, (batch, seq), generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model.hf(ids).logits


def _softcap(model, x):
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(x / cap) * cap if cap else x


@pytest.mark.parametrize("arch", ARCHS)
def test_add_at_final_norm_shifts_logits_by_unembedding(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    base = model.capture(ids, ["logits"])["logits"]
    with model.intervene({"final_norm": Add(v, scale=3.0)}):
        steered = model.capture(ids, ["logits"])["logits"]
    W_U = model.hf.get_output_embeddings().weight
    torch.testing.assert_close(steered - base, (3.0 * W_U @ v).expand_as(base), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_add_at_last_resid_matches_direct_computation(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    L = model.n_layers
    v = 5 * torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    x = model.capture(ids, [f"resid_post.{L - 1}"])[f"resid_post.{L - 1}"]
    with torch.no_grad():
        final = model.hf.get_submodule(model.adapter.final_norm)
        expected = _softcap(model, model.hf.get_output_embeddings()(final(x + v)))
    with model.intervene({f"resid_post.{L - 1}": Add(v)}):
        got = _logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(model, ids), _softcap(model, model.capture(ids, ["logits"])["logits"]))  # hooks gone


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox_serial"])
def test_resid_mid_edit_reaches_both_the_mlp_and_the_stream(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    before = model.capture(ids, ["resid_mid.1"])["resid_mid.1"]
    with model.intervene({"resid_mid.1": Add(v)}):
        after = model.capture(ids, ["resid_mid.1", "mlp_out.1", "resid_post.1"])
    torch.testing.assert_close(after["resid_mid.1"], before + v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after["resid_post.1"], after["resid_mid.1"] + after["mlp_out.1"], rtol=1e-5, atol=1e-5)
    a = model.adapter
    with torch.no_grad():
        block = model.blocks[1]
        mlp_out = block.get_submodule(a.mlp)(block.get_submodule(a.mlp_norm)(before + v))
        if a.mlp_out != a.mlp and "dropout" not in a.mlp_out:
            mlp_out = block.get_submodule(a.mlp_out)(mlp_out)
    torch.testing.assert_close(after["mlp_out.1"], mlp_out, rtol=1e-4, atol=1e-4)


def test_patching_the_whole_stream_transplants_the_run(tiny):
    model = tiny("llama")
    a, b = _ids(model, seed=5), _ids(model, seed=6)
    b_stream = model.capture(b, ["resid_pre.0"])["resid_pre.0"]
    with model.intervene({"resid_pre.0": Patch(b_stream)}):
        patched = _logits(model, a)
    torch.testing.assert_close(patched, _logits(model, b), rtol=1e-5, atol=1e-5)


def test_zero_ablating_mlp_out_leaves_resid_mid(tiny):
    model = tiny("llama")
    ids = _ids(model)
    with model.intervene({"mlp_out.0": Ablate()}):
        got = model.capture(ids, ["resid_mid.0", "resid_post.0"])
    torch.testing.assert_close(got["resid_post.0"], got["resid_mid.0"], rtol=0, atol=0)
    with model.intervene({"mlp_out.0": Scale(0.0)}):
        scaled = model.capture(ids, ["resid_post.0"])
    torch.testing.assert_close(scaled["resid_post.0"], got["resid_post.0"])


def test_mean_ablation_sets_the_mean(tiny):
    model = tiny("llama")
    mean = torch.randn(model.d_model)
    with model.intervene({"attn_out.1": Ablate(mean=mean)}):
        got = model.capture(_ids(model), ["attn_out.1"])["attn_out.1"]
    torch.testing.assert_close(got, mean.expand_as(got))


def test_clamp_sets_the_component_along_a_direction(tiny):
    model = tiny("llama")
    u = torch.randn(model.d_model)
    ids = _ids(model)
    orig = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    for value in (0.0, 7.5):
        with model.intervene({"resid_post.1": Clamp(u, value)}):
            got = model.capture(ids, ["resid_post.1"])["resid_post.1"]
        unit = u / u.norm()
        torch.testing.assert_close(got @ unit, torch.full(got.shape[:2], value), rtol=1e-4, atol=1e-4)
        # the orthogonal complement is untouched
        torch.testing.assert_close(got - (got @ unit)[..., None] * unit, orig - (orig @ unit)[..., None] * unit, rtol=1e-4, atol=1e-4)


def test_positions_limit_the_edit_and_causality_holds(tiny):
    model = tiny("llama")
    ids = _ids(model)
    base = _logits(model, ids)
    with model.intervene({"resid_post.0": Add(10 * torch.randn(model.d_model), positions=4)}):
        got = _logits(model, ids)
    torch.testing.assert_close(got[:, :4], base[:, :4], rtol=0, atol=0)
    assert (got[:, 4] - base[:, 4]).abs().max() > 1e-3


def test_edits_compose_and_custom_callables_work(tiny):
    model = tiny("llama")
    ids = _ids(model)
    v = torch.randn(model.d_model)
    with model.intervene({"resid_post.1": [Add(v), Scale(2.0)], "resid_post.0": lambda x: x}):
        got = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    orig = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    torch.testing.assert_close(got, 2 * (orig + v), rtol=1e-5, atol=1e-5)


def test_bad_edit_is_a_clear_error(tiny):
    model = tiny("llama")
    with pytest.raises(InterventionError, match="shape"):
        with model.intervene({"resid_post.0": lambda x: x[:, :1]}):
            _logits(model, _ids(model))


def test_steering_works_during_generation(tiny):
    model = tiny("llama")
    ids = _ids(model, batch=1)
    plain = model.hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    W_U = model.hf.get_output_embeddings().weight
    target = 7
    with model.intervene({"final_norm": Add(W_U[target] / W_U[target].norm(), scale=500.0)}):
        steered = model.hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert steered[0, ids.shape[1]:].tolist() == [target] * 5
    assert plain[0, ids.shape[1]:].tolist() != [target] * 5
    assert isinstance(llmri.Add, type)
