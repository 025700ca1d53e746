"""Feature statistics against brute-force references on a tiny random model."""

import math
import random

import numpy as np
import pytest
import torch

from tiny import WORDS

from llmri import data
from llmri.dictionaries import DictConfig, build
from llmri.features import FeatureConfig, FeatureStats, collect, feature_stats, model_windows


def docs(n=40, words=200, seed=0):
    rng = random.Random(seed)
    return [data.Document(f"d{i:03d}", " ".join(rng.choice(WORDS) for _ in range(words))) for i in range(n)]


def sae(point="resid_post.1", n=48, k=4, arch="topk", seed=0, kind="sae", ins=None, outs=None):
    cfg = DictConfig(kind=kind, arch=arch, in_points=ins or [point], out_points=outs or ins or [point], d_in=64,
                     n_latents=n, k=k)
    return build(cfg, seed=seed).eval()


CFG = dict(tokens=32 * 24, context=32, batch_size=5, top_k=6, samples=400, before=5, after=3, cooc_tokens=10_000,
           neighbours=4, logits=5, split="all")


@torch.no_grad()
def dense_reference(model, d, corpus, cfg):
    """Every window's tokens, keep mask and dense feature activations, the plain way."""
    toks, keeps, acts = [], [], []
    for w in model_windows(model, corpus, list(d.cfg.in_points), cfg):
        x = d.inputs({p: a.reshape(-1, a.shape[-1]) for p, a in w.acts.items()})
        enc = d.encode(x)
        dense = torch.cat([e.dense() for e in enc], 1) if isinstance(enc, list) else enc.dense()
        dense = dense.view(*w.tokens.shape, -1) * w.keep.unsqueeze(-1)
        toks.append(w.tokens), keeps.append(w.keep), acts.append(dense.clamp_min(0))
    return torch.cat(toks), torch.cat(keeps), torch.cat(acts)


@pytest.mark.parametrize("kind", ["sae", "clt"])
def test_statistics_match_brute_force(tiny, kind):
    model = tiny()
    if kind == "sae":
        d = sae()
    else:
        ins, outs = [f"mlp_in.{l}" for l in range(3)], [f"mlp_out.{l}" for l in range(3)]
        d = build(DictConfig(kind="clt", arch="topk", in_points=ins, out_points=outs, d_in=64, n_latents=16, k=3)).eval()
    corpus = docs()
    cfg = FeatureConfig(**CFG)
    st = feature_stats(model, d, corpus, cfg)
    T, K, A = dense_reference(model, d, corpus, cfg)
    n = A.shape[-1]
    assert st.n == n and st.n_tokens == int(K.sum())
    # density and mean activation
    assert torch.equal(st.counts, (A > 0).sum((0, 1)))
    assert torch.allclose(st.act_sum, A.double().sum((0, 1)), rtol=1e-5)
    # top windows: the K largest window maxima, with the right contexts
    wmax, wpos = A.max(1)
    for f in range(n):
        ref = wmax[:, f][wmax[:, f] > 0].sort(descending=True).values[: cfg.top_k]
        got = st.top.value[:, f][st.top.value[:, f] > -math.inf]
        assert torch.allclose(got, ref), f
        for e in st.examples(f, "top"):
            w = e["window"]
            p = int(wpos[w, f])
            lo = max(0, p - cfg.before)
            assert e["tokens"] == T[w, lo : p + cfg.after + 1].tolist()
            assert np.allclose(e["acts"], A[w, lo : p + cfg.after + 1, f].tolist(), atol=2e-3 * max(1, e["value"]))
            assert e["acts"][e["max_index"]] == pytest.approx(e["value"], rel=2e-3)
        # the sample holds every active window when it has room for them all
        active = set((wmax[:, f] > 0).nonzero().flatten().tolist())
        assert {e["window"] for e in st.examples(f, "samples")} == active
    # exact histogram of log10 activations
    vals = A[A > 0]
    feats = (A > 0).nonzero()[:, 2]
    edges = st.hist_edges.numpy()
    for f in range(0, n, 7):
        ref, _ = np.histogram(np.clip(np.log10(vals[feats == f].numpy()), edges[0], edges[-1]), bins=edges)
        assert st.histogram(f)[1] == ref.tolist()
    # co-occurrence (Jaccard) against sets
    on = (A > 0).view(-1, n)[K.view(-1)]
    for f in range(0, n, 5):
        if not on[:, f].any():
            continue
        inter = (on[:, f : f + 1] & on).sum(0).double()
        union = (on[:, f : f + 1] | on).sum(0).double()
        jac = inter / union
        jac[f] = -1
        j = st.neighbours[f][st.neighbours[f] >= 0]
        assert torch.allclose(st.jaccard[f][: len(j)].double(), jac[j], atol=1e-6)
        assert st.jaccard[f][0] == pytest.approx(float(jac.max()), abs=1e-6)


def test_batching_does_not_change_the_result(tiny):
    model, d, corpus = tiny(), sae(), docs()
    a = feature_stats(model, d, corpus, FeatureConfig(**{**CFG, "batch_size": 2}))
    b = feature_stats(model, d, corpus, FeatureConfig(**{**CFG, "batch_size": 8, "max_floats": 32 * 48 * 3}))
    assert torch.equal(a.counts, b.counts) and torch.equal(a.hist, b.hist)
    assert torch.allclose(a.top.value, b.top.value, atol=1e-5)
    v = a.top.value
    gap = torch.minimum(torch.cat([v[:1] + 1, v[:-1]]) - v, v - torch.cat([v[1:], v[-1:] - 1]))
    clear = gap > 1e-4  # windows with tied maxima (same text) may come in either order
    assert clear.float().mean() > 0.5 and torch.equal(a.top.window[clear], b.top.window[clear])
    assert torch.equal(a.neighbours, b.neighbours)


def test_logit_effects_through_final_norm_and_unembedding(tiny):
    model, d = tiny(), sae(point="resid_post.2")
    st = feature_stats(model, d, docs(8), FeatureConfig(**CFG))
    gamma = model.site("final_norm").module.weight.detach()
    W_U = model.hf.get_output_embeddings().weight.detach()
    eff = (d.W_dec.detach() * gamma) @ W_U.t()  # RMSNorm: the linear part is γ ⊙ w (up to a positive scale)
    for f in range(d.n_latents):
        assert st.logit_top[0][f].tolist() == eff[f].topk(5).indices.tolist()
        assert st.logit_bottom[0][f].tolist() == (-eff[f]).topk(5).indices.tolist()


def test_logit_effects_of_some_features_equal_those_rows_of_all(tiny):
    from llmri.features.stats import logit_effects

    model, d = tiny(), sae(point="resid_post.2")
    full = logit_effects(model, d, 5, chunk=7)
    some = torch.tensor([3, 0, 11])
    part = logit_effects(model, d, 5, features=some)
    for a, b in zip((*full.top, *full.bottom, full.hist, full.range), (*part.top, *part.bottom, part.hist, part.range)):
        torch.testing.assert_close(b[some], a[some])
        assert not b[[1, 2]].any()  # the others are left empty


def test_special_tokens_and_position_zero_never_count(tiny):
    model, d = tiny(), sae()
    st = feature_stats(model, d, docs(), FeatureConfig(**CFG))
    bos = model.bos_id
    for f in range(d.n_latents):
        for e in st.examples(f, "top"):
            assert e["tokens"][e["max_index"]] != bos


def test_save_and_load_round_trip(tiny, tmp_path):
    model, d = tiny(), sae()
    st = feature_stats(model, d, docs(), FeatureConfig(**CFG))
    st.save(tmp_path / "f")
    back = FeatureStats.load(tmp_path / "f")
    assert back.meta == st.meta and torch.equal(back.top.tokens, st.top.tokens)
    assert back.examples(3) == st.examples(3) and back.quantile_groups(3) == st.quantile_groups(3)


def test_quantile_groups_are_ordered_and_cover_the_sample(tiny):
    model, d = tiny(), sae()
    st = feature_stats(model, d, docs(), FeatureConfig(**CFG))
    f = int(st.counts.argmax())
    groups = st.quantile_groups(f, groups=4, per_group=1000)
    assert sum(len(g["examples"]) for g in groups) == len(st.examples(f, "samples"))
    lows = [g["range"][0] for g in groups]
    assert lows == sorted(lows, reverse=True)


def test_rows_collected_by_the_scan_give_the_same_statistics(tiny):
    """The scan keeps only kept rows (plus tokens and mask); rebuilding windows from them changes nothing."""
    from llmri.features import row_windows

    model, d, corpus = tiny(), sae(), docs()
    cfg = FeatureConfig(**CFG)
    direct = feature_stats(model, d, corpus, cfg)
    ws = list(model_windows(model, corpus, ["resid_post.1"], cfg))
    tokens, keep = torch.cat([w.tokens for w in ws]), torch.cat([w.keep for w in ws])
    rows = {"resid_post.1": torch.cat([w.acts["resid_post.1"][w.keep] for w in ws])}
    rebuilt = collect(d, row_windows(tokens, keep, rows, batch_size=7), cfg, model=model)
    assert torch.equal(direct.counts, rebuilt.counts) and torch.equal(direct.hist, rebuilt.hist)
    assert torch.allclose(direct.top.value, rebuilt.top.value) and torch.equal(direct.neighbours, rebuilt.neighbours)
