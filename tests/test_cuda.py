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


@pytest.mark.parametrize("selector", ["topk", "batchtopk"])
def test_sparse_kernels_on_cuda_match_dense_autograd(selector):
    """cuSPARSE Sᵀ·X, the two-stage top-k and the shared by-latent index on CUDA: gradients equal dense autograd."""
    from llmri.dictionaries import sparse as sp

    torch.manual_seed(0)
    B, d, n, k = 96, 16, 64, 5
    dev = "cuda"
    x = torch.randn(B, d, dtype=torch.float64, device=dev)
    W = torch.randn(n, d, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, device=dev, requires_grad=True)
    W_dec = torch.randn(n, d, dtype=torch.float64, device=dev, requires_grad=True)
    dead = torch.tensor([1, 3, 7, 10, 20, 33, 40], device=dev)
    main = sp.topk_selector(k) if selector == "topk" else sp.batch_topk_selector(k)
    s, a = sp.encode_select(x, W, b, [main, sp.aux_selector(3, dead, rows=40)])
    loss = (sp.decode(s, W_dec) + 0.5 * sp.decode(a, W_dec)).pow(2).sum() + s.vals.pow(3).sum()
    grads = torch.autograd.grad(loss, (W, b, W_dec))
    pre = x @ W.t() + b
    f1, f2 = (torch.zeros(B, n, dtype=torch.float64, device=dev).index_put((q.rows, q.idx), torch.ones_like(q.vals))
              .bool() for q in (s, a))
    f1, f2 = (torch.where(m, pre.relu(), 0) for m in (f1, f2))
    ref = (f1 @ W_dec + 0.5 * f2 @ W_dec).pow(2).sum() + f1.pow(3).sum()
    for g, r in zip(grads, torch.autograd.grad(ref, (W, b, W_dec)), strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sae_training_on_cuda_follows_cpu(tmp_path, dtype, devices=("cpu", "cuda")):
    """The same TopK SAE trained 12 steps (aux-k active) on CPU and CUDA from the same batches: the same mean
    loss (fp32 to 1e-4, bf16 to 2%) and, in fp32, the same weights to float tolerance."""
    from llmri.dictionaries import DictConfig, TrainConfig, Trainer, build

    torch.manual_seed(0)
    data = torch.randn(12 * 256, 32) @ torch.randn(32, 32)
    cfg = DictConfig(kind="sae", arch="topk", in_points=["p"], d_in=32, n_latents=256, k=8)
    runs = []
    for dev in devices:
        d = build(cfg, device=dev, seed=0)
        tc = TrainConfig(tokens=12 * 256, batch_size=256, checkpoint_every=0, log_every=1000, norm_batches=1,
                         dtype=dtype, dead_tokens=512)
        tr = Trainer([d], tc, None, tmp_path / f"{dev}{len(runs)}")
        tr._initialise([{"p": data[:256].to(dev)}])
        for i in range(12):
            tr._train_step({"p": data[i * 256:(i + 1) * 256].to(dev)})
            tr.step += 1
        tr._log(1.0, 12)
        runs.append((d, tr.history(0)[-1]["loss"]))
    (c, loss_c), (g, loss_g) = runs
    assert loss_g == pytest.approx(loss_c, rel=1e-4 if dtype == "float32" else 0.02)
    if dtype == "float32":
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(getattr(g, name).detach().cpu(), getattr(c, name).detach(), rtol=1e-3, atol=1e-4)
