"""Hostile input: every case ends in one line and exit 2 (or, for a bug, one line naming the log and
exit 1), never a traceback, never a half-written artefact, and never touches files llmri did not write.

The store's own cases are in test_hostile_store.py, the explorer's in test_hostile_explorer.py.
"""

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clirun import assert_clean_error, run
from llmri import atomic
from llmri.dictionaries import DictConfig, DictionaryError, TensorSource, Trainer, TrainConfig, build, save
from llmri.dictionaries.formats import load
from llmri.errors import OutputError





def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def foreign(tmp_path):
    """A folder of the user's own files, and one file, that no llmri command may touch."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\section{Results}")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    file = tmp_path / "notes.txt"
    file.write_text("do not delete")
    return folder, file


@pytest.fixture
def sae_folder(tmp_path, tiny):
    """A saved SAE on resid_post.1 of the tiny llama (d_model 64)."""
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=64, n_latents=48, k=4,
                         model_name=str(tiny().source)))
    return save(d, tmp_path / "sae")


# ---------------------------------------------------------------- data loss


def test_dashboard_out_over_foreign_files_or_a_file_is_refused_and_leaves_them(sae_folder, foreign, text_corpus):
    folder, file = foreign
    before, file_before = snapshot(folder), file.read_bytes()
    for out in (folder, file):
        r = run("dashboard", sae_folder, "--out", out, "--corpus", text_corpus, "--tokens", "512", "--context", "16")
        assert_clean_error(r, str(out))
    assert snapshot(folder) == before and file.read_bytes() == file_before
    assert not (sae_folder / "features").exists()  # refused before any statistics were computed


def test_scan_and_dictionary_writers_refuse_foreign_folders(foreign, tiny_dir, text_corpus):
    folder, file = foreign
    before = snapshot(folder)
    r = run("scan", "--model", tiny_dir(), "--corpus", text_corpus, "--out", folder, "--stats-tokens", "256")
    assert_clean_error(r, "not an llmri report")
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=64, n_latents=48, k=4))
    with pytest.raises(OutputError, match="existing file"):
        save(d, file)
    with pytest.raises(OutputError, match="not an llmri dictionary"):
        save(d, folder)
    assert snapshot(folder) == before and file.read_text() == "do not delete"


def test_an_llmri_artefact_is_replaced_but_not_what_a_user_added_to_it(tmp_path):
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=64, n_latents=48, k=4))
    folder = save(d, tmp_path / "sae")
    save(d, folder)  # replacing our own dictionary is fine
    assert json.loads((folder / atomic.MARKER).read_text())["kind"] == "dictionary"
    (folder / "my-notes.md").write_text("keep me")
    with pytest.raises(OutputError, match="my-notes.md"):
        save(d, folder)
    assert (folder / "my-notes.md").read_text() == "keep me"
    (folder / "my-notes.md").unlink()
    (folder / "run.tmp-3").write_text("a user's file whose name only looks like a temporary")
    with pytest.raises(OutputError, match="run.tmp-3"):
        save(d, folder)
    # a report is not a dictionary, even though both are llmri's
    with pytest.raises(OutputError, match="holds an llmri dictionary, not a report"):
        atomic.check_target(folder, "report")


def test_a_failed_replacement_keeps_the_old_artefact(tmp_path):
    target = tmp_path / "art"
    with atomic.atomic_path(target, directory=True, kind="trace") as tmp:
        (tmp / "a.json").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_path(target, directory=True, kind="trace") as tmp:
            (tmp / "a.json").write_text("new")
            1 / 0
    assert (target / "a.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary left behind


def test_train_out_a_file_or_foreign_folder_is_refused(tiny_dir, text_corpus, foreign):
    folder, file = foreign
    before = snapshot(folder)
    for out in (file, folder):
        r = run("train", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--tokens", "1k",
                "--batch-size", "64", "--context", "16", "--eval-tokens", "0", "--ce-tokens", "0", "--out", out)
        assert_clean_error(r, str(out))
    assert snapshot(folder) == before and file.read_text() == "do not delete"


def test_read_only_output_location_is_one_line(tiny_dir, text_corpus, tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    r = run("train", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--tokens", "1k",
            "--batch-size", "64", "--context", "16", "--out", tmp_path / "ro" / "run")
    assert_clean_error(r, "read-only")


# ---------------------------------------------------------------- unbounded or empty work


@pytest.mark.parametrize("tokens", ["0", "0.0001k"])
def test_train_zero_tokens_is_an_error_and_saves_nothing(tiny_dir, text_corpus, tmp_path, tokens):
    r = run("train", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--tokens", tokens,
            "--batch-size", "64", "--context", "16", "--out", tmp_path / "run")
    assert_clean_error(r, "tokens", "≥ 1")
    assert not (tmp_path / "run" / "resid_post.1").exists()


# ---------------------------------------------------------------- option ranges


@pytest.mark.parametrize("args, needle", [
    (["--k", "0"], "k must be ≥ 1"), (["--k", "-1"], "k must be ≥ 1"), (["--k", "500"], "exceeds the 128 latents"),
    (["--expansion", "0"], "--expansion must be > 0"), (["--expansion", "-1"], "--expansion must be > 0"),
    (["--batch-size", "0"], "batch_size must be ≥ 1"), (["--latents", "-3"], "--latents"),
    (["--k", "abc"], "Invalid value for '--k'"), (["--lr", "nan"], "lr must be"),
])
def test_training_options_out_of_range_are_one_line(tiny_dir, text_corpus, tmp_path, args, needle):
    r = run("train", "--model", tiny_dir(), "--corpus", text_corpus, "--points", "resid_post.1", "--tokens", "1k",
            "--expansion", "2", "--batch-size", "64", "--context", "16", *args, "--out", tmp_path / "run")
    assert_clean_error(r, needle)
    assert not (tmp_path / "run" / "resid_post.1").exists()


def test_usage_errors_are_one_line():
    assert_clean_error(run("cache", "--points", "resid_post.1"), "Missing option '--out'")
    assert_clean_error(run("no-such-command"), "No such command")


# ---------------------------------------------------------------- inputs that are not what they claim


def test_a_random_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(bytes(range(256)) * 8)
    assert_clean_error(run("info", fake), "not a GGUF file")


def test_a_jsonl_line_that_is_not_an_object(tiny_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "the war"}\n[1, 2, 3]\n')
    r = run("cache", "--model", tiny_dir(), "--corpus", corpus, "--points", "resid_post.1", "--context", "16",
            "--tokens", "64", "--out", tmp_path / "s")
    assert_clean_error(r, "line 2", "'text'")
    assert not (tmp_path / "s").exists()


def _corrupt_cfg(key, value):
    def apply(folder: Path):
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg[key] = value
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return apply


def _write(name, text):
    return lambda folder: (folder / name).write_text(text)


def _truncate(name, keep):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])


def _reshape_weights(folder: Path):
    w = load_file(str(folder / "sae_weights.safetensors"))
    w["W_dec"] = w["W_dec"][:40]
    save_file(w, str(folder / "sae_weights.safetensors"))


def _nan_weights(folder: Path):
    w = load_file(str(folder / "sae_weights.safetensors"))
    w["W_enc"][3, 5] = float("nan")
    save_file(w, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("corrupt, needle", [
    (_reshape_weights, "'W_dec' has shape [40, 64]"),
    (_corrupt_cfg("d_in", "64"), "d_in must be an integer"),
    (_corrupt_cfg("d_in", 100), "'W_enc' has shape [64, 48] but the config (d_in 100, d_sae 48)"),
    (_corrupt_cfg("k", 1000), "k = 1000 exceeds the 48 latents"),
    (_corrupt_cfg("k", -2), "k must be ≥ 1"),
    (_corrupt_cfg("d_sae", None), "n_latents must be an integer ≥ 1, got None"),
    (_truncate("cfg.json", 40), "cfg.json is not valid JSON"),
    (_write("cfg.json", "[1, 2]"), "holds a JSON list, not an object"),
    (_truncate("sae_weights.safetensors", 300), "not a readable safetensors file"),
    (_nan_weights, "'W_enc' in sae_weights.safetensors holds NaN"),
], ids=["shapes", "d_in-string", "d_in-wrong", "k-too-big", "k-negative", "d_sae-null", "cfg-truncated", "cfg-array",
        "weights-truncated", "weights-nan"])
def test_corrupted_dictionary_folders_are_refused_with_the_field(sae_folder, tiny_dir, text_corpus, corrupt, needle):
    corrupt(sae_folder)
    with pytest.raises(DictionaryError, match="sae"):
        load(sae_folder)
    r = run("eval", sae_folder, "--model", tiny_dir(), "--corpus", text_corpus, "--tokens", "256", "--ce-tokens", "0")
    assert_clean_error(r, needle)
    assert not (sae_folder / "eval.json").exists()


# ---------------------------------------------------------------- non-finite training


def test_non_finite_activations_stop_training_before_anything_is_saved(tmp_path):
    acts = torch.randn(512, 16)
    acts[300:] = float("nan")  # the second epoch's batches reach them
    cfg = DictConfig(kind="sae", arch="topk", in_points=["resid_post.0"], d_in=16, n_latents=32, k=4)
    trainer = Trainer([build(cfg)], TrainConfig(tokens=4096, batch_size=64, checkpoint_every=2, log_every=1),
                      TensorSource({"resid_post.0": acts}, 64), tmp_path / "run")
    with pytest.raises(DictionaryError, match="diverged at step"):
        trainer.fit()
    ckpt = tmp_path / "run" / "checkpoint"
    if ckpt.exists():  # whatever was checkpointed before the NaNs arrived is finite
        for f in ckpt.glob("dict*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(str(f)).values())


# ---------------------------------------------------------------- the last line of defence


def test_a_bug_is_one_line_with_the_log_that_holds_its_trace(monkeypatch, tmp_path):
    import llmri.model

    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llmri.model, "load_model", broken)
    err = assert_clean_error(run("info", "whatever"), "llmri info failed unexpectedly: ZeroDivisionError: simulated bug",
                         code=1)
    log = Path(err.rsplit("full trace in ", 1)[1].strip())
    assert log.parent == tmp_path / "cache" / "logs"
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


def test_a_dictionary_of_another_width_is_refused_before_any_matmul(tmp_path, tiny_dir, text_corpus):
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=32, n_latents=48, k=4))
    folder = save(d, tmp_path / "narrow")
    r = run("eval", folder, "--model", tiny_dir(), "--corpus", text_corpus, "--tokens", "256", "--ce-tokens", "0")
    assert_clean_error(r, "width 32 at resid_post.1", "has width 64")


@pytest.mark.parametrize("args, needle", [(["--time-limit", "0"], "--time-limit must be > 0"),
                                          (["--time-limit", "nan"], "--time-limit must be"),
                                          (["--port", "70000"], "--port must be in [0, 65535]"),
                                          (["--max-tokens", "0"], "--max-tokens must be ≥ 1")])
def test_explorer_options_out_of_range_are_one_line(args, needle):
    assert_clean_error(run("serve", *args), needle)
