"""The default transcoder set: trained once and cached per model and config, reused afterwards, resumable
after an interruption (ending with the same weights), never used half-finished, and what `llmri trace`
falls back to without --transcoders."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from clirun import run as cli

from llmri import data
from llmri.circuits import default_set, load_transcoders
from llmri.circuits.default_set import DefaultTranscoders, default_transcoders, set_folder
from llmri.dictionaries.config import DictionaryError
from llmri.dictionaries.formats import load_set
from llmri.dictionaries.trainer import Trainer

PROMPT = "the nation and the war of the states"


def tiny_config(corpus, **kw) -> DefaultTranscoders:
    """2,048 cached tokens (16 windows), 12 steps of 256 tokens (≈ 1.5 epochs), a checkpoint every 2 steps."""
    base = dict(expansion=1.0, k=4, cache_tokens=2048, train_tokens=12 * 256, batch_size=256, corpus=str(corpus),
                checkpoint_every=2)
    return DefaultTranscoders(**{**base, **kw})


def weights(run) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in d.state_dict().items()} for d in load_set(run)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


class Interrupt(BaseException):
    """Stands for Ctrl-C / a kill: a BaseException, as KeyboardInterrupt is (without stopping pytest)."""


def boom(*args, **kwargs):
    raise AssertionError("the cached set should have been reused")


def test_first_call_trains_a_complete_set_and_later_calls_reuse_it(tiny, text_corpus, tmp_path, monkeypatch):
    model = tiny("llama")
    cfg = tiny_config(text_corpus)
    said: list[str] = []
    monkeypatch.setattr(default_set, "say", said.append)
    run = default_transcoders(model, cfg, root=tmp_path)
    folder = run.parent
    assert folder == set_folder(model, cfg, root=tmp_path) and run.name == "run"
    info = json.loads((folder / "complete.json").read_text())
    assert info["key"] == folder.name and info["layers"] == model.n_layers == 3
    assert info["seconds"]["cache"] >= 0 and info["seconds"]["train"] > 0
    assert not (folder / "store").exists() and not (run / "checkpoint").exists()  # cleaned up once complete
    tcs = load_transcoders(run, model.n_layers)
    assert tcs.n_features == 64 and all(d.cfg.k == 4 and d.cfg.skip and d.cfg.arch == "topk" for d in tcs.dicts)
    # the transcoders learned the MLPs: on a held-out window, better than predicting the mean output
    window = next(iter(data.token_windows(model, data.load_corpus(str(text_corpus)), data.WindowSpec(split="eval"))))
    acts = model.capture(window[None], ["mlp_in.1", "mlp_out.1"])
    x, y = acts["mlp_in.1"][0, 1:], acts["mlp_out.1"][0, 1:]
    with torch.no_grad():
        pred = tcs.dicts[1].reconstruct({"mlp_in.1": x})["mlp_out.1"]
    nmse = float((pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert nmse < 0.9, nmse
    # said up front what it trains and how long it takes
    plan = next(m for m in said if "Estimated" in m)
    for needle in ("3 TopK transcoders", "64 latents", "k = 4", "skip", "2,048", "3,072", "s training"):
        assert needle in plan, plan
    # a second call: no caching, no training, nothing rewritten, one line naming the set
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    monkeypatch.setattr(default_set, "create_store", boom)
    monkeypatch.setattr(default_set, "train", boom)
    said.clear()
    assert default_transcoders(model, cfg, root=tmp_path) == run
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert len(said) == 1 and "using the cached default transcoders" in said[0] and folder.name in said[0]


def test_interrupted_builds_resume_and_end_like_an_uninterrupted_one(tiny, text_corpus, tmp_path, monkeypatch):
    model = tiny("llama")
    monkeypatch.setattr(default_set, "SHARD_TOKENS", 512)  # 4 shards, so caching can stop half-way
    cfg = tiny_config(text_corpus, keep_store=True)
    reference = weights(default_transcoders(model, cfg, root=tmp_path / "uninterrupted"))

    # 1. killed while caching, after two of the four shards
    import llmri.store as store_mod

    write = store_mod._write_shard
    written: list[str] = []

    def stop_after_two(target, *args):
        if len(written) == 2:
            raise Interrupt
        write(target, *args)
        written.append(target.name)

    monkeypatch.setattr(store_mod, "_write_shard", stop_after_two)
    with pytest.raises(Interrupt):
        default_transcoders(model, cfg, root=tmp_path / "r")
    folder = set_folder(model, cfg, root=tmp_path / "r")
    shards = folder / "store" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == written == ["000000.safetensors", "000001.safetensors"]
    assert not (folder / "complete.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    monkeypatch.setattr(store_mod, "_write_shard", write)

    # 2. killed while training, after step 7 (last checkpoint: step 6 of 12)
    steps: list[int] = []
    step = Trainer._train_step

    def stop_at_eight(self, batch):
        if self.out.name == "run":  # not the estimate's scratch trainer
            if len(steps) == 7:
                raise Interrupt
            steps.append(self.step)
        step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", stop_at_eight)
    said: list[str] = []
    monkeypatch.setattr(default_set, "say", said.append)
    with pytest.raises(Interrupt):
        default_transcoders(model, cfg, root=tmp_path / "r")
    assert "512 tokens already cached" in said[0] or "1,024 tokens already cached" in said[0], said[0]
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.name in kept} == kept  # reused, not redone
    assert len(list(shards.iterdir())) == 4 and json.loads((folder / "store" / "meta.json").read_text())["complete"]
    assert json.loads((folder / "run" / "checkpoint" / "trainer.json").read_text())["step"] == 6
    assert not (folder / "complete.json").exists() and not list((folder / "run").glob("transcoder.*"))
    with pytest.raises(DictionaryError):  # the half-finished run holds no transcoders to load
        load_set(folder / "run")

    # 3. the rerun continues at step 6 and ends with the uninterrupted weights
    def count(self, batch):
        if self.out.name == "run":
            steps.append(self.step)
        step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", count)
    steps.clear()
    said.clear()
    run = default_transcoders(model, cfg, root=tmp_path / "r")
    assert steps == list(range(6, 12))
    assert any("training resumes at step 6/12" in m for m in said), said
    assert (folder / "complete.json").is_file()
    assert same(weights(run), reference)


def test_the_cache_key_follows_model_and_config(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    cfg = tiny_config(text_corpus)
    key = set_folder(model, cfg, root=tmp_path).name
    assert key.startswith(model.name)
    for change in (dict(k=8), dict(expansion=2.0), dict(skip=False), dict(cache_tokens=4096), dict(train_tokens=512),
                   dict(seed=1), dict(corpus="sotu")):
        assert set_folder(model, dataclasses.replace(cfg, **change), root=tmp_path).name != key, change
    for change in (dict(checkpoint_every=0), dict(keep_store=True)):  # how it is built, not what
        assert set_folder(model, dataclasses.replace(cfg, **change), root=tmp_path).name == key, change
    other = tiny("gpt2")
    assert set_folder(other, cfg, root=tmp_path).name.split("-")[-2] != key.split("-")[-2]  # model digest
    for bad in (dict(expansion=0.0), dict(k=0), dict(cache_tokens=0), dict(batch_size=-1)):
        with pytest.raises(DictionaryError) as got:
            tiny_config(text_corpus, **bad)
        assert next(iter(bad)) in str(got.value)


def test_trace_cli_without_transcoders_trains_the_default_set_once(tiny_dir, text_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default_set, "DefaultTranscoders", functools.partial(tiny_config, text_corpus))
    model = str(tiny_dir("llama"))
    r = cli("trace", PROMPT, "--model", model, "--out", tmp_path / "out", "--feature-tokens", "2k",
            "--corpus", text_corpus, "--validate", "3", "--max-features", "32")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["feature_nodes"] == 32 and 0 <= summary["replacement_score"] <= 1
    (done,) = (tmp_path / "cache" / "transcoders").glob("*/complete.json")
    assert json.loads(done.read_text())["layers"] == 3
    # intervene and validate use the same set, without training again
    monkeypatch.setattr(default_set, "train", boom)
    monkeypatch.setattr(default_set, "create_store", boom)
    r = cli("validate", tmp_path / "out", "--model", model, "--top", "2")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["features"]) == 2
    r = cli("intervene", PROMPT, "--model", model, "--edit", "1:-1:3*2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["next_token"]
