"""Unlearning: tasks split as documented, each loss equals its formula at a known point and moves the model the
way it should, the closed-form edits do what their maths says, the attacks and the run folder; bad input is
one line with exit 2, and the real model's KJV perplexity rises under gradient ascent (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llmri.unlearning import evaluate as E
from llmri.unlearning import methods as M
from llmri.unlearning.run import RunConfig, run_unlearning
from llmri.unlearning.tasks import RETAIN_EVAL, Task, UnlearnError, check_disjoint, facts_task

from clirun import assert_clean_error, run


@pytest.fixture(scope="module")
def task(tiny):
    return facts_task(tiny("llama"), "forget10")


def test_facts_task_splits_are_disjoint_and_hold_out_retain_entities(task):
    f = task.facts
    ents = {k: {x.entity_id for x in v} for k, v in f.items()}
    assert len(ents["forget"]) == 10 and len(ents["retain_eval"]) == RETAIN_EVAL and len(ents["heldout"]) == 10
    assert not ents["forget"] & ents["retain_eval"] and not ents["heldout"] & (ents["forget"] | ents["retain_eval"])
    assert len(task.forget) == 120 and len(task.retain) == 12 * (100 - 10 - RETAIN_EVAL)
    assert ents["forget_kept"] < ents["forget"] and len(ents["forget_kept"]) == 5
    assert len(task.relearn) == 60  # the other five entities' facts
    with pytest.raises(UnlearnError, match="shares 1 question"):
        check_disjoint(f["forget"][:3], f["forget"][2:5])


def test_the_facts_validation_split_never_reads_the_test_sets(tiny, task):
    val = facts_task(tiny("llama"), "forget10", validation=True)
    ents = lambda t, k: {x.entity_id for x in t.facts[k]}  # noqa: E731
    test = ents(task, "forget") | ents(task, "retain_eval")
    assert len(ents(val, "forget")) == 10 and len(ents(val, "retain_eval")) == RETAIN_EVAL
    assert not (ents(val, "forget") | ents(val, "retain_eval")) & test
    assert not ents(val, "forget") & ents(val, "retain_eval")
    assert len(val.forget) == 120 and ents(val, "heldout") == ents(task, "heldout")
    assert len(val.retain) == 12 * (100 - 10 - RETAIN_EVAL - 10 - RETAIN_EVAL)  # retain-train less what was carved


def test_cloze_splits_are_by_subject_disjoint_and_a_tenth_each():
    from llmri.safety.cloze import load_cloze
    from llmri.unlearning.tasks import cloze_splits

    items = load_cloze()
    s = cloze_splits(items)
    subj = {k: {c.subject_id for c in v} for k, v in s.items()}
    n = len({c.subject_id for c in items}) // 10
    assert len(subj["forget"]) == len(subj["retain_eval"]) == n and len(subj["relearn"]) == n // 2
    assert not subj["forget"] & subj["retain_eval"] and not (subj["forget"] | subj["retain_eval"]) & subj["retain_train"]
    assert subj["relearn"] | subj["forget_kept"] == subj["forget"] and not subj["relearn"] & subj["forget_kept"]
    assert len(s["forget"]) + len(s["retain_eval"]) + len(s["retain_train"]) == len(items)
    assert {c.id for c in cloze_splits(items[::-1])["forget"]} == {c.id for c in s["forget"]}  # by hash, not order
    v = cloze_splits(s["retain_train"])  # the validation split: the same carving inside retain-train
    assert {c.subject_id for c in v["forget"] + v["retain_eval"]} <= subj["retain_train"]
    with pytest.raises(UnlearnError, match="knows only"):
        cloze_splits(items[:40])


def test_the_cloze_task_is_measured_as_raw_text_without_membership_inference(tiny, text_corpus):
    from llmri.safety.cloze import load_cloze, score_cloze
    from llmri.safety.knowledge import summarise
    from llmri.unlearning.tasks import cloze_rows, make_task

    model, items = tiny("llama"), load_cloze()[:12]
    with pytest.raises(UnlearnError, match="knows only 0 cloze facts"):  # a random model knows none
        make_task(model, "cloze")
    t = Task("cloze", cloze_rows(model, items[:6]), cloze_rows(model, items[6:]),
             facts={"forget": items[:6], "forget_kept": items[:3], "retain_eval": items[6:]})
    m = E.measure(model, t, ppl_tokens=256, corpus=str(text_corpus))
    assert "mia" not in m and m["forget"] == summarise(score_cloze(model, items[:6]))
    assert m["forget_paraphrased"] == summarise(score_cloze(model, items[:6], paraphrased=True))
    assert E.quick(model, t)[0] == pytest.approx(m["forget"]["probability"]["mean"])
    lens = E.lens_attack(model, t)
    assert lens["layers"] == [1, 2] and lens["top1"][-1] == pytest.approx(m["forget"]["top1"]["mean"])


def _copy(tiny):
    return E.clone(tiny("llama"))


def _mini(task, n=8):
    return Task("facts", task.forget[:n], task.retain[:n], facts=task.facts)


def test_npo_and_simnpo_first_losses_equal_their_formulas(tiny, task):
    t = _mini(task)
    model = _copy(tiny)
    out = M.fine_tune(model, t, M.UnlearnConfig("npo", steps=1, batch_size=8, retain_weight=0.0))
    assert out["loss"][0] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)  # θ = ref: −(2/β)·log σ(0)
    model = _copy(tiny)
    lp, n = M.sequence_logprobs(model.hf, *M.tensors(model, t.forget))
    beta = 0.1  # at SimNPO's β 4.5 the tiny model's forget loss is already ~1e-10: no signal to compare
    ref = (-(2 / beta) * torch.nn.functional.logsigmoid(-(beta / n) * lp - 0.125)).mean().item()
    out = M.fine_tune(model, t, M.UnlearnConfig("simnpo", steps=1, batch_size=8, retain_weight=0.0, beta=beta))
    assert out["loss"][0] == pytest.approx(ref, rel=1e-4)


def test_ga_and_graddiff_lower_the_forget_likelihood_graddiff_keeps_retain_better(tiny, task):
    t = _mini(task, 16)
    base = _copy(tiny)
    f0 = M.sequence_logprobs(base.hf, *M.tensors(base, t.forget))[0].sum().item()
    r0 = M.sequence_logprobs(base.hf, *M.tensors(base, t.retain))[0].sum().item()
    got = {}
    for name in ("ga", "graddiff"):
        m = _copy(tiny)
        out = M.fine_tune(m, t, M.UnlearnConfig(name, steps=6, lr=1e-3, batch_size=8))
        got[name] = (M.sequence_logprobs(m.hf, *M.tensors(m, t.forget))[0].sum().item(),
                     M.sequence_logprobs(m.hf, *M.tensors(m, t.retain))[0].sum().item())
        assert len(out["loss"]) == 6 and out["flops"] > 0 and out["stopped"] is None
    assert got["ga"][0] < f0 - 1 and got["graddiff"][0] < f0 - 1
    assert r0 - got["graddiff"][1] < r0 - got["ga"][1]  # the retain term costs retain likelihood less


def test_rmu_reads_every_token_after_the_shared_template_header(tiny, task):
    rows = [([1, 2, 3, 9, 9, 5], 4), ([1, 2, 3, 7], 3), ([1, 2, 3, 7, 8], 4)]
    assert M.shared_prefix(rows) == 3 and M.shared_prefix(rows[1:]) == 4 and M.shared_prefix(rows[:1]) == 6
    ids, mask, labels = M.tensors(tiny(), rows)
    got = M._read_positions(mask, 3)
    assert got.tolist() == [[False] * 3 + [True] * 3, [False] * 3 + [True, False, False], [False] * 3 + [True, True, False]]
    t = _mini(task, 16)  # on real fact rows: the question's tokens are read, not only the answer's
    skip = M.shared_prefix(t.forget + t.retain)
    assert 0 < skip < min(start for _, start in t.forget)


def test_rmu_trains_only_its_mlps_and_pulls_forget_states_to_the_target(tiny, task):
    t = _mini(task, 16)
    model = _copy(tiny)
    before = {n: p.clone() for n, p in model.hf.named_parameters()}
    # retain term off: the tiny word-level tokenizer reads most fact words as <unk>, so forget and retain states
    # nearly coincide and a retain term would hold the forget states in place
    cfg = M.UnlearnConfig("rmu", steps=8, lr=3e-3, batch_size=8, layer=1, rmu_retain=0.0)
    rmu = M._RMU(model, t, cfg)
    ids, mask, labels = M.tensors(model, t.forget)

    def dist():
        h = model.capture(ids, ["resid_post.1"], attention_mask=mask)["resid_post.1"].float()
        return (h[labels != -100] - rmu.target).norm(dim=-1).mean().item()

    d0 = dist()
    M.fine_tune(model, t, cfg)
    assert dist() < 0.9 * d0
    changed = {n for n, p in model.hf.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.0.mlp", "model.layers.1.mlp")) for n in changed), changed


def test_a_diverging_loss_stops_and_keeps_the_last_good_weights(tiny, task):
    model = _copy(tiny)
    out = M.fine_tune(model, _mini(task), M.UnlearnConfig("ga", steps=40, lr=1e30, batch_size=4))
    assert out["stopped"] and "became" in out["stopped"] and len(out["loss"]) < 40
    assert all(torch.isfinite(p).all() for p in model.hf.parameters())


def test_manifold_projector_finds_the_forget_direction_outside_the_retain_subspace():
    g = torch.Generator().manual_seed(0)
    d = 12
    retain = torch.randn(400, 3, generator=g, dtype=torch.float64) @ torch.eye(d, dtype=torch.float64)[:3]
    forget = retain[:200].clone()
    forget[:, 7] += 3 * torch.randn(200, generator=g, dtype=torch.float64)  # only forget data uses axis 7
    p = M.manifold_projector(forget, retain, rank=1, retain_energy=0.999)
    want = torch.zeros(d, d, dtype=torch.float64)
    want[7, 7] = 1
    torch.testing.assert_close(p, want, atol=1e-8, rtol=0)
    assert (retain @ p).abs().max() < 1e-8  # the retain data is untouched


def test_leace_eraser_equalises_class_means_and_is_a_projection():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 2
    e = M.leace_eraser(a, b)
    keep = torch.eye(6, dtype=torch.float64) - e
    torch.testing.assert_close((a @ keep.T).mean(0), (b @ keep.T).mean(0), atol=1e-8, rtol=0)
    torch.testing.assert_close(e @ e, e, atol=1e-8, rtol=0)
    assert torch.linalg.matrix_rank(e).item() == 1


def test_leace_with_fewer_tokens_than_dimensions_stays_a_bounded_projection():
    # 40 tokens in 64 dimensions, one massive direction (as in real MLP outputs) and many near-null ones; the
    # classes differ along the massive one and a little along a quiet one. Without shrinkage ‖E‖ ≈ 290 and the
    # means are not equalised (the null directions); with it, ‖E‖ ≈ 4.5 and they are
    g = torch.Generator().manual_seed(3)
    scale = torch.cat([torch.tensor([300.0]), torch.ones(7), torch.full((56,), 1e-2)]).double()
    a = torch.randn(10, 64, generator=g, dtype=torch.float64) * scale
    b = torch.randn(30, 64, generator=g, dtype=torch.float64) * scale
    a[:, 0] += 300
    a[:, 20] += 0.05
    e = M.leace_eraser(a, b)
    keep = torch.eye(64, dtype=torch.float64) - e
    torch.testing.assert_close((a @ keep.T).mean(0), (b @ keep.T).mean(0), atol=1e-8, rtol=0)
    torch.testing.assert_close(e @ e, e, atol=1e-8, rtol=0)
    assert torch.linalg.matrix_norm(e, ord=2) < 10


def test_edits_fold_into_the_mlp_output_map(tiny, task):
    t = _mini(task, 16)
    model = _copy(tiny)
    layers = [1]
    yf, yr = M.mlp_outputs(model, t.forget, layers), M.mlp_outputs(model, t.retain, layers)
    e = M.leace_eraser(yf[1], yr[1])
    M.apply_out(model, 1, e)
    # the edited layer's MLP output is the old one times (I − E): read again from the same inputs
    yf_new = M.mlp_outputs(model, t.forget, layers)[1]
    torch.testing.assert_close(yf_new, yf[1] @ (torch.eye(len(e), dtype=torch.float64) - e).T, atol=1e-4, rtol=1e-4)
    out = M.edit(_copy(tiny), t, M.UnlearnConfig("manifold", rank=2, edit_layers="0-1"))
    assert out["layers"] == [0, 1] and all(0 < v <= 2.001 for v in out["removed"].values())


def test_layers_of_spellings_and_errors():
    assert M.layers_of("all", 3) == [0, 1, 2] and M.layers_of("0,2", 3) == [0, 2] and M.layers_of("1-2", 3) == [1, 2]
    for bad in ("x", "5", "2-7"):
        with pytest.raises(UnlearnError, match="edit-layers"):
            M.layers_of(bad, 3)


def test_4bit_quantisation_leaves_sixteen_levels_per_group(tiny):
    model = _copy(tiny)
    w0 = model.hf.model.layers[0].mlp.down_proj.weight.clone()
    n = E.quantise_4bit(model.hf)
    w = model.hf.model.layers[0].mlp.down_proj.weight.reshape(w0.shape[0], -1, 32)
    assert n == 7 * 3  # q, k, v, o, gate, up, down per layer
    scale = w0.reshape_as(w).abs().amax(-1, keepdim=True) / 7
    levels = (w / scale).round()
    torch.testing.assert_close(w, levels * scale)
    assert levels.min() >= -8 and levels.max() <= 7
    assert ((w - w0.reshape_as(w)).abs() <= scale / 2 + 1e-6).all()


def test_fluency_counts_distinct_bigrams(tiny):
    assert E.distinct2([5, 5, 5, 5]) == pytest.approx(1 / 3) and E.distinct2([1, 2, 1, 2, 3]) == pytest.approx(3 / 4)
    assert E.distinct2([7]) == 0.0 and E.distinct2([1, 2, 3]) == 1.0
    model = _copy(tiny)
    out = E.fluency(model, prompts=2, tokens=12)
    ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"] for a in out["answers"]]
    assert len(ids) == 2 and out["distinct2"] == pytest.approx(np.mean([E.distinct2(x) for x in ids]))


def test_direction_ablation_undoes_a_method_that_adds_one_direction(tiny, task):
    """An 'unlearning' that adds one vector to every residual write of the forget answers' layer is undone
    exactly by ablating that vector's direction everywhere (the attack's premise, on a known edit)."""
    from llmri.safety.refusal import ablation_edits
    from llmri.hooks import Add

    model = _copy(tiny)
    rows = task.forget[:16]
    t = Task("facts", rows, task.retain[:8], facts={**task.facts, "forget": task.facts["forget"][:16],
                                                    "retain_eval": task.facts["retain_eval"][:8]})
    before = E.states(model, rows)
    u = torch.zeros(model.d_model)
    u[3] = 5.0
    clean = E.quick(model, t)
    with model.intervene(ablation_edits(model, u)):
        ablated_only = E.quick(model, t)  # ablating u alone barely matters here
    with model.intervene({"mlp_out.1": Add(u)}):
        now = E.states(model, rows)
        hidden = E.quick(model, t)
        got = E.direction_ablated(model, t, before, now)
    assert got["layer"] in (1, 2) and hidden[0] != pytest.approx(clean[0], rel=1e-3)
    assert got["forget"] == pytest.approx(ablated_only[0], rel=1e-4)  # the added direction is gone again


def test_off_manifold_is_one_for_unmoved_states_and_large_for_states_pushed_away():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 8))
    own = np.arange(100)
    assert E.off_manifold(ref, ref[:100], own) == 1.0
    away = ref[:100] + np.r_[np.zeros(7), 20.0]  # pushed far along one axis
    assert E.off_manifold(ref, away, own) > 5


def test_geometry_sees_the_plane_and_which_states_left_it():
    rng = np.random.default_rng(1)
    plane = lambda n: torch.tensor(rng.normal(size=(n, 2)) @ rng.normal(size=(2, 20)))  # noqa: E731
    before = {k: [plane(400), plane(400)] for k in ("forget", "retain")}
    kick = torch.zeros(20, dtype=torch.float64)
    kick[0] = 30.0
    after = {"forget": [before["forget"][0], before["forget"][1] + kick], "retain": before["retain"]}
    g = E.geometry(before, after, points=300)
    assert all(abs(d[0] - 2) < 0.5 for d in g["id"]["forget_before"] + g["id"]["retain_after"])  # TwoNN: 2-D
    assert g["off_manifold"]["retain"] == [1.0, 1.0] and g["off_manifold"]["forget"][0] == 1.0
    assert g["off_manifold"]["forget"][1] > 5
    d = g["diffusion"]
    assert d["layer"] == 1 and len(d["forget_before"]) == len(d["forget_after"]) == 300 and len(d["forget_after"][0]) == 2


def _identity_sae(point: str, d: int):
    """A ReLU SAE whose latent i is coordinate i (encoder and decoder the identity): a_i = max(x_i, 0)."""
    from llmri.dictionaries import DictConfig, SparseCoder

    sae = SparseCoder(DictConfig(kind="sae", arch="relu", in_points=[point], d_in=d, n_latents=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae.eval()


def test_clamp_selection_keeps_features_of_forget_tokens_only():
    from llmri.unlearning.clamp import select

    rng = np.random.default_rng(0)
    off = lambda n: -torch.tensor(np.abs(rng.normal(size=(n, 8))), dtype=torch.float32)  # noqa: E731  nothing fires
    forget, retain = off(50), off(200)
    forget[:, 5], forget[:25, 2], forget[:, 7], retain[:, 7] = 1.5, 0.5, 1.0, 1.0  # 7 fires on both
    retain[:1, 2] = 1.0  # 2 fires on 1 of 200 retain tokens: allowed at 0.01
    f = select(_identity_sae("resid_post.1", 8), forget, retain, 3, 0.01)
    assert f.ids == [5, 2] and f.forget_freq == [1.0, 0.5] and f.retain_freq == [0.0, 0.005]
    assert f.mean_act == pytest.approx([1.5, 0.5])
    with pytest.raises(UnlearnError, match="no SAE feature"):
        select(_identity_sae("resid_post.1", 8), retain, retain, 3, 0.0)  # whatever fires on forget fires on retain


def test_a_saved_sae_is_used_at_its_layer_and_refused_at_another(tiny, task, tmp_path):
    from llmri.dictionaries import save
    from llmri.unlearning.clamp import prepare

    model, t = tiny("llama"), _mini(task, 16)
    save(_identity_sae("resid_post.1", model.d_model), tmp_path / "sae")
    sae, feats, cost = prepare(model, t, M.UnlearnConfig("sae", sae=str(tmp_path / "sae"), layer=1, sae_retain_max=1.0))
    assert feats.point == "resid_post.1" and torch.equal(sae.W_enc, torch.eye(model.d_model)) and cost["flops"] > 0
    with pytest.raises(UnlearnError, match="reads resid_post.1, not resid_post.2"):
        prepare(model, t, M.UnlearnConfig("sae", sae=str(tmp_path / "sae"), layer=2))


def test_conditional_clamping_moves_active_features_only(tiny):
    from llmri.unlearning.clamp import Features, clamp

    model = _copy(tiny)
    ids = torch.tensor([[5, 17, 9, 33, 2, 11, 40, 8]])
    before = model.capture(ids, ["resid_post.1", "resid_post.2"])
    h = before["resid_post.1"][0]
    j1, j2 = [j for j in range(model.d_model) if h[0, j] <= 0 and (h[:, j] > 0).any()][:2]  # off at the first token
    feats = Features("resid_post.1", [j1, j2], [1.0, 1.0], [0.0, 0.0], [1.5, 0.25])
    handle = clamp(model, _identity_sae("resid_post.1", model.d_model), feats, strength=2.0)
    after = model.capture(ids, ["resid_post.1", "resid_post.2"])
    g = after["resid_post.1"][0]
    want = h.clone()
    for j, target in ((j1, -3.0), (j2, -0.5)):  # −c·m where the feature fires (h_j > 0), untouched elsewhere
        want[:, j] = torch.where(h[:, j] > 0, torch.tensor(target), h[:, j])
    torch.testing.assert_close(g, want)
    first = int((h[:, [j1, j2]] > 0).any(1).float().argmax())  # tokens before the first clamped one pass through
    assert first > 0
    torch.testing.assert_close(after["resid_post.2"][0][:first], before["resid_post.2"][0][:first])
    assert not torch.allclose(after["resid_post.2"][0][first:], before["resid_post.2"][0][first:])
    handle.remove()
    torch.testing.assert_close(model.capture(ids, ["resid_post.1"])["resid_post.1"], before["resid_post.1"])


def test_drift_is_relative_distance_per_layer():
    a = [torch.ones(4, 3), torch.full((4, 3), 2.0)]
    assert E.drift(a, [2 * a[0], a[1]]) == pytest.approx([1.0, 0.0])


def test_mia_is_one_when_members_are_always_likelier():
    from llmri.safety.knowledge import Scores

    def s(ans):
        n = len(ans)
        return Scores([str(i) for i in range(n)], [str(i) for i in range(n)], np.array(ans), np.array(ans), np.zeros((n, 5)))

    assert E.mia(s([-1.0, -0.5, -0.2]), s([-3.0, -2.0]))["auroc"] == 1.0
    assert E.mia(s([-3.0, -2.0]), s([-1.0, -0.5]))["auroc"] == 0.0


def test_a_run_writes_table_and_pareto_resumes_and_refuses_other_settings(tiny_dir, text_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(corpus=str(text_corpus), eval_every=1, relearn_steps=1, ppl_tokens=256,
                    method=M.UnlearnConfig(steps=2, batch_size=4, rank=2, sae_tokens=4096, sae_retain_max=1.0,
                                           sae_clamp=2.0))
    table = run_unlearning(str(tiny_dir("llama")), out, ["ga", "manifold"], cfg)
    names = [r["method"] for r in table["rows"]]
    assert names == ["original", "ga", "manifold"]
    ga = json.loads((out / "ga" / "result.json").read_text())
    assert [p[0] for p in ga["trajectory"]] == [1, 2] and {"quant4", "relearn", "lens"} <= set(ga["attacks"])
    lens = ga["attacks"]["lens"]  # layers 1 and 2 of 3; the last one's lens is the model's own output
    assert lens["layers"] == [1, 2] and lens["top1"][-1] == pytest.approx(ga["measures"]["forget"]["top1"]["mean"])
    assert lens["best"]["top1"]["mean"] == max(lens["top1"])
    linear = ga["attacks"]["linear_lens"]  # fitted on the unlearned model's own states on the general corpus
    assert linear["layers"] == [1, 2] and linear["fit_tokens"] > 0 and linear["corpus"] == str(text_corpus)
    assert len(ga["drift"]["forget"]) == 3 and min(ga["drift"]["forget"]) > 0  # GA moved the forget states
    assert ga["attacks"]["direction"]["layer"] == int(np.argmax(ga["drift"]["forget"]))
    assert (out / "representation.png").read_bytes()[:4] == b"\x89PNG"
    assert len(ga["geometry"]["off_manifold"]["forget"]) == 3 and ga["geometry"]["diffusion"]["layer"] in range(3)
    assert all((out / f).read_bytes()[:4] == b"\x89PNG" for f in ("geometry.png", "diffusion.png"))
    assert [p[0] for p in json.loads((out / "manifold" / "result.json").read_text())["trajectory"]] == [1, 2]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "| ga |" in (out / "table.md").read_text()
    stamp = (out / "ga" / "result.json").stat().st_mtime_ns
    run_unlearning(str(tiny_dir("llama")), out, ["ga", "leace", "sae"], cfg)  # resumes: ga kept, leace, sae added
    assert (out / "ga" / "result.json").stat().st_mtime_ns == stamp and (out / "leace" / "result.json").exists()
    sae = json.loads((out / "sae" / "result.json").read_text())
    assert [p[0] for p in sae["trajectory"]] == [0.0, 1.0, 2.0] and sae["outcome"]["point"] == "resid_post.0"
    assert 1 <= len(sae["outcome"]["features"]) <= 16 and sae["outcome"]["trained_sae"]
    with pytest.raises(UnlearnError, match="other settings"):
        run_unlearning(str(tiny_dir("llama")), out, ["ga"], RunConfig(corpus=str(text_corpus), eval_every=2))
    # a retain-only model given later: forget quality for every row from the stored truth ratios; the model
    # itself as its own gold standard gives identical distributions, p = 1
    table = run_unlearning(str(tiny_dir("llama")), out, ["ga"], cfg, retain_only=str(tiny_dir("llama")))
    fq = {r["method"]: r["forget_quality"] for r in table["rows"]}
    assert fq["original"] == pytest.approx(1.0) and fq["retain-only"] == pytest.approx(1.0) and 0 <= fq["ga"] <= 1
    lens = {r["method"]: r["lens_forget_top1"] for r in table["rows"]}  # the same model: the same lens reads
    assert lens["retain-only"] == lens["original"]
    linear = {r["method"]: r["linear_lens_forget_top1"] for r in table["rows"]}
    assert linear["retain-only"] == linear["original"] and 0 <= linear["ga"] <= 1
    with pytest.raises(UnlearnError, match="already holds the retain-only model"):
        run_unlearning(str(tiny_dir("llama")), out, ["ga"], cfg, retain_only=str(tmp_path))

    # the report's section shows the table (every method's row) and the Pareto plot
    from llmri.scan import ScanConfig
    from llmri.stages import Inputs
    from llmri.unlearning.scan_section import UNLEARNING, section

    cfg = ScanConfig(model="unused", unlearning=(str(out),))
    assert UNLEARNING.needs(cfg, None) is None
    sec = section(Inputs(None, [], cfg, tmp_path, None, {}))
    assert sec.html.count("<tr>") == 1 + 6 and sec.html.count('<img class="fig"') == 1
    assert [r["method"] for r in sec.data[str(out)]["rows"]] == ["original", "retain-only", "ga", "leace", "manifold", "sae"]


def test_scan_refuses_a_folder_that_is_no_unlearning_run(tiny_dir, tmp_path):
    (tmp_path / "junk").mkdir()
    res = run("scan", "-m", tiny_dir("llama"), "--out", tmp_path / "rep", "--unlearning", tmp_path / "junk")
    assert_clean_error(res, "holds no table.json")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("args, text", [
    (["--method", "ga,bogus"], "unknown unlearning method 'bogus'"),
    (["--task", "mmlu"], "unknown unlearning task"),
    (["--forget", "forget50"], "unknown forget split"),
    (["--lr", "0"], "lr must be > 0"),
    (["--steps", "0"], "steps"),
    (["--retain-energy", "1.5"], "retain_energy"),
    (["--method", "leace", "--edit-layers", "9"], "outside 0…2"),
    (["--method", "rmu", "--layer", "7"], "outside the model's layers"),
    (["--task", "kjv", "--retain-only", "x"], "retain-only"),
    (["--split", "train"], "split"), (["--task", "kjv", "--split", "validation"], "no validation split"),
    (["--split", "validation", "--retain-only", "x"], "test split"),
    (["--batch-size", "0"], "batch_size"), (["--beta", "0"], "beta"), (["--gamma", "-1"], "gamma"),
    (["--rank", "0"], "rank"), (["--rmu-scale", "0"], "rmu_scale"), (["--rmu-retain", "-1"], "rmu_retain"),
    (["--retain-weight", "-1"], "retain_weight"), (["--windows", "0"], "windows"), (["--eval-every", "0"], "eval_every"),
    (["--relearn-steps", "-1"], "relearn_steps"), (["--ppl-tokens", "10"], "ppl_tokens"), (["--seed", "-1"], "seed"),
    (["--retain-only", "/nonexistent/model"], "nonexistent"),
    (["--sae-features", "0"], "sae_features"), (["--sae-retain-max", "2"], "sae_retain_max"),
    (["--sae-clamp", "-1"], "sae_clamp"), (["--sae-tokens", "0"], "sae_tokens"), (["--sae-latents", "-1"], "sae_latents"),
    (["--method", "sae", "--layer", "7"], "outside the model's layers"),
    (["--method", "sae", "--sae", "/nonexistent/sae"], "no dictionary at /nonexistent/sae"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_dir, text_corpus, tmp_path, args, text):
    out = tmp_path / "o"
    res = run("unlearn", "--model", tiny_dir("llama"), "--out", out, "--corpus", text_corpus, *args)
    assert_clean_error(res, text)
    assert not out.exists()


def test_cli_refuses_a_bad_corpus_and_a_foreign_out_before_writing(tiny_dir, tmp_path):
    res = run("unlearn", "--model", tiny_dir("llama"), "--out", tmp_path / "o", "--corpus", tmp_path / "missing.txt")
    assert_clean_error(res, "missing.txt")
    assert not (tmp_path / "o").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    res = run("unlearn", "--model", tiny_dir("llama"), "--out", foreign)
    assert_clean_error(res)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_gradient_ascent_on_kjv_raises_its_perplexity_more_than_the_corpus(real_model):
    from llmri.unlearning.tasks import domain_task

    model = E.clone(real_model)
    task = domain_task(model, windows=16)
    before = E.quick(model, task, ppl_tokens=1024)
    M.fine_tune(model, task, M.UnlearnConfig("graddiff", steps=4, lr=2e-5, batch_size=4))
    after = E.quick(model, task, ppl_tokens=1024)
    assert after[0] / before[0] > 1.05 and after[0] / before[0] > after[1] / before[1], (before, after)
