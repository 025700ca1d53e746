"""The MRI report on a tiny model: offline, escaped, and its numbers equal a direct computation."""

import json
import re

import numpy as np
import scipy.stats
import torch

from llmri import data
from llmri.scan import (CircuitSectionConfig, GeometrySectionConfig, HeatmapConfig, PassConfig, SaeSectionConfig,
                        ScanConfig, scan)
from llmri.stages import Need, capture
from llmri.stats import RunningStats

HOSTILE = "<img src=x onerror=alert(1)>"


def test_report_is_offline_escaped_and_correct(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    (text_corpus / f"{HOSTILE}.txt").write_text("the war of the nation " * 40)
    cfg = ScanConfig(model="unused", corpus=str(text_corpus), out=str(tmp_path / "rep"),
                     heatmaps=HeatmapConfig(passages=3, passage_tokens=12, chat_prompt="<script>alert('x')</script> peace?"),
                     stats=PassConfig(tokens=256, context=32, batch_size=4), exclusion=data.Exclusion(outlier_factor=None),
                     saes=SaeSectionConfig(layers=""))
    index = scan(cfg, model=model)
    html = index.read_text()
    # self-contained and offline: no scripts at all, nothing fetched from anywhere
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(http" not in html and "@import" not in html
    # hostile corpus/prompt text is shown escaped
    assert "&lt;script&gt;" in html
    assert HOSTILE not in html
    for sid in ("card", "layers", "depth"):
        assert f'id="{sid}"' in html

    summary = json.loads((tmp_path / "rep" / "scan.json").read_text())
    got = summary["sections"]["depth"]["resid_post.1"]
    # reference: the same windows, computed directly
    wins = data.token_windows(model, data.load_corpus(str(text_corpus)), data.WindowSpec(context=32, split="train"))
    ids = torch.stack([w for _, w in zip(range(256 // 32), wins)])
    x = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    keep = data.token_mask(ids, model.special_ids, cfg.exclusion)
    kept = x[keep].double()
    assert got["n_tokens"] == len(kept) and got["n_excluded"] == int((~keep).sum())
    np.testing.assert_allclose(got["mean_norm"], kept.norm(dim=-1).mean().item(), rtol=1e-5)
    np.testing.assert_allclose(got["kurtosis"], scipy.stats.kurtosis(kept.numpy(), axis=1).mean(), rtol=1e-4)
    assert summary["sections"]["card"]["n_layers"] == 3
    assert "position 0" in summary["sections"]["depth"]["exclusion"]


def test_running_stats_top_dims_find_a_planted_outlier_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g)
    x[:, 7] *= 40
    acc = RunningStats(32)
    acc.update(x[:250], torch.ones(250, dtype=torch.bool))
    acc.update(x[250:], torch.ones(250, dtype=torch.bool))
    r = acc.result()
    assert r.top_dims[0][0] == 7 and r.top_dims[0][1] > 20
    assert r.kurtosis > 10  # one coordinate dominates every token
    np.testing.assert_allclose(r.mean_norm, x.norm(dim=-1).mean().item(), rtol=1e-5)


def word_corpus(folder, n_docs: int, seed: int):
    """``n_docs`` documents of 300 random words of the tiny vocabulary."""
    import random

    from tiny import WORDS

    rng = random.Random(seed)
    folder.mkdir()
    for i in range(n_docs):
        (folder / f"d{i:03d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(300)))
    return folder


def test_dictionaries_section_trains_evaluates_and_saves_saes(tiny, tmp_path):
    from llmri.dictionaries import EvalConfig, evaluate, load

    model = tiny("llama")
    corpus = word_corpus(tmp_path / "corpus", 200, 0)
    cfg = ScanConfig(model="unused", corpus=str(corpus), out=str(tmp_path / "rep"), heatmaps=HeatmapConfig(passages=1),
                     stats=PassConfig(tokens=2048, context=32, batch_size=8), geometry=GeometrySectionConfig(points=0),
                     saes=SaeSectionConfig(layers="0,2", tokens=8192, expansion=2, eval_tokens=2048, ce_tokens=256),
                     circuits=CircuitSectionConfig(prompt=""))
    scan(cfg, model=model)
    summary = json.loads((tmp_path / "rep" / "scan.json").read_text())["sections"]["dictionaries"]
    assert set(summary) >= {"resid_post.0", "resid_post.2"}
    sae = load(tmp_path / "rep" / "saes" / "resid_post.2")
    assert sae.cfg.n_latents == 128 and (tmp_path / "rep" / "saes" / "resid_post.2" / "sparsity.safetensors").exists()
    again = evaluate(model, sae, data.load_corpus(str(corpus)),
                     EvalConfig(tokens=2048, ce_tokens=0, context=32, batch_size=8))
    np.testing.assert_allclose(again["nmse"], summary["resid_post.2"]["nmse"], rtol=1e-4)
    assert summary["resid_post.2"]["nmse"] < 1.0 and summary["resid_post.2"]["l0"] == 32
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="dictionaries"' in html and "CE recovered" in html
    assert "kept train-split tokens of the statistics pass" in html  # no second model pass for training
    # the features section: dashboards of those SAEs, linked, with the densest features shown inline
    feats = json.loads((tmp_path / "rep" / "scan.json").read_text())["sections"]["features"]
    assert 'id="features"' in html and 'href="dashboards/resid_post.2/index.html#f' in html
    site = tmp_path / "rep" / "dashboards" / "resid_post.2"
    assert (site / "index.html").exists() and len(list((site / "data" / "f").glob("*.js"))) == 128
    densest = [f["density"] for f in feats["resid_post.2"]["densest"]]
    assert densest == sorted(densest, reverse=True) and densest[0] > feats["resid_post.2"]["median"][0]["density"]


def test_one_pass_serves_every_need_with_aligned_kept_rows(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    ex = data.Exclusion(outlier_factor=1.05)  # low enough that tokens are outliers at one point but not another
    needs = {"stats": Need(stats=("resid_post.1",)), "saes": Need(rows=("resid_post.0", "resid_post.2"), windows=True),
             "few": Need(rows=("mlp_in.1",), limit=50, dtype=torch.float16)}
    got = capture(model, docs, needs, PassConfig(tokens=256, context=32, batch_size=8), ex)
    wins = data.token_windows(model, docs, data.WindowSpec(context=32, split="train"))
    ids = torch.stack([w for _, w in zip(range(8), wins)])
    x = model.capture(ids, ["resid_post.0", "resid_post.1", "resid_post.2", "mlp_in.1"])
    keep = data.token_mask(ids, model.special_ids, ex)
    kept = keep & ~data.outlier_mask(x["resid_post.0"], keep, ex) & ~data.outlier_mask(x["resid_post.2"], keep, ex)
    for p in ("resid_post.0", "resid_post.2"):
        torch.testing.assert_close(got["saes"].rows[p], x[p][kept].float())
    assert got["stats"].stats["resid_post.1"].n_tokens == int((keep & ~data.outlier_mask(x["resid_post.1"], keep, ex)).sum())
    assert len(got["saes"].rows["resid_post.0"]) < int(keep.sum())  # the rule did drop some tokens
    # rows map back to their windows
    assert torch.equal(got["saes"].tokens, ids) and torch.equal(got["saes"].kept, kept)
    few = got["few"].rows["mlp_in.1"]
    own = keep & ~data.outlier_mask(x["mlp_in.1"], keep, ex)
    assert few.dtype == torch.float16 and len(few) == 50
    torch.testing.assert_close(few, x["mlp_in.1"][own][:50].half())
    assert got["few"].tokens is None and got["stats"].rows == {}


def test_the_pass_stops_capturing_a_point_once_its_need_is_served(tiny, text_corpus, monkeypatch):
    model = tiny("llama")
    asked = []
    real = model.capture
    monkeypatch.setattr(model, "capture", lambda ids, points, **kw: asked.append(list(points)) or real(ids, points, **kw))
    capture(model, data.load_corpus(str(text_corpus)), {"s": Need(stats=("resid_post.1",)),
                                                         "r": Need(rows=("mlp_in.2",), limit=10)},
            PassConfig(tokens=256, context=32, batch_size=2), data.Exclusion())
    assert len(asked) == 4 and asked[0] == ["resid_post.1", "mlp_in.2"]  # 10 rows fill within the first batch
    assert all(a == ["resid_post.1"] for a in asked[1:])


def test_circuits_section_traces_the_prompt_with_quick_transcoders(tiny, tmp_path):
    model = tiny("llama")
    corpus = word_corpus(tmp_path / "corpus", 120, 1)
    cfg = ScanConfig(model="unused", corpus=str(corpus), out=str(tmp_path / "rep"), heatmaps=HeatmapConfig(passages=1),
                     stats=PassConfig(tokens=2048, context=32, batch_size=8), geometry=GeometrySectionConfig(points=0),
                     saes=SaeSectionConfig(layers=""),
                     circuits=CircuitSectionConfig(prompt="the nation and the war of the", tokens=2048, features=64))
    index = scan(cfg, model=model)
    summary = json.loads((tmp_path / "rep" / "scan.json").read_text())["sections"]["circuits"]
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    assert summary["feature_nodes"] == 64 and summary["validation"]["features"] == 10
    graph = json.loads((tmp_path / "rep" / "circuits" / "scan.json").read_text())
    assert len(graph["nodes"]) == summary["pruned_nodes"]
    html = index.read_text()
    assert 'id="circuits"' in html and 'src="circuits/index.html"' in html and "<script" not in html.lower()
    assert (tmp_path / "rep" / "circuits" / "index.html").exists()


def test_geometry_section_profiles_maps_and_steers(tiny, tmp_path):
    model = tiny("llama")
    corpus = word_corpus(tmp_path / "corpus", 60, 2)
    cfg = ScanConfig(model="unused", corpus=str(corpus), out=str(tmp_path / "rep"), heatmaps=HeatmapConfig(passages=1),
                     stats=PassConfig(tokens=1024, context=32, batch_size=8), saes=SaeSectionConfig(layers=""),
                     circuits=CircuitSectionConfig(prompt=""),
                     geometry=GeometrySectionConfig(points=200, steer_prompts=4, steer_tokens=4, steer_reference_tokens=512))
    index = scan(cfg, model=model)
    g = json.loads((tmp_path / "rep" / "scan.json").read_text())["sections"]["geometry"]
    assert len(g["id_profile"]["corpus_profile"]) == len(g["id_profile"]["control_profile"]) == model.n_layers + 1
    assert g["id_profile"]["config"]["points"] == 200
    assert len(g["diffusion_map"]["eigenvalues"]) == 6 and g["diffusion_map"]["points"] > 100
    assert [r["method"] for r in g["steering"]["rows"]] == ["none", "linear", "linear", "manifold", "manifold"]
    html = index.read_text()
    assert 'id="geometry"' in html and html.count('class="fig"') >= 3 + 1


def test_the_pass_draws_the_id_profile_sample_the_profile_would_draw_itself(tiny, text_corpus):
    from llmri.geometry.profile import ProfileConfig, profile_points, sample_states

    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    pc = ProfileConfig(points=100, per_window=5, split="train", context=32, batch_size=4)
    points = profile_points(model, pc)
    need = Need(rows=tuple(points), limit=pc.points, windows=True, sample=pc.per_window, seed=pc.seed)
    got = capture(model, docs, {"g": need}, PassConfig(tokens=2048, context=32, batch_size=4), pc.exclusion)["g"]
    spec = data.WindowSpec(context=32, split="train", seed=pc.seed)
    ref, used = sample_states(model, data.token_windows(model, docs, spec), points, pc,
                              torch.Generator().manual_seed(pc.seed), False)
    assert used == int(got.kept.any(1).sum()) == 20
    for p in points:
        np.testing.assert_array_equal(got.rows[p].numpy(), ref[p])


def test_the_pass_ends_once_every_need_is_served(tiny, text_corpus, monkeypatch):
    model = tiny("llama")
    calls = []
    real = model.capture
    monkeypatch.setattr(model, "capture", lambda ids, points, **kw: calls.append(len(ids)) or real(ids, points, **kw))
    got = capture(model, data.load_corpus(str(text_corpus)), {"r": Need(rows=("resid_post.1",), limit=10)},
                  PassConfig(tokens=4096, context=32, batch_size=2), data.Exclusion())
    assert len(got["r"].rows["resid_post.1"]) == 10 and calls == [2]  # not the 64 windows the pass allows
