"""Capture on a tiny random model of every supported architecture, against HF's own outputs."""

import pytest
import torch

from tiny import ARCHS

import llmri
from llmri.errors import UnknownHookPointError


def _ids(model, batch=2, seq=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.vocab_size, (batch, seq), generator=g)


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_post_equals_hf_hidden_states(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    L = model.n_layers
    with torch.no_grad():
        hs = model.hf(ids, output_hidden_states=True).hidden_states
    got = model.capture(ids, [f"resid_post.{l}" for l in range(L)] + ["resid_pre.0", "final_norm"], stop_early=False)
    assert len(hs) == L + 1
    torch.testing.assert_close(got["resid_pre.0"], hs[0], rtol=0, atol=0)
    for l in range(L - 1):
        torch.testing.assert_close(got[f"resid_post.{l}"], hs[l + 1], rtol=0, atol=0)
    # HF's last hidden state is taken after the final norm
    torch.testing.assert_close(got["final_norm"], hs[L], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_block_decomposition_adds_up(tiny, arch):
    model = tiny(arch)
    got = model.capture(_ids(model), model.hook_points(), stop_early=False)
    for l in range(model.n_layers):
        pre, attn, mlp, post = (got[f"{k}.{l}"] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-5, atol=1e-5)
        if not model.adapter.parallel:
            torch.testing.assert_close(pre + attn, got[f"resid_mid.{l}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_in_and_mlp_out_are_what_the_mlp_reads_and_writes(tiny, arch):
    """mlp_in = norm(resid_mid) (or norm(resid_pre) for parallel blocks); mlp_out = MLP(mlp_in) [+ post-norm]."""
    model = tiny(arch)
    got = model.capture(_ids(model), model.hook_points(), stop_early=False)
    a = model.adapter
    for l in range(model.n_layers):
        block = model.blocks[l]
        stream = got[f"resid_pre.{l}"] if a.parallel else got[f"resid_mid.{l}"]
        with torch.no_grad():
            mlp_in = block.get_submodule(a.mlp_norm)(stream)
            mlp_out = block.get_submodule(a.mlp)(mlp_in)
            if a.mlp_out != a.mlp and "dropout" not in a.mlp_out:
                mlp_out = block.get_submodule(a.mlp_out)(mlp_out)
        torch.testing.assert_close(got[f"mlp_in.{l}"], mlp_in, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"mlp_out.{l}"], mlp_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_point_is_the_unembedding_output(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    got = model.capture(ids, ["logits"])["logits"]
    with torch.no_grad():
        out = model.hf(ids).logits
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        got = torch.tanh(got / cap) * cap
    torch.testing.assert_close(got, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_early_exit_gives_identical_values_and_skips_later_layers(tiny, arch):
    model = tiny(arch)
    ids = _ids(model)
    points = ["resid_post.0", "mlp_in.1", "attn_out.1"]
    full = model.capture(ids, points, stop_early=False)
    calls = []
    handle = model.blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        early = model.capture(ids, points)
    finally:
        handle.remove()
    assert calls == []  # the last block never ran
    for p in points:
        torch.testing.assert_close(early[p], full[p], rtol=0, atol=0)


def test_results_are_keyed_by_the_requested_spelling(tiny):
    model = tiny("llama")
    got = model.capture(_ids(model), ["blocks.1.hook_resid_post", "resid_post.1", "layers.1"])
    assert set(got) == {"blocks.1.hook_resid_post", "resid_post.1", "layers.1"}
    torch.testing.assert_close(got["layers.1"], got["resid_post.1"])


def test_unknown_point_raises_before_running(tiny):
    model = tiny("llama")
    with pytest.raises(UnknownHookPointError, match="resid_post.99"):
        model.capture(_ids(model), ["resid_post.99"])
    with pytest.raises(UnknownHookPointError, match="parallel"):
        tiny("gpt_neox").capture(_ids(model), ["resid_mid.0"])


def test_padding_mask_is_respected(tiny):
    model = tiny("llama")
    batch = model.tokenize(["the war of the nation", "peace"])
    assert batch.attention_mask.tolist()[1][:2] == [1, 1] and batch.attention_mask[1, 2:].sum() == 0
    padded = model.capture(batch.input_ids, ["resid_post.2"], attention_mask=batch.attention_mask)["resid_post.2"]
    alone = model.capture(model.tokenize("peace").input_ids, ["resid_post.2"])["resid_post.2"]
    torch.testing.assert_close(padded[1, :2], alone[0], rtol=1e-5, atol=1e-5)


def test_card_lists_hook_points(tiny):
    card = tiny("gpt_neox").card()
    assert card["parallel_blocks"] is True
    assert "resid_mid" not in card["hook_points_per_layer"]
    assert card["n_layers"] == 3 and card["d_model"] == 64
    assert isinstance(llmri.load_model, object)
