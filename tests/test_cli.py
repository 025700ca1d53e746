"""The CLI: real commands on tiny models; every user error is one line on stderr with exit code 2."""

import errno
import hashlib
import json

import pytest

from clirun import assert_clean_error, run
from llmri.cli import parse_count
from llmri.errors import LlmriError



def test_info_json(tiny_dir):
    result = run("info", tiny_dir("gemma2"), "--json")
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["family"] == "gemma2/3" and card["n_layers"] == 3 and "mlp_in.2" in card["hook_points"]


def test_info_table(tiny_dir):
    result = run("info", tiny_dir("gpt2"))
    assert result.exit_code == 0 and "GPT2LMHeadModel" in result.stdout and "resid_mid.{0..2}" in result.stdout


def test_unknown_model_path():
    assert_clean_error(run("info", "./no/such/model"), "does not exist")


def test_unreachable_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_clean_error(run("info", "someone/some-model"), "could not load model 'someone/some-model'")


def test_unknown_point(tiny_dir, text_corpus, tmp_path):
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.99", "--out", tmp_path / "s")
    assert_clean_error(r, "resid_post.99")
    assert not (tmp_path / "s").exists()


def test_empty_corpus(tiny_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run("cache", "--model", tiny_dir(), "--corpus", empty, "--points", "resid_post.1", "--out", tmp_path / "s")
    assert_clean_error(r, "no text")
    assert not (tmp_path / "s").exists()


def test_context_too_long(tiny_dir, text_corpus, tmp_path):
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--context", "4096",
            "--out", tmp_path / "s")
    assert_clean_error(r, "4096", "128")
    assert not (tmp_path / "s").exists()


def test_disk_full_during_cache(tiny_dir, text_corpus, tmp_path, monkeypatch):
    import llmri.store as store_mod

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.Path, "write_bytes", full)
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--context", "16",
            "--tokens", "500", "--shard-tokens", "128", "--out", tmp_path / "s")
    assert_clean_error(r, "no space")
    assert list((tmp_path / "s" / "shards").iterdir()) == []


def test_corrupted_cached_asset(tmp_path, monkeypatch):
    from llmri import assets

    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    payload = b"model bytes"
    f = tmp_path / "x.gguf"
    f.write_bytes(payload)
    monkeypatch.setitem(assets.ASSETS, "x.gguf", assets.Asset("x.gguf", ("x==1",), ("*.gguf",), hashlib.sha256(payload).hexdigest()))
    assert run("fetch", "x.gguf", "--from", f).exit_code == 0
    (tmp_path / "cache" / "assets" / "x.gguf").write_bytes(b"corrupt")
    assert_clean_error(run("fetch", "x.gguf"), "corrupted", "llmri fetch x.gguf --force")


def test_corrupted_converted_model(tmp_path, monkeypatch):
    """A converted GGUF folder is checked against its manifest on every load."""
    from llmri.model import MANIFEST, converted

    folder = tmp_path / "conv"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": hashlib.sha256(b"abc").hexdigest()}}))
    assert converted(tmp_path / "unused.gguf", folder) == folder
    (folder / "model.safetensors").write_bytes(b"abd")
    with pytest.raises(LlmriError, match="corrupted"):
        converted(tmp_path / "unused.gguf", folder)


def test_cache_then_scan_end_to_end(tiny_dir, text_corpus, tmp_path):
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.*", "--context", "16",
            "--tokens", "1k", "--shard-tokens", "256", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["points"] == ["resid_post.0", "resid_post.1", "resid_post.2"]
    r = run("scan", "--model", tiny_dir(), "--corpus", text_corpus, "--out", tmp_path / "rep", "--stats-tokens", "512",
            "--sae-tokens", "100k")  # more than this corpus holds: the section says so, the scan succeeds
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "index.html").exists()
    assert "No SAEs were trained" in (tmp_path / "rep" / "index.html").read_text()


def test_parse_count():
    assert parse_count("2M") == 2_000_000 and parse_count("64k") == 64_000 and parse_count("65536") == 65536
    with pytest.raises(LlmriError):
        parse_count("lots")


def test_cache_more_tokens_than_the_corpus_holds_fails_before_any_work(tiny_dir, text_corpus, tmp_path):
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--context", "16",
            "--tokens", "1M", "--out", tmp_path / "s")
    assert_clean_error(r, "holds only", "--tokens all")
    assert not (tmp_path / "s").exists()
    r = run("cache", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--context", "16",
            "--tokens", "all", "--shard-tokens", "256", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["n_tokens"] > 3000
