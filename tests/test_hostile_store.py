"""Hostile activation stores: nothing lost, nothing hangs, nothing corrupt passes.

Each test reproduces one failure (a missing, truncated, bit-flipped or self-consistent-but-wrong shard, a bad
option, an output path that is not ours) through the real CLI on a tiny model and asserts one ``error:`` line
with exit code 2, no traceback, nothing half-written, and — for damaged shards — that rerunning the same
``llmri cache`` command repairs the store to the bytes of an uninterrupted run.
"""

import hashlib
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from clirun import assert_clean_error, run
from llmri.errors import StoreError
from llmri.store import ActivationStore

SHARDS = 4  # 500 tokens → 32 windows of 16; 128 tokens per shard → 8 windows per shard




@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cache(tiny_dir, corpus, out, *extra):
    args = {"--points": "resid_post.1,mlp_out.0", "--context": 16, "--tokens": 500, "--shard-tokens": 128,
            "--store-dtype": "float32", "--batch-size": 3}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = v
    return run("cache", "--model", tiny_dir(), "--corpus", corpus, *[x for kv in args.items() for x in kv], "--out", out)


def train(tiny_dir, corpus, store, out):
    with deadline(120):
        return run("train", "--model", tiny_dir(), "--corpus", corpus, "--store", store, "--points", "resid_post.1",
                   "--tokens", "2k", "--batch-size", 64, "--expansion", 2, "--eval-tokens", 0, "--ce-tokens", 0,
                   "--out", out)


def dictionaries(run_dir: Path) -> list[str]:
    """Dictionary folders a training run saved; a run refused before it wrote anything leaves no folder."""
    if not run_dir.exists():
        return []
    saved = sorted(d.name for d in run_dir.iterdir() if d.is_dir() and (d / "llmri.json").exists())
    assert saved or any(e.name != ".llmri-artefact.json" for e in run_dir.iterdir()), f"empty run folder left: {run_dir}"
    return saved


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "shards").iterdir())}


@pytest.fixture
def stores(tiny_dir, text_corpus, tmp_path):
    """Two stores made by the same command: ``clean`` stays untouched, ``s`` is the one the test damages."""
    for name in ("clean", "s"):
        r = cache(tiny_dir, text_corpus, tmp_path / name)
        assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "s" / "shards").iterdir())) == SHARDS
    assert shard_bytes(tmp_path / "s") == shard_bytes(tmp_path / "clean")  # deterministic: the repair target
    return tmp_path / "clean", tmp_path / "s"


def header_of(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8 : 8 + n])


def write_consistent_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Our own writer: a shard whose checksum matches its (wrong) contents — sha256 over each tensor's raw
    bytes in sorted-name order, in the safetensors metadata."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(tensors[name].contiguous().numpy().tobytes())
    path.write_bytes(save(tensors, metadata={"sha256": h.hexdigest()}))


def assert_repaired(tiny_dir, corpus, clean, damaged, monkeypatch, shard):
    monkeypatch.setenv("LLMRI_PROGRESS", "1")
    r = cache(tiny_dir, corpus, damaged)
    assert r.exit_code == 0, r.output
    err = r.stderr.replace("\n", "")  # rich wraps status lines at the (test) terminal width
    assert err.count("repairing") == 1 and f"shards/{shard}: it " in err, r.stderr
    assert "store ready" in r.stdout + r.stderr
    assert shard_bytes(damaged) == shard_bytes(clean)
    assert json.loads((damaged / "meta.json").read_text()) == json.loads((clean / "meta.json").read_text())
    ActivationStore(damaged).verify()


def test_clean_store_trains_and_verifies(tiny_dir, text_corpus, stores, tmp_path):
    """The baseline the other tests break: an undamaged store verifies and trains (a dictionary is saved)."""
    clean, _ = stores
    store = ActivationStore(clean)
    store.verify()
    assert store.meta["version"] == 2 and store.meta["complete"]
    r = train(tiny_dir, text_corpus, clean, tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert len(dictionaries(tmp_path / "run")) == 1


@pytest.mark.parametrize("tokens", [500, 128], ids=["one-of-four-shards", "the-only-shard"])
def test_missing_shard_fails_training_promptly(tiny_dir, text_corpus, tmp_path, monkeypatch, tokens):
    store = tmp_path / "s"
    assert cache(tiny_dir, text_corpus, store, "--tokens", tokens).exit_code == 0
    victim = "000001.safetensors" if tokens == 500 else "000000.safetensors"
    (store / "shards" / victim).unlink()
    assert json.loads((store / "meta.json").read_text())["complete"]
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")  # used to spin at 100 % CPU with no shard left
    assert_clean_error(r, str(store), victim, "missing", "rerun the same `llmri cache` command")
    assert dictionaries(tmp_path / "run") == []
    monkeypatch.setenv("LLMRI_PROGRESS", "1")
    assert cache(tiny_dir, text_corpus, store, "--tokens", tokens).exit_code == 0
    ActivationStore(store).verify()


def test_stray_shard_is_refused_and_removed_by_a_rerun(tiny_dir, text_corpus, stores):
    clean, store = stores
    (store / "shards" / "000009.safetensors").write_bytes((store / "shards" / "000000.safetensors").read_bytes())
    with pytest.raises(StoreError, match="000009.safetensors is not one of its 4 shards"):
        ActivationStore(store)
    assert cache(tiny_dir, text_corpus, store).exit_code == 0
    assert shard_bytes(store) == shard_bytes(clean)


def test_truncated_shard_errors_and_a_rerun_repairs_it(tiny_dir, text_corpus, stores, tmp_path, monkeypatch):
    clean, store = stores
    f = store / "shards" / "000001.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")
    assert_clean_error(r, str(store), "000001.safetensors", "truncated", "rerun the same `llmri cache` command")
    assert "mmap" not in r.stderr
    assert dictionaries(tmp_path / "run") == []
    assert_repaired(tiny_dir, text_corpus, clean, store, monkeypatch, "000001.safetensors")


def test_corrupted_header_errors_and_a_rerun_repairs_it(tiny_dir, text_corpus, stores, tmp_path, monkeypatch):
    clean, store = stores
    f = store / "shards" / "000002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:20] = b"#" * 12  # the JSON header no longer parses
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="000002.safetensors has a corrupted header"):
        ActivationStore(store)
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")
    assert_clean_error(r, "000002.safetensors", "corrupted header")
    assert "JSONDecodeError" not in r.output
    assert_repaired(tiny_dir, text_corpus, clean, store, monkeypatch, "000002.safetensors")


def test_flipped_bytes_in_activations_fail_the_checksum_and_a_rerun_repairs_them(
        tiny_dir, text_corpus, stores, tmp_path, monkeypatch):
    clean, store = stores
    f = store / "shards" / "000003.safetensors"
    base, header = header_of(f)
    start, _ = header["resid_post.1"]["data_offsets"]
    raw = bytearray(f.read_bytes())
    raw[base + start + 1001] ^= 0x10  # one bit of one float: still finite, same size, valid header
    f.write_bytes(bytes(raw))
    ActivationStore(store)  # the cheap open-time check (headers, sizes) cannot see it …
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")  # … the first read of the shard does
    assert_clean_error(r, str(store), "000003.safetensors", "checksum")
    assert dictionaries(tmp_path / "run") == []
    assert_repaired(tiny_dir, text_corpus, clean, store, monkeypatch, "000003.safetensors")


def test_token_id_outside_the_vocabulary_names_shard_and_row(tiny_dir, text_corpus, stores, tmp_path, monkeypatch):
    clean, store = stores
    f = store / "shards" / "000001.safetensors"
    tensors = load_file(f)
    tensors["tokens"][1, 5] = 1_400_000_000  # shard 1, window 1 of 8, position 5 → token 8·16 + 16 + 5
    write_consistent_shard(f, tensors)
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")
    assert_clean_error(r, "000001.safetensors", "1,400,000,000", "outside the vocabulary", "token 149",
                       "window 9", "position 5")
    assert dictionaries(tmp_path / "run") == []
    assert_repaired(tiny_dir, text_corpus, clean, store, monkeypatch, "000001.safetensors")


def test_nan_activations_fail_training_and_save_no_dictionary(tiny_dir, text_corpus, stores, tmp_path, monkeypatch):
    clean, store = stores
    f = store / "shards" / "000003.safetensors"
    tensors = load_file(f)
    tensors["resid_post.1"][37:] = float("nan")  # rows from 37 on: token 3·128 + 37 = 421
    write_consistent_shard(f, tensors)
    r = train(tiny_dir, text_corpus, store, tmp_path / "run")
    assert_clean_error(r, "000003.safetensors", "non-finite", "resid_post.1", "token 421", "window 26")
    assert dictionaries(tmp_path / "run") == []
    assert_repaired(tiny_dir, text_corpus, clean, store, monkeypatch, "000003.safetensors")


def test_store_with_no_kept_rows_raises_instead_of_looping(tiny_dir, text_corpus, stores):
    _, store = stores
    for f in (store / "shards").iterdir():
        tensors = load_file(f)
        tensors["excluded"][:] = True  # a self-consistent store in which every row is excluded
        write_consistent_shard(f, tensors)
    s = ActivationStore(store)
    with deadline(60), pytest.raises(StoreError, match="no kept rows"):
        next(iter(s.batches(64, epochs=10**9)))


def test_model_producing_nan_is_refused_at_cache_time(tiny, text_corpus, tmp_path, monkeypatch):
    from llmri.store import StoreConfig, create_store
    from llmri import data

    model = tiny("llama")
    real = model.capture

    def broken(batch, points):
        got = real(batch, points)
        got[points[0]][0, 3, 0] = float("inf")
        return got

    monkeypatch.setattr(model, "capture", broken)
    cfg = StoreConfig(points=["resid_post.1"], tokens=128, corpus=str(text_corpus), shard_tokens=128,
                      windows=data.WindowSpec(context=16, split="all"), dtype="float32")
    with pytest.raises(StoreError, match="non-finite .* token 3 "):
        create_store(model, tmp_path / "s", cfg)
    assert list((tmp_path / "s" / "shards").iterdir()) == []


@pytest.mark.parametrize("tokens", ["0", "0.0001k"])
def test_zero_tokens_is_refused(tiny_dir, text_corpus, tmp_path, tokens):
    r = cache(tiny_dir, text_corpus, tmp_path / "s", "--tokens", tokens)
    assert_clean_error(r, "positive count", "all")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("option", ["--batch-size", "--shard-tokens"])
def test_zero_batch_size_or_shard_tokens_is_refused(tiny_dir, text_corpus, tmp_path, option):
    r = cache(tiny_dir, text_corpus, tmp_path / "s", option, 0)
    assert_clean_error(r, option, "≥ 1")
    assert not (tmp_path / "s").exists()


def test_out_an_existing_file_is_refused_untouched(tiny_dir, text_corpus, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_bytes(b"my notes\n")
    r = cache(tiny_dir, text_corpus, target)
    assert_clean_error(r, str(target), "existing file")
    assert target.read_bytes() == b"my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "notes.txt"]


def test_out_a_folder_of_unrelated_files_is_refused_untouched(tiny_dir, text_corpus, tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_bytes(b"\\section{x}\n")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = snapshot(folder)
    r = cache(tiny_dir, text_corpus, folder)
    assert_clean_error(r, str(folder), "thesis.tex")
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.tex"]


def _make_version_1(store: Path) -> None:
    """What llmri wrote before checksums: no shard metadata, meta version 1, no artefact marker."""
    for f in (store / "shards").iterdir():
        f.write_bytes(save(load_file(f)))
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    (store / ".llmri-artefact.json").unlink()


def test_version_1_store_still_reads_with_a_warning(tiny_dir, text_corpus, stores, tmp_path, monkeypatch, capsys):
    clean, store = stores
    _make_version_1(store)
    monkeypatch.setenv("LLMRI_PROGRESS", "1")
    capsys.readouterr()
    old, new = ActivationStore(store), ActivationStore(clean)
    old.verify()
    ActivationStore(store)
    warned = [line for line in capsys.readouterr().err.splitlines() if "without checksums" in line]
    assert len(warned) == 1  # once per store
    idx = torch.arange(len(new))
    assert torch.equal(old.get("resid_post.1", idx), new.get("resid_post.1", idx))
    assert torch.equal(old.kept(), new.kept())
    # every check but the checksum still applies
    f = store / "shards" / "000002.safetensors"
    tensors = load_file(f)
    tensors["tokens"][0, 0] = -7
    f.write_bytes(save(tensors))
    with pytest.raises(StoreError, match="000002.safetensors holds token id -7"):
        ActivationStore(store).verify()
    # rerunning cache on it recomputes that shard (with a checksum) and keeps the others
    before = shard_bytes(store)
    r = cache(tiny_dir, text_corpus, store)
    assert r.exit_code == 0, r.output
    after = shard_bytes(store)
    assert after["000002.safetensors"] == shard_bytes(clean)["000002.safetensors"]
    assert {k: v for k, v in after.items() if k != "000002.safetensors"} == \
        {k: v for k, v in before.items() if k != "000002.safetensors"}
    ActivationStore(store).verify()
