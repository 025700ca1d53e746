import pytest

from llmri.adapters import GPT_NEOX, LLAMA, adapter_for
from llmri.errors import UnknownHookPointError, UnsupportedArchitectureError
from llmri.hookpoints import all_points, canonical, expand, order


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resid_post.5", "resid_post.5"),
        ("resid_post.-1", "resid_post.29"),
        ("blocks.5.hook_resid_post", "resid_post.5"),
        ("blocks.3.hook_resid_pre", "resid_pre.3"),
        ("blocks.7.ln2.hook_normalized", "mlp_in.7"),
        ("blocks.7.hook_mlp_out", "mlp_out.7"),
        ("blocks.7.hook_attn_out", "attn_out.7"),
        ("blocks.2.hook_resid_mid", "resid_mid.2"),
        ("hook_embed", "embed"),
        ("ln_final.hook_normalized", "final_norm"),
        ("layers.5", "resid_post.5"),
        ("model.layers.5", "resid_post.5"),
        ("layers.5.mlp", "mlp_out.5"),
        ("model.layers.5.self_attn", "attn_out.5"),
        ("layers.5.post_attention_layernorm", "mlp_in.5"),
        ("model.embed_tokens", "embed"),
        ("model.norm", "final_norm"),
        ("lm_head", "logits"),
    ],
)
def test_aliases_map_to_canonical(name, expected):
    assert canonical(name, LLAMA, 30) == expected


@pytest.mark.parametrize("bad", ["resid_post.30", "resid_post.-31", "blocks.1.hook_q", "layers.5.nope", "mlp", ""])
def test_unknown_point_is_a_clear_error(bad):
    with pytest.raises(UnknownHookPointError) as err:
        canonical(bad, LLAMA, 30)
    assert "\n" not in str(err.value)
    assert "resid_post" in str(err.value)  # names the valid points or the valid range


def test_order_is_forward_order():
    pts = all_points(LLAMA, 2)
    assert pts[0] == "embed" and pts[-2:] == ["final_norm", "logits"]
    assert pts[1:7] == ["resid_pre.0", "attn_out.0", "resid_mid.0", "mlp_in.0", "mlp_out.0", "resid_post.0"]
    assert sorted(pts, key=lambda p: order(p, 2)) == pts


def test_parallel_blocks_have_no_resid_mid():
    parallel = type(GPT_NEOX)(**{**GPT_NEOX.__dict__, "parallel": True})
    assert not any(p.startswith("resid_mid") for p in all_points(parallel, 3))


def test_expand():
    assert expand("resid_post.*", 3) == ["resid_post.0", "resid_post.1", "resid_post.2"]
    assert expand("mlp_out.1-2,resid_pre.0", 5) == ["mlp_out.1", "mlp_out.2", "resid_pre.0"]


def test_unsupported_architecture():
    class Cfg:
        model_type = "t5"

    with pytest.raises(UnsupportedArchitectureError, match="t5"):
        adapter_for(Cfg())
