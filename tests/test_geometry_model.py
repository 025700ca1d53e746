"""Geometry on models: the ID profile's sampling, the steering edits, and the real-model comparison."""

import json

import numpy as np
import pytest
import torch

from llmri import data
from llmri.errors import GeometryError
from llmri.geometry.profile import ProfileConfig, id_profile, sample_states, shuffle_windows
from llmri.geometry.steer import Reference, Steerer, SteerConfig, concept_direction, left_padded, steer_compare

POS = ["the nation was at war", "peace came after the war", "the war was long", "men came back from war",
       "the war had no end", "great war in the world"]
NEG = ["the president said the law", "congress made a new law", "the government of the united states",
       "the law of the state", "states and the government", "the congress and the president"]


def test_shuffle_keeps_position_zero_and_each_windows_tokens():
    g = torch.Generator().manual_seed(0)
    batch = torch.arange(40).view(4, 10)
    out = shuffle_windows(batch, g)
    assert torch.equal(out[:, 0], batch[:, 0])
    assert not torch.equal(out, batch)
    for w in range(4):
        assert sorted(out[w].tolist()) == sorted(batch[w].tolist())


def test_sampled_states_are_the_captured_states_at_kept_positions(tiny, text_corpus):
    model = tiny()
    docs = data.load_corpus(str(text_corpus))
    cfg = ProfileConfig(points=24, per_window=1, position="last", context=16, split="all")
    windows = list(data.batched(data.token_windows(model, docs, data.WindowSpec(context=16, split="all")), 8, limit=24))
    states, used = sample_states(model, iter(windows), ["resid_post.1"], cfg, torch.Generator().manual_seed(0), False)
    assert used == 24 and states["resid_post.1"].shape == (24, model.d_model)
    batch = torch.cat(windows)
    ref = model.capture(batch, ["resid_post.1"])["resid_post.1"]
    kept = data.kept_mask(batch, [ref], model.special_ids, cfg.exclusion)
    last = torch.stack([ref[w, kept[w].nonzero().max()] for w in range(24)])
    np.testing.assert_allclose(states["resid_post.1"], last.numpy(), rtol=1e-5, atol=1e-6)


def test_id_profile_covers_every_layer_with_intervals_and_a_control(tiny, text_corpus, tmp_path):
    model = tiny()
    docs = data.load_corpus(str(text_corpus))
    prof = id_profile(model, docs, ProfileConfig(points=150, per_window=6, context=32, split="all", n_boot=20))
    assert [r.point for r in prof.corpus_ids] == ["embed"] + [f"resid_post.{l}" for l in range(model.n_layers)]
    assert len(prof.control_ids) == len(prof.corpus_ids)
    for r in prof.corpus_ids + prof.control_ids:
        assert np.isfinite(r.twonn.d) and r.twonn.d > 0 and r.twonn.lo <= r.twonn.d <= r.twonn.hi
        assert set(r.gride) == {1, 4, 16}
    # the word-level embedding repeats words: duplicates are dropped, not turned into infinities
    assert prof.corpus_ids[0].twonn.duplicates > 0
    prof.save(tmp_path / "id")
    saved = json.loads((tmp_path / "id" / "id_profile.json").read_text())
    assert saved["corpus_profile"][1]["twonn"]["d"] == pytest.approx(prof.corpus_ids[1].twonn.d)
    assert (tmp_path / "id" / "id_profile.png").stat().st_size > 10_000
    with pytest.raises(GeometryError, match="fewer than"):
        id_profile(model, docs, ProfileConfig(points=100_000, context=32, split="all", control=False))
    with pytest.raises(GeometryError, match="position rule"):
        id_profile(model, docs, ProfileConfig(position="middle"))


def _plane_reference(n=3000, D=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 2, generator=g) * 10
    basis = torch.linalg.qr(torch.randn(D, 2, generator=g))[0]
    return Reference(z @ basis.T + 0.01 * torch.randn(n, D, generator=g), neighbours=32, tangent_dim=2, rho=1.0), basis


def test_manifold_step_moves_along_the_tangent_plane_and_stays_on_the_data():
    ref, basis = _plane_reference()
    x = ref.states[:50] + 0.0
    v = torch.randn(20, generator=torch.Generator().manual_seed(1))
    v /= v.norm()
    torch.testing.assert_close(ref.manifold_step(x, v, 0.0, 4), x)  # s = 0 leaves states unchanged
    y = ref.manifold_step(x, v, 2.0, 4)
    step = y - x
    in_plane = step @ basis @ basis.T
    # the displacement lies in the plane (up to the noise scale) and goes the way v's in-plane part points
    assert (step - in_plane).norm(dim=1).max() < 0.1
    assert ((in_plane @ v) > 0).all()
    assert step.norm(dim=1).mean() == pytest.approx(2.0, rel=0.05)
    # linear addition of the same length leaves the plane by v's normal part
    lin = x + 2.0 * v
    assert ref.distance(lin, 10).mean() > 3 * ref.distance(y, 10).mean()


def test_steerer_adds_exactly_the_step_at_steered_positions_only(tiny):
    model = tiny()
    ids, mask, steer_mask = left_padded(model, ["the war was long and", "peace"])
    assert not steer_mask[:, 0].any() and not steer_mask[1, :-1].any() and steer_mask[1, -1]
    ref = Reference(torch.randn(200, model.d_model), 8, 2, 1.0)
    v = torch.zeros(model.d_model)
    v[3] = 1.0
    clean = model.capture(ids, ["resid_post.1"], attention_mask=mask)["resid_post.1"]
    for method, length in (("linear", 5.0), ("manifold", 0.0)):
        steerer = Steerer(ref, v, length, method, 2, 5)
        steerer.prefill_mask = steer_mask
        with model.intervene({"resid_post.1": steerer}):
            got = model.capture(ids, ["resid_post.1"], attention_mask=mask)["resid_post.1"]
        expected = clean + length * v * steer_mask[..., None]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert len(steerer.distances) == 1 and steerer.distances[0].shape == (int(steer_mask.sum()),)


def test_concept_direction_is_the_unit_difference_of_sentence_means(tiny):
    model = tiny()
    v, norm = concept_direction(model, "resid_post.0", POS, NEG)
    means = []
    for group in (POS, NEG):
        rows = [model.capture(model.tokenize(s).input_ids, ["resid_post.0"])["resid_post.0"][0, 1:].mean(0) for s in group]
        means.append(torch.stack(rows).mean(0))
    diff = means[0] - means[1]
    torch.testing.assert_close(v, diff / diff.norm(), rtol=1e-4, atol=1e-5)
    assert norm == pytest.approx(float(diff.norm()), rel=1e-4)


def test_steer_compare_rejects_bad_settings(tiny):
    model = tiny()
    with pytest.raises(GeometryError, match="layer 99"):
        steer_compare(model, SteerConfig(layer=99), positive=POS, negative=NEG, prompts=["the war"])
    with pytest.raises(GeometryError, match="unknown steering method"):
        steer_compare(model, SteerConfig(methods=("linear", "curvy")), positive=POS, negative=NEG, prompts=["the war"])


def test_real_model_linear_steering_adds_the_concept_and_leaves_the_manifold(real_model, tmp_path):
    """The bundled sea-vs-other concept at layer 10 of SmolLM2: a step of 0.5 ρ makes continuations score as
    'sea' far more often; the linear step moves states farther from the data than the manifold step."""
    cfg = SteerConfig(scales=(0.0, 0.5), reference_tokens=2048, new_tokens=12, batch_size=12)
    res = steer_compare(real_model, cfg, prompts=None)
    rows = {(r["method"], r["scale"]): r for r in res.rows}
    assert res.probe_accuracy >= 0.85
    base, lin, man = rows[("none", 0.0)], rows[("linear", 0.5)], rows[("manifold", 0.5)]
    assert lin["concept_lo"] > base["concept_hi"]
    assert lin["distance_ratio"] > man["distance_ratio"] > 0.9
    res.save(tmp_path / "steer")
    assert json.loads((tmp_path / "steer" / "steer.json").read_text())["verdict"]


def test_geometry_commands_write_their_artefacts_and_reject_bad_input(tiny_dir, text_corpus, tmp_path):
    from typer.testing import CliRunner

    from llmri.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["geometry", *map(str, args)])

    model = tiny_dir("llama")
    got = run("id", "-m", model, "--corpus", text_corpus, "-o", tmp_path / "id", "--points", 120, "--context", 32,
              "--split", "all")
    assert got.exit_code == 0, got.output
    assert len(json.loads(got.stdout)["twonn_shuffled"]) == 4 and (tmp_path / "id" / "id_profile.png").exists()

    got = run("diffusion", "-m", model, "--corpus", text_corpus, "-o", tmp_path / "dm", "--documents", 3,
              "--per-document", 80, "--concepts", "", "--neighbours", 10)
    assert got.exit_code == 0, got.output
    assert 50 < json.loads(got.stdout)["points"] <= 3 * 80 and (tmp_path / "dm" / "coordinates.safetensors").exists()

    files = {}
    for name, lines in (("a", POS), ("b", NEG), ("p", ["the war", "the law", "peace and"])):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines))
    got = run("steer", "-m", model, "--corpus", text_corpus, "-o", tmp_path / "st", "--positive", files["a"],
              "--negative", files["b"], "--prompts", files["p"], "--scales", "0,0.5", "--reference-tokens", 512,
              "--new-tokens", 4, "--neighbours", 8, "--layer", 1, "--probe-layer", 2)
    assert got.exit_code == 0, got.output
    rows = json.loads(got.stdout)["rows"]
    assert [(r["method"], r["scale"]) for r in rows] == [("none", 0.0), ("linear", 0.5), ("manifold", 0.5)]
    assert (tmp_path / "st" / "steer.png").exists()

    bad = run("steer", "-m", model, "--scales", "0,big")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: cannot read the step sizes") and "Traceback" not in bad.output
    bad = run("diffusion", "-m", model, "--corpus", text_corpus, "--normalise", "whiten", "--concepts", "",
              "-o", tmp_path / "x")
    assert bad.exit_code == 2 and "unknown normalisation" in bad.stderr and not (tmp_path / "x").exists()


def test_steer_along_a_dictionary_feature(tiny_dir, text_corpus, tmp_path):
    """``--feature FOLDER:INDEX`` steers along that latent's decoder row, at the layer the dictionary writes."""
    from typer.testing import CliRunner

    from llmri.cli import _feature_direction, app
    from llmri.dictionaries import DictConfig, build
    from llmri.dictionaries.formats import save

    model = tiny_dir("llama")
    lm = __import__("llmri").load_model(str(model))
    sae = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=lm.d_model, d_out=lm.d_model,
                           n_latents=16, k=4), seed=0)
    save(sae, tmp_path / "sae")
    v, source, layer = _feature_direction(f"{tmp_path / 'sae'}:5", lm)
    torch.testing.assert_close(v, sae.W_dec[5].detach().float())
    assert layer == 1 and "feature 5" in source
    prompts = tmp_path / "p.txt"
    prompts.write_text("the war\nthe law\n")
    for name, lines in (("a", POS), ("b", NEG)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines))
    got = CliRunner().invoke(app, ["geometry", "steer", "-m", str(model), "--corpus", str(text_corpus), "-o",
                                   str(tmp_path / "st"), "--feature", f"{tmp_path / 'sae'}:5", "--positive",
                                   str(tmp_path / "a.txt"), "--negative", str(tmp_path / "b.txt"), "--prompts",
                                   str(prompts), "--scales", "0,0.5", "--reference-tokens", "512", "--new-tokens",
                                   "3", "--neighbours", "8", "--probe-layer", "2"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["point"] == "resid_post.1"
    saved = json.loads((tmp_path / "st" / "steer.json").read_text())
    assert "feature 5" in saved["direction_source"] and saved["direction_norm"] is None
    bad = CliRunner().invoke(app, ["geometry", "steer", "-m", str(model), "--feature", f"{tmp_path / 'sae'}:99"])
    assert bad.exit_code == 2 and "feature 99 does not exist" in bad.stderr
