import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmri import data
from llmri.errors import DiskFullError, StoreError
from llmri.store import ActivationStore, StoreConfig, create_store


def _config(corpus, **kw):
    base = dict(points=["resid_post.1", "mlp_out.0"], tokens=600, corpus=str(corpus),
                windows=data.WindowSpec(context=16, split="all"), shard_tokens=128, batch_size=3, dtype="float32")
    return StoreConfig(**{**base, **kw})


def test_store_holds_exactly_what_capture_gives(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    cfg = _config(text_corpus)
    store = ActivationStore(create_store(model, tmp_path / "s", cfg))
    assert store.meta["complete"] and store.meta["n_shards"] == 5 and len(store) == 38 * 16
    tokens = store.tokens()
    windows = data.token_windows(model, data.load_corpus(str(text_corpus)), cfg.windows)
    assert torch.equal(tokens, torch.stack([next(windows) for _ in range(len(tokens))]))  # no window skipped
    direct = model.capture(tokens, ["resid_post.1", "mlp_out.0"])
    for p in ("resid_post.1", "mlp_out.0"):
        idx = torch.arange(len(store))
        torch.testing.assert_close(store.get(p, idx), direct[p].reshape(-1, model.d_model), rtol=1e-5, atol=1e-5)
    # random access, unordered and across shards
    idx = torch.tensor([500, 3, 129, 3, 17])
    torch.testing.assert_close(store.get("resid_post.1", idx), direct["resid_post.1"].reshape(-1, 64)[idx], rtol=1e-5, atol=1e-5)


def test_exclusion_flags_position_zero_and_specials(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    store = ActivationStore(create_store(model, tmp_path / "s", _config(text_corpus)))
    kept = store.kept()
    tokens = store.tokens().flatten()
    assert not (kept % 16 == 0).any()  # no position 0
    assert not torch.isin(tokens[kept], torch.tensor(sorted(model.special_ids))).any()
    assert (tokens == model.bos_id).sum() > len(store) // 16  # separators exist inside windows too


def test_shuffled_batches_cover_every_kept_row_once(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    store = ActivationStore(create_store(model, tmp_path / "s", _config(text_corpus)))
    kept = store.kept()
    ref = store.get("resid_post.1", kept)
    rows, rows_mlp = [], []
    for batch in store.batches(50, buffer_shards=2, seed=1):
        assert len(batch["resid_post.1"]) <= 50
        rows.append(batch["resid_post.1"])
        rows_mlp.append(batch["mlp_out.0"])
    got = torch.cat(rows)
    assert got.shape == ref.shape
    # same multiset of rows, in a different order
    key = lambda x: x[:, 0] * 1e3 + x[:, 1]  # noqa: E731
    torch.testing.assert_close(key(got).sort().values, key(ref).sort().values)
    assert not torch.equal(got, ref)
    # rows stay aligned across points
    i = 7
    j = (key(ref) == key(got[i : i + 1])).nonzero()[0, 0]
    torch.testing.assert_close(torch.cat(rows_mlp)[i], store.get("mlp_out.0", kept[j : j + 1])[0])


def test_float16_store_and_incomplete_store(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    path = create_store(model, tmp_path / "s", _config(text_corpus, dtype="float16"), max_shards=2)
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(path)
    partial = ActivationStore(path, allow_incomplete=True)
    assert len(partial) == 2 * 8 * 16
    create_store(model, path, _config(text_corpus, dtype="float16"))
    full = ActivationStore(path)
    x = full.get("mlp_out.0", torch.arange(10))
    assert x.dtype == torch.float32 and full.meta["dtype"] == "float16"


def test_resume_with_different_config_is_refused(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    create_store(model, tmp_path / "s", _config(text_corpus), max_shards=1)
    with pytest.raises(StoreError, match="different"):
        create_store(model, tmp_path / "s", _config(text_corpus, points=["resid_post.2"]))


def test_disk_full_leaves_no_partial_shard(tiny, text_corpus, tmp_path, monkeypatch):
    import errno

    import llmri.store as store_mod

    model = tiny("llama")

    real_write = Path.write_bytes

    def full_disk(self, data):
        real_write(self, data[:100])  # the shard's first bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.Path, "write_bytes", full_disk)
    with pytest.raises(DiskFullError, match="no space"):
        create_store(model, tmp_path / "s", _config(text_corpus))
    leftovers = [p.name for p in (tmp_path / "s" / "shards").iterdir()]
    assert leftovers == []


def _cache_cmd(model_dir, corpus, out):
    return [sys.executable, "-m", "llmri.cli", "cache", "--model", str(model_dir), "--corpus", str(corpus),
            "--points", "resid_post.1,mlp_out.0", "--tokens", "60000", "--context", "16", "--split", "all",
            "--shard-tokens", "128", "--batch-size", "2", "--store-dtype", "float32", "--out", str(out)]


def test_killed_cache_resumes_to_the_identical_result(tiny_dir, tmp_path):
    """kill -9 a real `llmri cache` run mid-way; rerunning it gives byte-identical shards."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    from tiny import WORDS

    for i in range(300):
        (corpus / f"d{i}.txt").write_text(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(250)))
    model_dir = tiny_dir("llama")
    env = {**os.environ, "LLMRI_PROGRESS": "0"}
    clean = tmp_path / "clean"
    subprocess.run(_cache_cmd(model_dir, corpus, clean), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cache_cmd(model_dir, corpus, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        shards = list((killed / "shards").glob("*.safetensors")) if (killed / "shards").exists() else []
        if len(shards) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((killed / "shards").glob("*.safetensors")))
    total = len(list((clean / "shards").glob("*.safetensors")))
    assert 3 <= n_before < total
    subprocess.run(_cache_cmd(model_dir, corpus, killed), check=True, env=env, capture_output=True)
    a = sorted((clean / "shards").iterdir())
    b = sorted((killed / "shards").iterdir())
    assert [p.name for p in a] == [p.name for p in b]  # no temporary files left behind
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """A kill -9 between opening and renaming a shard leaves `.NAME.tmp-PID-…`; the next run removes it,
    but never a temporary whose writer is still running."""
    from llmri.atomic import remove_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".000003.safetensors.tmp-{dead.pid}-0ea8539f").write_bytes(b"half")
    live = tmp_path / f".000004.safetensors.tmp-{os.getppid()}-12345678"
    live.write_bytes(b"busy")
    (tmp_path / "000002.safetensors").write_bytes(b"done")
    assert remove_stale(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "000002.safetensors"]
