"""The same results on CUDA as on the CPU (tiny models): capture, attribution graphs, ID profiles and steering.
Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``."""

import numpy as np
import pytest
import torch

import llmri
from llmri import data
from llmri.geometry.profile import ProfileConfig, id_profile
from llmri.geometry.steer import Reference, Steerer, SteerConfig, left_padded, steer_compare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "qwen3", "gpt_neox"])
def test_capture_on_cuda_equals_cpu(tiny_dir, arch):
    cpu = llmri.load_model(str(tiny_dir(arch)))
    gpu = llmri.load_model(str(tiny_dir(arch)), device="cuda")
    assert gpu.device.type == "cuda"
    ids = cpu.tokenize(["the nation and the war of the states", "peace"])
    points = [f"resid_post.{l}" for l in range(cpu.n_layers)] + ["mlp_in.1", "attn_out.2"]
    want = cpu.capture(ids.input_ids, points, attention_mask=ids.attention_mask)
    got = gpu.capture(ids.input_ids.cuda(), points, attention_mask=ids.attention_mask.cuda())
    for p in points:
        assert got[p].device.type == "cuda"
        torch.testing.assert_close(got[p].cpu(), want[p], rtol=1e-4, atol=1e-5)


def test_attribution_graph_on_cuda_equals_cpu(tiny_dir):
    from test_circuits import ALL, PROMPT, random_tcs, scaled_model

    from llmri.circuits import attribute

    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model)
    ids = model.tokenize([PROMPT]).input_ids[0]
    want = attribute(model, tcs, ids, ALL)
    model.hf.to("cuda")
    got = attribute(model, tcs.to("cuda"), ids, ALL)
    assert torch.equal(got.features.cpu(), want.features.cpu())
    scale = float(want.adjacency.abs().max())
    torch.testing.assert_close(got.adjacency.cpu(), want.adjacency.cpu(), rtol=1e-3, atol=1e-4 * scale)


def test_id_profile_on_cuda_equals_cpu(tiny_dir, text_corpus):
    docs = data.load_corpus(str(text_corpus))
    cfg = ProfileConfig(points=150, per_window=6, context=32, split="all", n_boot=20)
    want = id_profile(llmri.load_model(str(tiny_dir("llama"))), docs, cfg)
    got = id_profile(llmri.load_model(str(tiny_dir("llama")), device="cuda"), docs, cfg)
    for a, b in zip(got.corpus_ids + got.control_ids, want.corpus_ids + want.control_ids):
        assert a.twonn.d == pytest.approx(b.twonn.d, rel=0.02)


def test_steering_on_cuda(tiny_dir, text_corpus):
    from test_geometry_model import NEG, POS

    model = llmri.load_model(str(tiny_dir("llama")), device="cuda")
    ids, mask, steer_mask = left_padded(model, ["the war was long and", "peace"])
    ref = Reference(torch.randn(200, model.d_model, device="cuda"), 8, 2, 1.0)
    v = torch.zeros(model.d_model, device="cuda")
    v[3] = 1.0
    clean = model.capture(ids.cuda(), ["resid_post.1"], attention_mask=mask.cuda())["resid_post.1"]
    steerer = Steerer(ref, v, 5.0, "linear", 2, 5)
    steerer.prefill_mask = steer_mask.cuda()
    with model.intervene({"resid_post.1": steerer}):
        got = model.capture(ids.cuda(), ["resid_post.1"], attention_mask=mask.cuda())["resid_post.1"]
    torch.testing.assert_close(got, clean + 5.0 * v * steer_mask.cuda()[..., None], rtol=1e-5, atol=1e-5)
    res = steer_compare(model, SteerConfig(layer=1, probe_layer=2, scales=(0.0, 0.5), reference_tokens=512,
                                           new_tokens=4, neighbours=8, corpus=str(text_corpus)),
                        positive=POS, negative=NEG, prompts=["the war", "the law", "peace and"])
    rows = {(r["method"], r["scale"]): r for r in res.rows}
    assert rows[("linear", 0.5)]["distance_ratio"] > rows[("manifold", 0.5)]["distance_ratio"]
    assert all(np.isfinite(r["ppl"]) for r in res.rows)
