"""The offline attribution-graph viewer, on a real graph of the tiny model with random transcoders."""

import json
import os
import random
import re
from pathlib import Path

import pytest
import torch

import llmri
from llmri.circuits.attribution import AttributionConfig, attribute
from llmri.circuits.export import graph_json, suggest_supernodes
from llmri.circuits.prune import prune, scores
from llmri.circuits.transcoders import Transcoders
from llmri.circuits.viewer import write_viewer
from llmri.dictionaries import DictConfig, build
from llmri.features.dashboard import token_strings

HOSTILE = "</script><img src=x onerror=window.__pwned=1>"
XSS = ["<script>window.__pwned=1</script>", "<img src=x onerror=window.__pwned=1>"]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
                 if os.path.exists(p)), None)
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


def random_transcoder(layer: int, d: int, seed: int):
    tc = build(DictConfig(kind="transcoder", arch="relu", in_points=[f"mlp_in.{layer}"],
                          out_points=[f"mlp_out.{layer}"], d_in=d, d_out=d, n_latents=32, skip=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.02))
    return tc.eval()


def record(i: int, label: str, ids: list[int]) -> dict:
    """A feature record in the shape of ``feature_record``'s (the viewer's input contract)."""
    acts = [0.0, 0.5, 2.0, 1.0][: len(ids)]
    return {"i": i, "label": label, "density": 0.0123, "max": 2.0, "hist": {"first": 0, "counts": [1]},
            "logits": {"pos": [[ids[0], 1.5], [ids[1], 0.7]], "neg": [[ids[2], -0.9]], "hist": [1], "range": [-1, 2]},
            "top": [[ids, acts, 2, 2.0]]}


@pytest.fixture(scope="module")
def case(tiny_dir):
    """(graph JSON, features, tokens, suggested supernodes) of a real pruned graph."""
    model = llmri.load_model(str(tiny_dir("llama")))  # our own copy: its weights are scaled below
    with torch.no_grad():  # the tiny model's weights are small; scaled up, the graph is well conditioned
        for n, p in model.hf.named_parameters():
            if "norm" not in n and p.dim() > 1:
                p.mul_(10.0)
    tcs = Transcoders([random_transcoder(l, model.d_model, l) for l in range(model.n_layers)], model.n_layers)
    g = attribute(model, tcs, "the nation and the war of the states", AttributionConfig(max_feature_nodes=None))
    p = prune(g)
    feats = [i for i in p.node_mask.nonzero().flatten().tolist() if i < g.n_features]
    first = sorted(feats, key=lambda i: -float(p.influence[i]))[:3]
    ids = [f"{l}_{f}_{pos}" for l, pos, f in g.features[first].tolist()]
    j = graph_json(g, p, model.tokenizer, slug="t", labels={ids[1]: XSS[1]})
    j["metadata"]["info"]["scores"] = scores(g)._asdict()
    ctx = model.tokenize(["the nation and the war"]).input_ids[0].tolist()
    features = {"_".join(ids[0].split("_")[:2]): record(0, XSS[0] + " nations", ctx[1:5]),
                "_".join(ids[1].split("_")[:2]): record(1, "war words", ctx[2:6])}
    tokens = token_strings(model.tokenizer, ctx) | {ctx[3]: XSS[1]}
    return j, ids, features, tokens, suggest_supernodes(g, p)


def dense_graph(n_pos: int = 12, n_layers: int = 30, n_nodes: int = 800, n_links: int = 10_000, seed: int = 0) -> dict:
    """A synthetic dense graph in the circuit-tracer schema: embeddings, features and errors at random
    (layer, position) cells, two logits, random edges upward; hostile text in a token and a clerp."""
    rng = random.Random(seed)
    toks = [f"tok{p}" for p in range(n_pos)]
    toks[3], toks[5] = HOSTILE, "a-very-long-token-string-indeed"
    node = lambda nid, layer, pos, ft, clerp="": {"node_id": nid, "layer": layer, "ctx_idx": pos, "feature_type": ft,  # noqa: E731
                                                "influence": rng.random(), "influence_raw": rng.random(), "activation": rng.random(),
                                                "token_prob": 0.0, "clerp": clerp}
    nodes = [node(f"E_{p}_{p}", "E", p, "embedding", f'Emb: "{toks[p]}"') for p in range(n_pos)]
    while len(nodes) < n_nodes - 2:
        l, p, f = rng.randrange(n_layers), rng.randrange(n_pos), len(nodes)
        err = rng.random() < 0.1
        nodes.append(node(f"{l}_{-1 if err else f}_{p}", str(l), p, "mlp reconstruction error" if err else "cross layer transcoder",
                          HOSTILE if f == 20 else ""))
    nodes = list({n["node_id"]: n for n in nodes}.values())
    for t, prob in ((7, 0.6), (8, 0.3)):
        nodes.append(node(f"{n_layers + 1}_{t}_{n_pos - 1}", str(n_layers + 1), n_pos - 1, "logit", f'Output "x{t}" (p={prob})')
                     | {"token_prob": prob})
    rank = lambda n: -1 if n["layer"] == "E" else int(n["layer"])  # noqa: E731
    links = {}
    while len(links) < n_links:
        a, b = rng.sample(nodes, 2)
        if rank(a) > rank(b):
            a, b = b, a
        if rank(a) < rank(b) and b["ctx_idx"] >= a["ctx_idx"]:
            links[a["node_id"], b["node_id"]] = round(rng.gauss(0, 1), 6)
    return {"metadata": {"slug": "dense", "prompt": " ".join(toks), "prompt_tokens": toks, "info": {}},
            "qParams": {"pinnedIds": [], "supernodes": [], "clickedId": ""}, "nodes": nodes,
            "links": [{"source": s, "target": t, "weight": w} for (s, t), w in links.items()]}


def embedded(html: str, which: str):
    return json.loads(re.search(f'<script type="application/json" id="{which}">(.*?)</script>', html, re.S).group(1))


def test_single_safe_file(case, tmp_path):
    j, ids, features, tokens, suggested = case
    out = write_viewer(tmp_path / "graph.html", j, features=features, tokens=tokens, suggested=suggested)
    assert [p.name for p in tmp_path.iterdir()] == ["graph.html"]  # one file, no temporary left behind
    html = out.read_text()
    assert not re.search(r"<script[^>]*\ssrc=|<link|@import|https?://", html, re.I)  # nothing fetched
    assert not re.search(r"\burl\(", html)  # (CSS; JavaScript's URL.createObjectURL( is fine)
    assert "window.__pwned" in html and "<script>window.__pwned" not in html and "<img src=x" not in html
    assert embedded(html, "graph-data") == j
    extra = embedded(html, "extra-data")
    assert sorted(extra["features"]) == sorted(features) and extra["features"][ids[0].rsplit("_", 1)[0]]["label"].startswith(XSS[0])
    assert "hist" not in extra["features"][ids[1].rsplit("_", 1)[0]]  # only what the page shows
    assert XSS[1] in extra["tokens"].values() and extra["suggested"] == suggested
    bare = write_viewer(tmp_path / "bare.html", j).read_text()  # no feature statistics at all
    assert embedded(bare, "extra-data") == {"title": "attribution graph · t", "features": {}, "tokens": {}, "suggested": []}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_viewer_in_headless_chromium(case, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[test])")
    j, ids, features, tokens, suggested = case
    out = write_viewer(tmp_path / "graph.html", j, features=features, tokens=tokens, suggested=suggested, title="tiny")
    other = next(n["node_id"] for n in j["nodes"]
                 if n["feature_type"] == "cross layer transcoder" and n["node_id"].rsplit("_", 1)[0] not in features)
    node = lambda i: f"g.node[data-id='{i}']"  # noqa: E731
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            assert page.locator("g.node").count() == len(j["nodes"])
            assert page.get_attribute("#graph", "data-edges") == str(min(500, len(j["links"])))
            assert f"{len(j['nodes'])} nodes" in page.inner_text("#counts") and "completeness" in page.inner_text("#counts")
            # a feature with statistics: markup in its label, its contexts and tokens shows as text
            page.click(node(ids[0]))
            assert page.inner_text("#node-id") == ids[0]
            assert page.inner_text("#feature-label") == XSS[0] + " nations"
            assert XSS[1] in page.inner_text("#top") and page.locator("#logit-effects tr").count() == 2
            assert page.locator("#panel script, #panel img").count() == 0
            page.click(node(other))
            assert "no feature statistics" in page.inner_text("#panel")
            page.locator("#panel button.link").first.click()  # follow the strongest input
            assert page.inner_text("#node-id") != other
            # pin two (button, shift-click), group them, apply a suggestion
            page.click(node(ids[1]))
            assert page.inner_text("#clerp") == XSS[1]
            page.click("#pin")
            page.click(node(ids[0]), modifiers=["Shift"])
            assert page.locator("#pinned li").count() == 2
            page.fill("#group-name", "my group")
            page.click("#group")
            assert page.locator("#supernodes li").count() == 1 and "my group" in page.inner_text("#supernodes")
            assert page.get_attribute(f"{node(ids[0])} .body", "stroke-width") == "3"
            expected = [["my group", ids[1], ids[0]]]
            if suggested:
                page.locator("#suggested .apply").first.click()
                expected.append(suggested[0])
                assert page.locator("#supernodes li").count() == 2
            page.click(node(ids[1]))
            page.evaluate("document.querySelector('aside').scrollTop = 0")
            page.screenshot(path=str(SHOTS / "graph-viewer.png"))
            page.check("#only-pinned")
            assert page.locator("g.node:not(.hidden)").count() == 2 and page.locator(node(other)).is_hidden()
            n_pinned_edges = sum(1 for e in j["links"] if {e["source"], e["target"]} <= set(ids[:2]))
            assert page.get_attribute("#graph", "data-edges") == str(n_pinned_edges)
            with page.expect_download() as dl:
                page.click("#download")
            got = json.loads(Path(dl.value.path()).read_text())
            assert got["qParams"]["pinnedIds"] == [ids[1], ids[0]] and got["qParams"]["supernodes"] == expected
            assert got["qParams"]["clickedId"] == ids[1] and got["nodes"] == j["nodes"] and got["links"] == j["links"]
            page.uncheck("#only-pinned")
            page.locator("#pinned .unpin").first.click()
            page.locator("#supernodes .remove").first.click()
            assert page.locator("#pinned li").count() == 1 and page.locator("#supernodes li:not(.empty)").count() == len(expected) - 1
            assert page.evaluate("window.__pwned") is None
        finally:
            browser.close()
    assert not errors, errors
    assert (SHOTS / "graph-viewer.png").stat().st_size > 10_000


def test_dense_viewer_controls_and_escaping(tmp_path):
    j = dense_graph()
    j["nodes"][40]["clerp"] = "</script><img src=x onerror=alert(1)>"
    html = write_viewer(tmp_path / "dense.html", j).read_text()
    assert 'id="edge-n"' in html and 'id="edge-all"' in html and 'id="edge-count"' in html  # how many edges are drawn
    block = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html, re.S).group(1)
    assert "</" not in block and "<img" not in block and json.loads(block) == j  # the whole graph, nothing raw
    assert "<img src=x" not in html and html.count("</script>") == 3  # the two data blocks and the page's script


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_dense_viewer_in_headless_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[test])")
    j = dense_graph()
    out = write_viewer(tmp_path / "dense.html", j)
    order = sorted(j["links"], key=lambda l: -abs(l["weight"]))
    n_links = len(j["links"])
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(out.as_uri())
            assert page.locator("g.node").count() == len(j["nodes"]) and page.locator("#graph path.edge").count() <= 16
            assert float(page.get_attribute("#graph", "data-draw-ms")) < 1000
            assert page.get_attribute("#graph", "data-edges") == "500"
            assert page.inner_text("#edge-count") == f"showing 500 of {n_links:,} edges"
            drawn = lambda: sum(int(c) for c in page.eval_on_selector_all("#edges path", "ps => ps.map(p => p.dataset.count)"))  # noqa: E731
            assert drawn() == 500
            # every token column inside the 1000-px window, no horizontal scrolling; hover shows the whole token
            xs = page.eval_on_selector_all(".tok-label", "ts => ts.map(t => t.getBoundingClientRect()).map(r => r.x + r.width / 2)")
            assert len(xs) == 12 and all(0 <= x <= 1000 for x in xs)
            assert page.evaluate("(c => c.scrollWidth <= c.clientWidth)(document.getElementById('canvas'))")
            assert page.eval_on_selector(".tok-label[data-pos='5'] title", "t => t.textContent") == "a-very-long-token-string-indeed"
            page.fill("#edge-n", "100")
            assert page.get_attribute("#graph", "data-edges") == "100" and drawn() == 100
            assert page.inner_text("#edge-count") == f"showing 100 of {n_links:,} edges"
            # clicking a node lights up its paths over the visible edges and dims the rest; Escape clears
            visible = order[:100]
            hub = max({l["source"] for l in visible}, key=lambda i: sum(i in (l["source"], l["target"]) for l in visible))
            page.click(f"g.node[data-id='{hub}']")
            assert page.inner_text("#node-id") == hub
            assert "null" not in page.inner_text("#panel").split()  # a non-feature node's panel ends cleanly
            lit = set(page.eval_on_selector_all("g.node.nb", "gs => gs.map(g => g.dataset.id)"))
            direct = {hub} | {l["target"] for l in visible if l["source"] == hub} | {l["source"] for l in visible if l["target"] == hub}
            assert direct <= lit and len(lit) < len(j["nodes"]) and "dim" in page.get_attribute("#graph", "class")
            assert int(page.get_attribute("#graph", "data-hl-edges")) >= len(direct) - 1
            page.keyboard.press("Escape")
            assert page.locator("g.node.nb").count() == 0 and "dim" not in (page.get_attribute("#graph", "class") or "")
            page.click(f"g.node[data-id='{hub}']")
            page.click("#graph", position={"x": 5, "y": 5})  # the background clears too
            assert page.locator("g.node.nb").count() == 0 and "Click a node" in page.inner_text("#panel")
            ms = page.evaluate("() => { const t = performance.now(); document.getElementById('edge-all').click(); return performance.now() - t; }")
            assert page.get_attribute("#graph", "data-edges") == str(n_links) and drawn() == n_links and ms < 1000
            page.set_viewport_size({"width": 1600, "height": 900})
            page.wait_for_function("document.querySelector('.tok-label[data-pos=\"11\"]').getBoundingClientRect().x > 900")
            page.fill("#edge-n", "500")
            page.click(f"g.node[data-id='{hub}']")
            page.screenshot(path="/tmp/viewer.png")
            assert page.evaluate("window.__pwned") is None and page.locator("img").count() == 0
        finally:
            browser.close()
    assert not errors, errors
