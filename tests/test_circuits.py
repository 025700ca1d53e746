"""Circuit tracing on tiny random models: the replacement model is exact, its linearisation is complete,
attribution rows are what they claim to be, pruning/scores behave, and graph predictions of interventions
match measured effects when the dictionaries are exact and attention is frozen."""

import json

import pytest
import torch

import llmri
from llmri.circuits import AttributionConfig, Graph, attribute, build, prune, scores, validate
from llmri.circuits import intervene as iv
from llmri.circuits.attribution import logit_directions
from llmri.circuits.export import graph_json, node_ids, suggest_supernodes
from llmri.circuits.transcoders import Transcoders
from llmri.data import Exclusion
from llmri.dictionaries import DictConfig, build as build_dict

PROMPT = "the nation and the war of the states"
ALL = AttributionConfig(max_feature_nodes=None)


def scaled_model(folder):
    """A tiny model whose residual stream is O(1) (random init is ~0.02), so float error stays relative."""
    model = llmri.load_model(str(folder))
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if p.dim() > 1 and "norm" not in name and "ln" not in name:
                p.mul_(10.0)
        emb = model.hf.get_input_embeddings().weight
        emb.add_(0.2 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)))  # Gemma/NeoX pad rows start at zero: a zero BOS makes σ ≈ √eps
    return model


def random_tcs(model, kind="tc", arch="relu", skip=True, n=32, seed=0, k=4):
    L, d = model.n_layers, model.d_model
    g = torch.Generator().manual_seed(seed)

    def rnd(m):
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name == "log_threshold":
                    p.copy_(torch.full(p.shape, -3.0))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.05 if "W_" in name else 0.02))
            m.in_scale.uniform_(0.5, 2.0, generator=g)
            m.out_scale.uniform_(0.5, 2.0, generator=g)
        return m.eval()

    if kind == "clt":
        cfg = DictConfig(kind="clt", arch=arch, in_points=[f"mlp_in.{l}" for l in range(L)],
                         out_points=[f"mlp_out.{l}" for l in range(L)], d_in=d, d_out=d, n_latents=n, k=k)
        return Transcoders(rnd(build_dict(cfg)), L)
    return Transcoders([rnd(build_dict(DictConfig(kind="transcoder", arch=arch, in_points=[f"mlp_in.{l}"],
                                                  out_points=[f"mlp_out.{l}"], d_in=d, d_out=d, n_latents=n, k=k,
                                                  skip=skip))) for l in range(L)], L)


def exact_gpt2(folder):
    """GPT-2 with ReLU MLPs, and transcoders that are those MLPs: every error node is zero."""
    model = scaled_model(folder)
    dicts = []
    for l, block in enumerate(model.blocks):
        block.mlp.act = torch.nn.ReLU()
        d, n = model.d_model, block.mlp.c_fc.weight.shape[1]
        tc = build_dict(DictConfig(kind="transcoder", arch="relu", in_points=[f"mlp_in.{l}"],
                                   out_points=[f"mlp_out.{l}"], d_in=d, d_out=d, n_latents=n))
        with torch.no_grad():
            tc.W_enc.copy_(block.mlp.c_fc.weight.t())
            tc.b_enc.copy_(block.mlp.c_fc.bias)
            tc.W_dec.copy_(block.mlp.c_proj.weight)
            tc.b_dec.copy_(block.mlp.c_proj.bias)
        dicts.append(tc.eval())
    return model, Transcoders(dicts, model.n_layers)


def _targets_reconstructed(model, tcs, g, rep):
    """(row sum + constant, actual) of every target: the constant is the target's value with every source
    coefficient at zero (biases propagated through the frozen model)."""
    L = model.n_layers
    reads = [f"mlp_in.{l}" for l in range(L)] + ["final_norm"]
    ones = rep.coefficients(1, requires_grad=False)
    with torch.no_grad():
        full = rep.forward(*ones, reads=reads)
        zero = rep.forward(*(torch.zeros_like(c) for c in ones), reads=reads)
    got, want = [], []
    for i in range(g.n_features):
        l, p, f = g.features[i].tolist()
        w, _ = tcs.encoder(l, torch.tensor([f]))
        got.append(g.adjacency[i].sum() + zero[f"mlp_in.{l}"][0, p] @ w[0])
        want.append(full[f"mlp_in.{l}"][0, p] @ w[0])
    vecs = logit_directions(model, g.logit_tokens)
    for j in range(g.n_logits):
        got.append(g.adjacency[g.logit_slice][j].sum() + zero["final_norm"][0, -1] @ vecs[j])
        want.append(full["final_norm"][0, -1] @ vecs[j])
    return torch.stack(got), torch.stack(want)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "qwen3", "gpt_neox"])
def test_replacement_model_is_exact_and_its_linearisation_complete(tiny_dir, arch):
    model = scaled_model(tiny_dir(arch))
    tcs = random_tcs(model)
    ids = model.tokenize([PROMPT]).input_ids[0]
    rep = build(model, tcs, ids)
    assert rep.activation.numel() > 0 and not rep.kept[0]
    with torch.no_grad():  # all coefficients 1: the replacement model is the model, logits and all
        logits = rep.forward(*rep.coefficients(2, requires_grad=False), reads=["logits"])["logits"]
    torch.testing.assert_close(logits[1], rep.logits, rtol=1e-4, atol=1e-4)
    g = attribute(model, tcs, ids, ALL)
    assert g.n_features == g.n_active == rep.activation.numel()
    got, want = _targets_reconstructed(model, tcs, g, rep)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().detach()))
    # logits are attributed at the last position, the most likely token first
    probs = torch.softmax(rep.logits[-1], -1)
    assert int(g.logit_tokens[0]) == int(probs.argmax())


def test_cross_layer_transcoder_replacement(tiny_dir):
    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model, kind="clt", arch="topk")
    ids = model.tokenize([PROMPT]).input_ids[0]
    rep = build(model, tcs, ids)
    g = attribute(model, tcs, ids, ALL)
    got, want = _targets_reconstructed(model, tcs, g, rep)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().detach()))
    # a layer-0 feature writes to every later layer, so it has direct edges into layer-2 features
    first = (g.features[:, 0] == 0).nonzero().flatten()
    late = (g.features[:, 0] == 2).nonzero().flatten()
    assert g.adjacency[late][:, first].abs().sum() > 0


def test_edges_equal_single_target_gradients_and_do_not_depend_on_batching(tiny_dir):
    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model)
    ids = model.tokenize([PROMPT]).input_ids[0]
    g1 = attribute(model, tcs, ids, AttributionConfig(max_feature_nodes=None, batch_size=1))
    g64 = attribute(model, tcs, ids, ALL)
    # same selection order up to ties; compare rows by feature identity
    key = lambda g: {tuple(f): i for i, f in enumerate(g.features.tolist())}  # noqa: E731
    k1, k64 = key(g1), key(g64)
    assert k1.keys() == k64.keys()
    order = [k64[f] for f in k1]
    n = g1.n_features
    cols1 = torch.cat([torch.tensor(order), torch.arange(n, g1.adjacency.shape[0])])
    torch.testing.assert_close(g1.adjacency[:n], g64.adjacency[order][:, cols1], rtol=1e-5, atol=1e-6)
    # one edge by hand: the direct effect of a token embedding on a logit is ∂(logit − mean)/∂c_tok
    rep = build(model, tcs, ids)
    c = rep.coefficients(1)
    out = rep.forward(*c, reads=["final_norm"])["final_norm"][0, -1] @ logit_directions(model, g64.logit_tokens[:1])[0]
    (grad,) = torch.autograd.grad(out, c[2])
    torch.testing.assert_close(g64.adjacency[g64.logit_slice][0, g64.token_slice], grad[0], rtol=1e-5, atol=1e-6)


def test_feature_budget_keeps_the_most_influential_rows(tiny_dir):
    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model)
    ids = model.tokenize([PROMPT]).input_ids[0]
    full = attribute(model, tcs, ids, ALL)
    small = attribute(model, tcs, ids, AttributionConfig(max_feature_nodes=40, batch_size=8))
    assert small.n_features == 40 and small.n_active == full.n_active
    where = {tuple(f): i for i, f in enumerate(full.features.tolist())}
    for i, f in enumerate(small.features.tolist()):  # each selected row is the full graph's row of that feature
        j = where[tuple(f)]
        cols = [where[tuple(x)] for x in small.features.tolist()]
        torch.testing.assert_close(small.adjacency[i, :40], full.adjacency[j, cols], rtol=1e-5, atol=1e-6)
    # the first batch is the features with the largest direct influence on the logits
    from llmri.circuits.prune import normalized
    direct = full.logit_probs @ normalized(full.adjacency)[full.logit_slice]
    top8 = {tuple(full.features[i].tolist()) for i in direct[: full.n_features].topk(8).indices.tolist()}
    assert {tuple(f) for f in small.features[:8].tolist()} == top8


def test_pruning_and_scores(tiny_dir):
    model, tcs = exact_gpt2(tiny_dir("gpt2"))
    ids = model.tokenize([PROMPT]).input_ids[0]
    everywhere = AttributionConfig(max_feature_nodes=None, exclusion=Exclusion(False, False, None))
    g = attribute(model, tcs, ids, everywhere)
    s = scores(g)  # exact dictionaries, features at every position: nothing goes through an error node
    assert s.replacement == pytest.approx(1.0, abs=1e-5) and s.completeness == pytest.approx(1.0, abs=1e-5)
    p = prune(g)
    n_f = g.n_features
    kept = p.node_mask[:n_f]
    assert 0 < int(kept.sum()) < n_f
    assert p.node_mask[g.logit_slice].all() and p.node_mask[g.token_slice].all()
    cum = p.cumulative[:n_f]
    cut = float(cum[cum >= 0.8].min())  # the node threshold keeps the top features up to 80% of the influence
    assert float(cum[kept].max()) <= cut + 1e-6
    assert float(cum[kept].min()) == pytest.approx(float(cum.min()))  # the most influential feature survives
    assert not (p.edge_mask & ~(p.node_mask[:, None] & p.node_mask[None, :])).any()
    from llmri.circuits import PruneConfig
    capped = prune(g, PruneConfig(max_edges=50))
    assert 0 < int(capped.edge_mask.sum()) <= 50 < int(p.edge_mask.sum())
    assert not (capped.edge_mask & ~p.edge_mask).any()  # the cap keeps a subset: the strongest edges
    # random transcoders leave most of the work to error nodes
    g2 = attribute(model, random_tcs(model, skip=False), ids, ALL)
    assert scores(g2).replacement < 0.9


def test_validation_agrees_with_measured_effects_for_exact_dictionaries(tiny_dir):
    model, tcs = exact_gpt2(tiny_dir("gpt2"))
    g = attribute(model, tcs, model.tokenize([PROMPT]).input_ids[0], ALL)
    v = validate(model, tcs, g, top=15, factor=0.99, freeze="all")  # the linear regime the graph describes
    torch.testing.assert_close(torch.tensor(v.measured), torch.tensor(v.predicted), rtol=2e-2, atol=1e-4)
    assert v.pearson > 0.999 and v.diverged == 0
    full = validate(model, tcs, g, top=15, factor=0.0, freeze="all")  # whole ablations: downstream ReLUs may switch
    assert full.pearson > 0.9
    patterns = validate(model, tcs, g, top=15, factor=0.0, freeze="attention")  # norms recomputed
    free = validate(model, tcs, g, top=15, factor=0.0, freeze="none")
    assert max(free.pearson, patterns.pearson) < full.pearson  # the graph describes the frozen regime


def test_interventions_write_exactly_the_decoder_difference(tiny_dir):
    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model)
    rep = build(model, tcs, model.tokenize([PROMPT]).input_ids[0])
    L, P = rep.n_layers, rep.n_pos
    l, p, f = int(rep.layer[-1]), int(rep.pos[-1]), int(rep.feature[-1])
    for freeze in iv.FREEZE:
        same = iv.run(rep, [iv.scaled(rep, l, p, f, 1.0)], freeze=freeze)
        torch.testing.assert_close(same, rep.logits, rtol=1e-5, atol=1e-5)
    # last layer, last position, frozen final norm: Δlogits = W_U (γ ⊙ Δ / σ)
    feat = 3
    new = iv.run(rep, [iv.FeatureEdit(L - 1, P - 1, feat, 2.5)], freeze="all")
    delta = (2.5 - iv.current_activation(rep, L - 1, P - 1, feat)) * tcs.decoder(L - 1, torch.tensor([feat]))[0, 0]
    norm = model.hf.get_submodule(model.adapter.final_norm)
    sigma = rep.freezer.sigma[id(norm)][0, -1]
    expect = model.hf.get_output_embeddings().weight @ (norm.weight * delta / sigma)
    torch.testing.assert_close(new[-1] - rep.logits[-1], expect, rtol=1e-4, atol=1e-4)
    with pytest.raises(llmri.errors.InterventionError):
        iv.run(rep, [iv.FeatureEdit(L, 0, 0, 1.0)])
    with pytest.raises(llmri.errors.InterventionError):
        iv.run(rep, [], freeze="norms")


def test_graph_files(tiny_dir, tmp_path):
    model = scaled_model(tiny_dir("llama"))
    tcs = random_tcs(model)
    g = attribute(model, tcs, PROMPT, ALL)
    g.save(tmp_path / "g.safetensors")
    back = Graph.load(tmp_path / "g.safetensors")
    assert torch.equal(back.adjacency, g.adjacency) and back.tokens == g.tokens and back.prompt == PROMPT
    p = prune(g)
    j = json.loads(json.dumps(graph_json(g, p, model.tokenizer, slug="s")))
    ids = [n["node_id"] for n in j["nodes"]]
    assert len(ids) == len(set(ids)) == int(p.node_mask.sum())
    assert all(link["source"] in ids and link["target"] in ids for link in j["links"])
    assert len(j["links"]) == int(p.edge_mask.sum())
    L = model.n_layers
    logits = [n for n in j["nodes"] if n["feature_type"] == "logit"]
    assert logits[0]["node_id"] == f"{L + 1}_{int(g.logit_tokens[0])}_{g.n_pos - 1}" and logits[0]["is_target_logit"]
    assert {n["feature_type"] for n in j["nodes"]} <= {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
    assert set(j["metadata"]) >= {"slug", "scan", "prompt", "prompt_tokens", "node_threshold", "schema_version"}
    assert set(j["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    all_ids = node_ids(g)
    assert len(all_ids) == len(set(all_ids)) == g.adjacency.shape[0]
    groups = suggest_supernodes(g, p)
    assert all(len(grp) >= 3 and set(grp[1:]) <= set(ids) for grp in groups)
    members = [m for grp in groups for m in grp[1:]]
    assert len(members) == len(set(members))
    with pytest.raises(llmri.circuits.GraphError):
        Graph.load(tmp_path / "missing.safetensors")


def test_trace_cli_writes_graph_viewer_and_summary(tiny_dir, tmp_path, text_corpus):
    from typer.testing import CliRunner

    from llmri.cli import app
    from llmri.dictionaries import save

    model = scaled_model(tiny_dir("llama"))
    model.hf.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    tcs = random_tcs(model, arch="topk")
    for l, d in enumerate(tcs.dicts):
        save(d, tmp_path / "tcs" / f"mlp_in.{l}")
    runner = CliRunner()
    base = ["--transcoders", str(tmp_path / "tcs"), "--model", str(tmp_path / "model")]
    r = runner.invoke(app, ["trace", PROMPT, *base, "--out", str(tmp_path / "out"), "--feature-tokens", "2k", "--corpus", str(text_corpus),
                            "--validate", "5", "--max-features", "64"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["feature_nodes"] == 64 and summary["validation"]["features"] == 5
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    graph = json.loads((out / "the-nation-and-the-war-of-the-states.json").read_text())
    assert len(graph["nodes"]) == summary["pruned_nodes"] and len(graph["links"]) == summary["pruned_edges"]
    html = (out / "index.html").read_text()
    assert "graph-data" in html and "http://" not in html and "https://" not in html
    assert any((tmp_path / "tcs" / "features").glob("layer_*/features.json"))  # feature panels cached
    again = Graph.load(out / "attribution.safetensors")
    assert again.n_features == 64
    r = runner.invoke(app, ["validate", str(out), *base, "--top", "4"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["features"]) == 4
    l, p, f = again.features[0].tolist()
    r = runner.invoke(app, ["intervene", PROMPT, *base, "--edit", f"{l}:{p}:{f}=0", "--edit", f"{l}:-1:3*2"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["next_token"]
    assert rows and abs(sum(x["before"] for x in rows) - sum(x["after"] for x in rows)) < 1
    # bad input: one line, exit code 2, nothing half-written
    for args in (["trace", " ", *base, "--out", str(tmp_path / "bad")],
                 ["trace", PROMPT, "--transcoders", str(tmp_path / "tcs" / "mlp_in.0"), "--model", str(tmp_path / "model"),
                  "--out", str(tmp_path / "bad")],
                 ["intervene", PROMPT, *base, "--edit", "1:2"],
                 ["intervene", PROMPT, *base, "--edit", "9:1:1=0"],
                 ["validate", str(tmp_path / "nothing"), *base]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()


def test_real_model_replacement_is_exact_and_complete(real_model):
    model = real_model
    tcs = random_tcs(model, arch="topk", n=256, skip=False, k=1)  # one feature per layer and position
    ids = model.tokenize(["The capital of France is"]).input_ids[0]
    rep = build(model, tcs, ids)
    with torch.no_grad():
        logits = rep.forward(*rep.coefficients(1, requires_grad=False), reads=["logits"])["logits"][0]
    torch.testing.assert_close(logits, rep.logits, rtol=1e-4, atol=1e-3)
    g = attribute(model, tcs, ids, ALL)
    assert g.n_features == g.n_active == model.n_layers * int(rep.kept.sum())
    got, want = _targets_reconstructed(model, tcs, g, rep)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max().detach()))
    assert model.tokenizer.decode([int(g.logit_tokens[0])]).strip() == "Paris"
