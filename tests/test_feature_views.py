"""Dashboards, Neuronpedia JSON, auto-interp and the explorer's API on a tiny random model."""

import json
import random
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tiny import WORDS

import llmri
from llmri import data
from llmri.dictionaries import DictConfig, build, save
from llmri.features import FeatureConfig, feature_stats
from llmri.features.autointerp import (ExplainerError, HFExplainer, InterpConfig, OpenAIExplainer, cheap_labels,
                                       interpret, summary)
from llmri.features.dashboard import write_dashboard, write_neuronpedia
from llmri.features.serve import Explorer, ExplorerError, Loaded, make_server

XSS = ["<script>window.__pwned=1</script>", "<img src=x onerror=window.__pwned=2>"]


def long_tiny(tiny_dir, tmp_path_factory):
    """The tiny llama with a 512-token context and two HTML-injection strings as tokens of its vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-xss")
    tok = AutoTokenizer.from_pretrained(tiny_dir("llama"))
    tok.add_tokens(XSS)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    hf.resize_token_embeddings(len(tok))
    hf.config.max_position_embeddings = 512
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    folder = long_tiny(tiny_dir, tmp_path_factory)
    model = llmri.load_model(str(folder))
    model.test_folder = str(folder)
    rng = random.Random(0)
    docs = [data.Document(f"d{i}", " ".join(rng.choice(XSS) if j % 5 == 2 else rng.choice(WORDS) for j in range(150)))
            for i in range(40)]
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=64, n_latents=48, k=4,
                         model_name=model.name)).eval()
    stats = feature_stats(model, d, docs, FeatureConfig(tokens=32 * 30, context=32, before=4, after=2), meta={"corpus": "test"})
    return model, d, stats


def test_dashboard_files_escape_text_and_list_dead_features(setup, tmp_path):
    model, d, stats = setup
    index = write_dashboard(stats, model.tokenizer, tmp_path / "dash")
    site = index.parent
    assert len(list((site / "data" / "f").glob("*.js"))) == stats.n
    for f in [site / "data" / "tokens.js", *site.glob("data/f/*.js")]:
        text = f.read_text()
        assert "<" not in text and ">" not in text, f  # JSON escaped: no markup can open or close a script
    tokens = json.loads(json.loads(json.dumps((site / "data" / "tokens.js").read_text().split("=", 1)[1].rstrip(";\n"))))
    assert set(XSS) <= set(tokens.values())
    rows = json.loads((site / "data" / "index.js").read_text().split("window.LLMRI_INDEX=", 1)[1].rstrip(";\n"))
    assert len(rows) == stats.n and [r[0] for r in rows] == list(range(stats.n))
    assert sum(r[2] == 0 for r in rows) == int((stats.counts == 0).sum())


def test_neuronpedia_json_has_parallel_histograms_and_real_examples(setup, tmp_path):
    model, d, stats = setup
    out = write_neuronpedia(stats, model.tokenizer, tmp_path / "np", model_id="tiny", layer="1-res", batch=20)
    batches = sorted(out.glob("batch-*.json"))
    feats = [f for b in batches for f in json.loads(b.read_text())["features"]]
    assert [int(f["index"]) for f in feats] == list(range(stats.n))
    for f in feats:
        i = int(f["index"])
        assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
        assert len(f["logits_hist_data_bar_values"]) == len(f["logits_hist_data_bar_heights"])
        assert sum(f["freq_hist_data_bar_heights"]) == int(stats.counts[i])
        assert f["frac_nonzero"] == pytest.approx(float(stats.density[i]))
        assert f["pos_str"] == [model.tokenizer.decode([int(t)]) for t in stats.logit_top[0][i]]
        for a in f["activations"]:
            assert a["values"][a["maxValueTokenIndex"]] == pytest.approx(a["maxValue"], rel=2e-3)  # 4 significant digits


def test_cheap_labels_name_the_most_common_max_token(setup):
    model, d, stats = setup
    labels = cheap_labels(stats, model.tokenizer)
    assert set(labels) == {i for i in range(stats.n) if stats.counts[i] > 0}
    for i in list(labels)[:10]:
        maxtoks = [e["tokens"][e["max_index"]] for e in stats.examples(i, "top") + stats.examples(i, "samples")]
        most = max(map(maxtoks.count, set(maxtoks)))
        tied = {t for t in maxtoks if maxtoks.count(t) == most}  # ties may come in either order
        assert any(labels[i].startswith("'" + model.tokenizer.decode([t]).replace("\n", "↵") + "'") for t in tied)


def test_batched_scoring_and_silence_checks_equal_one_at_a_time(setup):
    from llmri.features.autointerp import _silent, detect_prompt

    model, d, stats = setup
    contexts = [e["tokens"] for i in range(0, stats.n, 6) for e in stats.examples(i, "samples")[:2]]
    contexts[0] = contexts[0][:3]  # different lengths share one padded batch
    prompts = [detect_prompt("words about the state", [model.tokenizer.decode([t]) for t in c]) for c in contexts[:7]]
    batched = HFExplainer(model, batch_size=4).yes_probabilities(prompts)
    alone = [HFExplainer(model, batch_size=1).yes_probabilities([p])[0] for p in prompts]
    assert batched == pytest.approx(alone, abs=1e-5)
    mixed = 0
    for f in range(0, stats.n, 4):
        together = _silent(model, d, f, contexts)
        assert together == [_silent(model, d, f, [c])[0] for c in contexts]
        mixed += any(together) and not all(together)
    assert mixed >= 3  # the check discriminates between contexts


def test_autointerp_local_and_through_an_openai_compatible_endpoint(setup):
    model, d, stats = setup
    local = HFExplainer(model)
    cfg = InterpConfig(n_features=3, explain_examples=2, score_examples=3, max_new_tokens=6)
    a = interpret(stats, model, d, local, cfg)
    assert len(a) == 3 and all(e["explanation"] for e in a.values())
    for e in a.values():
        if e["score"] is not None:
            assert 0 <= e["score"] <= 1 and 0 <= e["auroc"] <= 1 and e["n_pos"] > 0 and e["n_neg"] > 0
    s = summary(a)
    assert s["features"] == 3

    class Chat(BaseHTTPRequestHandler):  # an OpenAI-style server backed by the same real (tiny) model
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = local.complete(body["messages"], body.get("max_tokens", 16))
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = OpenAIExplainer(f"http://127.0.0.1:{server.server_address[1]}/v1", "tiny")
        b = interpret(stats, model, d, remote, cfg)
        assert [e["explanation"] for e in b.values()] == [e["explanation"] for e in a.values()]  # same greedy model
        for e in b.values():
            if e["score"] is not None:
                assert e["score"] in {x / (2 * e["n_pos"] * e["n_neg"]) for x in range(0, 2 * e["n_pos"] * e["n_neg"] + 1)}
    finally:
        server.shutdown()
    with pytest.raises(ExplainerError, match="endpoint"):
        OpenAIExplainer("http://127.0.0.1:9/v1").complete([{"role": "user", "content": "hi"}])


def test_explorer_analysis_and_steering_edit_the_right_activations(setup):
    model, d, stats = setup
    ex = Explorer(model, [Loaded("sae", d, cheap_labels(stats, model.tokenizer), None)], max_tokens=40)
    res = ex.analyze("the state of the nation")
    ids = model.tokenize("the state of the nation").input_ids
    acts = model.capture(ids, [f"resid_post.{l}" for l in range(model.n_layers)])
    assert torch.allclose(torch.tensor(res["norms"]), torch.stack([acts[f"resid_post.{l}"][0].norm(dim=-1) for l in range(3)]), atol=0.01)
    dense = d.encode(acts["resid_post.1"][0]).dense()
    for t, feats in enumerate(res["dictionaries"][0]["features"]):
        ref = dense[t].topk(len(feats))
        assert [f[0] for f in feats] == ref.indices.tolist()
    f = int(res["dictionaries"][0]["features"][-1][0][0])
    edits = ex._edits(ex.dicts[0], f, 5.0, "add")
    with model.intervene(edits):
        got = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    assert torch.allclose(got, acts["resid_post.1"] + 5.0 * d.W_dec[f], atol=1e-5)
    with model.intervene(ex._edits(ex.dicts[0], f, 2.0, "clamp")):
        got = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    now = dense[:, f]
    assert torch.allclose(got[0], acts["resid_post.1"][0] + (2.0 - now)[:, None] * d.W_dec[f], atol=1e-5)
    same = ex.steer("the state of", 0, f, 0.0, "add", 6)
    assert same["original"] == same["steered"]
    moved = ex.steer("the state of", 0, f, 200.0, "add", 6)
    assert moved["original"] == same["original"] and moved["steered"] != moved["original"]


def test_feature_decoders_are_in_raw_units_for_every_kind(setup):
    """feature_decoder (steering) and decoder_directions (logit effects) undo the output scaling: adding a
    feature's decoder equals the change in the dictionary's raw reconstruction when that feature turns on."""
    from llmri.dictionaries import CrossLayerTranscoder
    from llmri.dictionaries import sparse as sp

    ins, outs = [f"mlp_in.{l}" for l in range(3)], [f"mlp_out.{l}" for l in range(3)]
    clt = build(DictConfig(kind="clt", arch="topk", in_points=ins, out_points=outs, d_in=64, n_latents=8, k=2)).eval()
    cc = build(DictConfig(kind="crosscoder", arch="topk", in_points=["resid_post.0", "resid_post.2"], d_in=64,
                          n_latents=8, k=2)).eval()
    for d in (clt, cc):
        with torch.no_grad():
            d.out_scale.copy_(torch.tensor([0.5, 2.0, 3.0][: len(d.out_scale)]))
        for f in (1, d.n_latents - 1):
            one = sp.from_dense(torch.zeros(1, d.n_latents).index_fill_(1, torch.tensor([f]), 1.0))
            none = sp.from_dense(torch.zeros(1, d.n_latents))

            def raw(acts):
                if isinstance(d, CrossLayerTranscoder):
                    per = d.cfg.n_latents
                    parts = [sp.from_dense(acts.dense()[:, l * per : (l + 1) * per]) for l in range(d.n_layers)]
                    return d.split_outputs(d.decode_all(parts))
                return d.split_outputs(d.decode(acts))

            on, off = raw(one), raw(none)
            dec = d.feature_decoder(f)
            for p in d.cfg.out_points:
                change = (on[p] - off[p])[0]
                assert torch.allclose(dec.get(p, torch.zeros(64)), change, atol=1e-5), (d.cfg.kind, f, p)
            total = sum(on[p] - off[p] for p in d.cfg.out_points)[0]
            expect = total if isinstance(d, CrossLayerTranscoder) else (on[d.cfg.out_points[-1]] - off[d.cfg.out_points[-1]])[0]
            assert torch.allclose(d.decoder_directions()[f], expect, atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda ex: ex.analyze(""), "empty"),
    (lambda ex: ex.analyze("the " * 60), "tokens long"),
    (lambda ex: ex.steer("the", 0, 999, 1.0), "unknown feature"),
    (lambda ex: ex.steer("the", 3, 1, 1.0), "unknown dictionary"),
    (lambda ex: ex.steer("the", 0, 1, "lots"), "not a number"),
    (lambda ex: ex.steer("the", 0, 1, 1.0, "twist"), "mode"),
])
def test_explorer_rejects_bad_input_with_a_message(setup, call, match):
    model, d, stats = setup
    ex = Explorer(model, [Loaded("sae", d, {}, None)], max_tokens=40)
    with pytest.raises(ExplorerError, match=match):
        call(ex)


def test_server_answers_errors_as_json_400_and_binds_localhost(setup):
    model, d, stats = setup
    server = make_server(Explorer(model, [Loaded("sae", d, {}, None)]), port=0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        req = urllib.request.Request(url + "/api/analyze", data=b'{"prompt": ""}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 400 and "empty" in json.loads(err.value.read())["error"]
        req = urllib.request.Request(url + "/api/analyze", data=b'{"prompt": "the war"}', method="POST",
                                     headers={"Content-Type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req).read())["tokens"]) == 3
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/dash/0/../../etc/passwd")
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_cli_dashboard_and_interp_write_their_artefacts(setup, tmp_path):
    from typer.testing import CliRunner

    from llmri.cli import app

    model, d, stats = setup
    folder = save(build(d.cfg).eval(), tmp_path / "sae")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(1)
    for i in range(20):
        (corpus / f"{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(200)))
    runner = CliRunner()
    r = runner.invoke(app, ["dashboard", str(folder), "--model", model.test_folder, "--corpus", str(corpus),
                            "--tokens", "2k", "--context", "32"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (folder / "dashboard" / "index.html").exists() and (folder / "neuronpedia" / "batch-0.json").exists()
    assert out["features"] == 48 and out["tokens"] > 1500
    r = runner.invoke(app, ["dashboard", str(folder), "--model", model.test_folder, "--corpus", str(corpus),
                            "--features", "3-99"])
    assert r.exit_code == 2 and "do not exist" in r.output and "features 0..47" in r.output
    r = runner.invoke(app, ["interp", str(folder), "--explainer", "http://127.0.0.1:9/v1", "--model",
                            model.test_folder, "--corpus", str(corpus), "--tokens", "2k"])
    assert r.exit_code == 2 and "endpoint" in r.output


# ---------------------------------------------------------------- in a real browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
                 if __import__("os").path.exists(p)), None)
SHOTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "build" / "screenshots"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_dashboard_and_explorer_in_headless_chromium(setup, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[test])")
    model, d, stats = setup
    folder = tmp_path / "sae"
    save(d, folder)
    stats.save(folder / "features")
    write_dashboard(stats, model.tokenizer, folder / "dashboard")
    from llmri.features.serve import load_explorer

    server = make_server(load_explorer(model, [folder], max_tokens=40), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            # the static dashboard from file://: index → feature → back
            page.goto((folder / "dashboard" / "index.html").as_uri())
            assert page.locator("#features tbody tr").count() == stats.n
            page.fill("#search", "zzz-no-such-label")
            assert page.locator("#features tbody tr").count() == 0
            page.fill("#search", "")
            page.click("th[data-k='2']")  # sort by density, ascending after the default descending
            first = int(page.locator("#features tbody tr a").first.get_attribute("data-feature"))
            assert stats.counts[first] == stats.counts.min()
            busiest = int(stats.counts.argmax())
            page.click(f"a[data-feature='{busiest}']")
            page.wait_for_selector("#top .ctx")
            assert page.locator("#top .ctx").count() == min(12, len(stats.examples(busiest)))
            page.screenshot(path=str(SHOTS / "dashboard-feature.png"), full_page=True)
            page.go_back()
            page.wait_for_selector("#index", state="visible")
            assert page.locator("#panel").is_hidden()
            # corpus text with markup shows as text and never runs
            xss_id = model.tokenizer.convert_tokens_to_ids(XSS[0])
            shown = next(i for i in range(stats.n) if any(xss_id in e["tokens"] for e in stats.examples(i)[:12]))
            page.evaluate(f"location.hash = '#f{shown}'")
            page.wait_for_selector(f"#panel h2:text('Feature {shown}')")
            assert XSS[0] in page.inner_text("#top")  # shown as text...
            assert page.locator("#panel script, #panel img").count() == 0  # ...never as markup
            assert page.evaluate("window.__pwned") is None
            # the explorer: a prompt, its heatmap and features, a feature's dashboard, steering, bad input
            page.goto(url)
            page.fill("#prompt", "the state of the nation")
            page.click("#analyze")
            page.wait_for_selector("#norms")
            assert page.locator("#norms tr").count() == model.n_layers + 1
            assert page.locator("#norms th.tok").count() == 6
            page.locator("#norms th.tok").nth(3).click()
            assert "Top features at token 3" in page.inner_text("#features")
            link = page.locator("#features a.flink").first
            feature = int(link.get_attribute("data-feature"))
            with page.context.expect_page() as popup:
                link.click()
            dash = popup.value
            dash.wait_for_selector("#panel h2")
            assert dash.inner_text("#panel h2") == f"Feature {feature}"
            dash.close()
            page.locator("#features button.use").first.click()
            assert page.input_value("#feature") == str(feature)
            page.fill("#coef", "200")
            page.fill("#ntok", "6")
            page.click("#steer")
            page.wait_for_function("document.getElementById('steered').textContent && !document.getElementById('steered').textContent.startsWith('generating')")
            original, steered = page.inner_text("#original"), page.inner_text("#steered")
            assert steered and original and steered != original
            page.screenshot(path=str(SHOTS / "explorer.png"), full_page=True)
            page.fill("#prompt", "")
            page.click("#analyze")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "empty" in page.inner_text("#error")
            page.fill("#prompt", "the war")
            page.fill("#feature", "4096")
            page.click("#steer")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "unknown feature" in page.inner_text("#error")
        finally:
            browser.close()
            server.shutdown()
            server.server_close()
    assert not errors, errors
    assert (SHOTS / "explorer.png").stat().st_size > 10_000
