"""Sparse dictionaries: kernels against dense references, every kind × architecture learning, splicing,
folding, and the training loop."""

import random

import pytest
import torch

from tiny import WORDS

from llmri import data
from llmri.dictionaries import DictConfig, TrainConfig, Trainer, build
from llmri.dictionaries import sparse as sp
from llmri.dictionaries.evaluate import ce_metrics, reconstruction_metrics, spliced
from llmri.dictionaries.sources import ModelSource

KIND_POINTS = {
    "sae": (["resid_post.1"], ["resid_post.1"]),
    "transcoder": (["mlp_in.1"], ["mlp_out.1"]),
    "crosscoder": (["resid_post.0", "resid_post.1", "resid_post.2"], None),
    "clt": ([f"mlp_in.{l}" for l in range(3)], [f"mlp_out.{l}" for l in range(3)]),
}


def docs(n=200, words=300, seed=0):
    rng = random.Random(seed)
    return [data.Document(f"d{i:03d}", " ".join(rng.choice(WORDS) for _ in range(words))) for i in range(n)]


def make(kind, arch, n_latents=128, k=8, **kw):
    ins, outs = KIND_POINTS[kind]
    return DictConfig(kind=kind, arch=arch, in_points=ins, out_points=outs or ins, d_in=64, n_latents=n_latents, k=k, **kw)


def source(model, cfg_list, batch=256, seed=0, corpus=None):
    points = sorted({p for c in cfg_list for p in c.in_points + c.out_points})
    return ModelSource(model, corpus or docs(), points, batch, windows=data.WindowSpec(context=32, split="all"), seed=seed)


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("selector", ["topk", "batchtopk"])
def test_sparse_kernels_match_dense_autograd(selector):
    torch.manual_seed(0)
    B, d, n, k = 64, 16, 48, 5
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    c = torch.randn(d, dtype=torch.float64, requires_grad=True)  # the centre (an SAE's b_dec)
    dead = torch.tensor([1, 3, 7, 10, 20, 33, 40])
    main = sp.topk_selector(k) if selector == "topk" else sp.batch_topk_selector(k)
    s, a = sp.encode_select(x, W, b, [main, sp.aux_selector(3, dead, rows=40)], center=c)
    loss = (sp.decode(s, W_dec) + 0.5 * sp.decode(a, W_dec)).pow(2).sum() + s.vals.pow(3).sum()
    grads = torch.autograd.grad(loss, (x, W, b, W_dec, c))
    pre = (x - c) @ W.t() + b
    masks = []
    for sel in (s, a):
        m = torch.zeros(B, n, dtype=torch.bool)
        m[sel.rows, sel.idx] = True
        masks.append(m)
    f1, f2 = (torch.where(m, pre.relu(), 0) for m in masks)
    ref = ((f1 @ W_dec + 0.5 * f2 @ W_dec).pow(2).sum() + f1.pow(3).sum())
    ref_grads = torch.autograd.grad(ref, (x, W, b, W_dec, c))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    assert masks[1][40:].sum() == 0 and masks[1][:40].sum() == 40 * 3  # aux only on its rows
    assert set(a.idx.tolist()) <= set(dead.tolist())


def test_two_stage_row_topk_is_exact():
    torch.manual_seed(2)
    pre = torch.randn(64, 1024)
    pre[5, ::128] = 50.0  # one row's winners all in the same strided group (columns j, j + 128, …)
    pre[9] = pre[9].round()  # many ties
    for k in (4, 16, 32):
        vals, idx = sp.row_topk(pre, k)
        ref = pre.topk(k, dim=1).values
        torch.testing.assert_close(vals.sort(1, descending=True).values, ref, rtol=0, atol=0)
        torch.testing.assert_close(pre.gather(1, idx), vals, rtol=0, atol=0)
        assert all(len(set(r)) == k for r in idx.tolist())  # k distinct columns per row


def test_batch_topk_is_exact_even_for_a_row_with_many_winners():
    torch.manual_seed(1)
    pre = torch.randn(32, 100)
    pre[3] += 10  # row 3 holds far more than 4·k of the batch's top entries -> exact fallback path
    for k in (2, 5):
        s = sp.batch_topk_selector(k)(pre.clone())
        flat = pre.relu().flatten()
        top = set(flat.topk(32 * k).indices.tolist())
        got = set((s.rows * 100 + s.idx).tolist())
        assert got == top
        torch.testing.assert_close(s.vals, pre[s.rows, s.idx])


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("kind", list(KIND_POINTS))
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_every_kind_and_architecture_learns(tiny, kind, arch, tmp_path):
    model = tiny("llama")
    cfg = make(kind, arch)
    d = build(cfg)
    tc = TrainConfig(tokens=8_000, batch_size=256, checkpoint_every=0, log_every=4, norm_batches=2, lr=3e-3)
    tr = Trainer([d], tc, source(model, [cfg]), tmp_path)
    tr.fit()
    h = tr.history(0)
    # penalty-trained transcoders/CLTs start from a near-zero output and move slowest (measured 0.80-0.85)
    slow = arch in ("relu", "jumprelu") and kind in ("transcoder", "clt")
    assert h[-1]["nmse"] < (0.87 if slow else 0.8) * h[0]["nmse"], (h[0]["nmse"], h[-1]["nmse"])
    if arch == "topk":
        assert h[-1]["l0"] <= cfg.k * (3 if kind == "clt" else 1) + 1e-6
    # inference path agrees with the training path's reconstruction quality
    batch = next(iter(source(model, [cfg], batch=512, seed=9)))
    rec = reconstruction_metrics(d, iter([batch]), 512)
    assert rec["nmse"] < 0.9 * h[0]["nmse"]


def test_auxk_revives_dead_latents(tiny, tmp_path):
    """Latents pushed below firing at init (bias −2) come back with aux-k and mostly stay dead without it."""
    model = tiny("llama")
    results = {}
    for coeff in (0.0, 1.0):
        cfg = make("sae", "topk", n_latents=256, k=4)
        d = build(cfg)
        with torch.no_grad():
            d.b_enc[:128] = -2.0  # half the latents start (almost) never winning the top-k
        tc = TrainConfig(tokens=10_000, batch_size=256, checkpoint_every=0, log_every=5, norm_batches=1,
                         dead_tokens=512, aux_coeff=coeff, aux_fraction=0.5, lr=3e-3)
        Trainer([d], tc, source(model, [cfg]), tmp_path).fit()
        batch = next(iter(source(model, [cfg], batch=2048, seed=5)))
        rec = reconstruction_metrics(d.eval(), iter([batch]), 2048)
        results[coeff] = rec["dead_fraction"]
    assert results[0.0] >= 0.35  # without aux-k most of that half stays dead (measured 41%)
    assert results[1.0] < 0.1  # with it they are revived (measured 1%)


# ---------------------------------------------------------------- folding and splicing


@pytest.mark.parametrize("kind", list(KIND_POINTS))
def test_folding_scales_preserves_outputs(tiny, kind):
    model = tiny("llama")
    cfg = make(kind, "jumprelu" if kind == "crosscoder" else "topk", skip=kind == "transcoder")
    d = build(cfg).eval()
    with torch.no_grad():
        d.in_scale.uniform_(0.5, 2.0)
        d.out_scale.uniform_(0.5, 2.0)
        if cfg.apply_b_dec_to_input:  # same points in and out: one scale per point, as training sets it
            d.out_scale.copy_(d.in_scale)
        d.b_dec.normal_()
        if d.W_skip is not None if hasattr(d, "W_skip") else False:
            d.W_skip.normal_(0, 0.1)
    batch = next(iter(source(model, [cfg], batch=128)))
    before = d.reconstruct(batch)
    d.fold_scales()
    after = d.reconstruct(batch)
    for p in before:
        torch.testing.assert_close(after[p], before[p], rtol=1e-4, atol=1e-4)


def _peaky(model):
    """Tiny random models predict near-uniformly; sharpen the unembedding so that ablations change CE."""
    with torch.no_grad():
        model.hf.get_output_embeddings().weight.mul_(40)


def identity_sae(point: str, d_model: int) -> "torch.nn.Module":
    """ReLU SAE with W_enc = W_dec = [I; −I]: x̂ = relu(x) − relu(−x) = x exactly."""
    cfg = DictConfig(kind="sae", arch="relu", in_points=[point], d_in=d_model, n_latents=2 * d_model)
    d = build(cfg)
    eye = torch.eye(d_model)
    with torch.no_grad():
        d.W_enc.copy_(torch.cat([eye, -eye]))
        d.W_dec.copy_(torch.cat([eye, -eye]))
        d.b_enc.zero_()
        d.b_dec.zero_()
    return d.eval()


def test_perfect_dictionary_recovers_all_ce_through_the_splice(tiny_dir, tmp_path):
    import llmri

    model = llmri.load_model(str(tiny_dir("llama")))
    _peaky(model)
    d = identity_sae("resid_post.1", model.d_model)
    corpus = docs(40)
    windows = data.token_windows(model, corpus, data.WindowSpec(context=32, split="all"))
    ce = ce_metrics(model, d, windows, 2000, batch_size=8)
    assert abs(ce["ce_zero_ablation"] - ce["ce_clean"]) > 0.5  # the baseline differs, so the ratio means something
    assert ce["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert ce["kl_clean_spliced"] == pytest.approx(0.0, abs=1e-6)
    batch = next(iter(source(model, [d.cfg], batch=512)))
    assert reconstruction_metrics(d, iter([batch]), 512)["nmse"] < 1e-10


def test_transcoder_and_clt_splices_replace_mlp_outputs(tiny):
    model = tiny("llama")
    ids = torch.randint(5, model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[:, 0] = False
    for kind in ("transcoder", "clt"):
        d = build(make(kind, "topk")).eval()
        with spliced(model, d, keep):
            got = model.capture(ids, ["mlp_in.1", "mlp_out.1", "mlp_in.0"], stop_early=False)
        if kind == "transcoder":
            expected = d.reconstruct({"mlp_in.1": got["mlp_in.1"]})["mlp_out.1"]
        else:  # layer 1's output = decoders of layers 0 and 1 applied to the spliced run's MLP inputs
            x = torch.stack([got["mlp_in.0"], got["mlp_in.1"]], dim=2).reshape(-1, 2, model.d_model)
            acts = [d.encode_layer(x[:, l] * d.in_scale[l], l) for l in range(2)]
            expected = (d.decode_layer(acts, 1) / d.out_scale[1]).reshape(2, 12, -1)
        torch.testing.assert_close(got["mlp_out.1"][:, 1:], expected[:, 1:], rtol=1e-4, atol=1e-4)
        clean = model.capture(ids, ["mlp_out.1"])["mlp_out.1"]
        torch.testing.assert_close(got["mlp_out.1"][:, 0], clean[:, 0])  # excluded position untouched
        with spliced(model, d, keep, zero=True):
            zeroed = model.capture(ids, ["mlp_out.1"])["mlp_out.1"]
        assert zeroed[:, 1:].abs().max() == 0 and zeroed[:, 0].abs().max() > 0


def test_decoder_and_encoder_gradients_share_one_by_latent_index():
    """The decoder's backward builds Sᵀ's CSR index of the selection; the encoder's backward reuses it."""
    torch.manual_seed(0)
    B, d, n, k = 32, 8, 40, 4
    x, W, W_dec = torch.randn(B, d), torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    (s,) = sp.encode_select(x, W, torch.zeros(n), [sp.topk_selector(k)])
    sp.decode(s, W_dec).pow(2).sum().backward()
    t = s.memo["by_latent"]
    counts = torch.bincount(s.idx, minlength=n)
    assert t.crow.tolist() == [0] + torch.cumsum(counts, 0).tolist()
    assert torch.equal(s.idx[t.order], torch.sort(s.idx).values) and torch.equal(t.rows, s.rows[t.order])
    calls = []
    orig = sp.by_latent
    sp.by_latent = lambda q: calls.append("by_latent" in q.memo) or orig(q)
    try:
        (s2,) = sp.encode_select(x, W, torch.zeros(n), [sp.topk_selector(k)])
        sp.decode(s2, W_dec).pow(2).sum().backward()
    finally:
        sp.by_latent = orig
    assert calls == [False, True]  # the decoder's product builds the index, the encoder's finds it
