"""Whole training runs: kill -9 and resume end bit-identical; torchrun with 2 CPU processes (gloo) matches
one process; the CLI's train/eval commands and their errors."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tiny import WORDS

from llmri import data
from llmri.cli import app
from llmri.dictionaries import DictConfig, StoreSource, TrainConfig, Trainer, build
from llmri.store import ActivationStore, StoreConfig, create_store

ENV = {**os.environ, "LLMRI_PROGRESS": "0", "TRANSFORMERS_VERBOSITY": "error"}


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(400):
        (folder / f"d{i:03d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(300)))
    return folder


def _train_cmd(model_dir, corpus, out, *extra):
    return [sys.executable, "-m", "llmri.cli", "train", "--model", str(model_dir), "--corpus", str(corpus),
            "--points", "resid_post.1,mlp_out.0", "--expansion", "2", "--k", "6", "--tokens", "30k",
            "--batch-size", "256", "--context", "32", "--checkpoint-every", "5", "--eval-tokens", "0",
            "--ce-tokens", "0", "--dead-tokens", "2k", "--out", str(out), *extra]


def test_kill_9_then_resume_is_bit_identical(tiny_dir, big_corpus, tmp_path):
    model_dir = tiny_dir("llama")
    clean = tmp_path / "clean"
    subprocess.run(_train_cmd(model_dir, big_corpus, clean), check=True, env=ENV, capture_output=True)
    victim = tmp_path / "victim"
    proc = subprocess.Popen(_train_cmd(model_dir, big_corpus, victim), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (victim / "checkpoint" / "trainer.json").exists():
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads((victim / "checkpoint" / "trainer.json").read_text())["step"]
    assert 5 <= step < 118 and not (victim / "run.json").exists()  # really interrupted mid-run
    subprocess.run(_train_cmd(model_dir, big_corpus, victim, "--resume"), check=True, env=ENV, capture_output=True)
    for name in ("resid_post.1", "mlp_out.0"):
        a = load_file(str(clean / name / "sae_weights.safetensors"))
        b = load_file(str(victim / name / "sae_weights.safetensors"))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert not (victim / "checkpoint").exists()


@pytest.fixture(scope="module")
def tiny_store(tiny_dir, big_corpus, tmp_path_factory):
    import llmri

    model = llmri.load_model(str(tiny_dir("llama")))
    path = tmp_path_factory.mktemp("store") / "s"
    cfg = StoreConfig(points=["resid_post.1", "resid_post.2"], tokens=40_000, corpus=str(big_corpus),
                      windows=data.WindowSpec(context=32, split="all"), shard_tokens=4096, dtype="float32")
    return create_store(model, path, cfg)


class _Crash(Exception):
    pass


class _CrashingSource(StoreSource):
    def __init__(self, *a, crash_after: int, **kw):
        super().__init__(*a, **kw)
        self.crash_after = crash_after

    def __iter__(self):
        for i, b in enumerate(super().__iter__()):
            if i >= self.crash_after:
                raise _Crash
            yield b


def test_store_training_resumes_bit_identically(tiny_store, tmp_path):
    store = ActivationStore(tiny_store)
    cfgs = [DictConfig(kind="crosscoder", arch="batchtopk", in_points=["resid_post.1", "resid_post.2"], d_in=64,
                       n_latents=96, k=6),
            DictConfig(kind="sae", arch="jumprelu", in_points=["resid_post.2"], d_in=64, n_latents=96)]
    tc = TrainConfig(tokens=30 * 256, batch_size=256, checkpoint_every=4, dead_tokens=1024, norm_batches=2)
    points = ["resid_post.1", "resid_post.2"]
    full = [build(c) for c in cfgs]
    Trainer(full, tc, StoreSource(store, points, 256), tmp_path / "a").fit()
    crashed = [build(c) for c in cfgs]
    with pytest.raises(_Crash):
        Trainer(crashed, tc, _CrashingSource(store, points, 256, crash_after=17), tmp_path / "b").fit()
    resumed = [build(c, seed=99) for c in cfgs]  # a different init must not matter: state comes from the checkpoint
    Trainer(resumed, tc, StoreSource(store, points, 256), tmp_path / "b").fit(resume=True)
    for a, b in zip(full, resumed):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def _torchrun(n, args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "llmri.cli", *args]
    r = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("mode", ["data", "layers"])
def test_two_processes_match_one(tiny_dir, tiny_store, big_corpus, tmp_path, mode):
    """torchrun, 2 CPU processes on gloo: data-parallel (each rank half of every batch, gradients averaged)
    and layer-distributed (each rank its own dictionaries) both reproduce the 1-process result."""
    args = ["train", "--model", str(tiny_dir("llama")), "--store", str(tiny_store), "--points", "resid_post.1,resid_post.2",
            "--expansion", "2", "--k", "6", "--tokens", "5k", "--batch-size", "256", "--eval-tokens", "0",
            "--ce-tokens", "0", "--dead-tokens", "1k", "--distribute", mode, "--corpus", str(big_corpus)]
    _torchrun(1, [*args, "--out", str(tmp_path / "one")], cwd=Path.cwd())
    _torchrun(2, [*args, "--out", str(tmp_path / "two")], cwd=Path.cwd())
    for name in ("resid_post.1", "resid_post.2"):
        a = load_file(str(tmp_path / "one" / name / "sae_weights.safetensors"))
        b = load_file(str(tmp_path / "two" / name / "sae_weights.safetensors"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


runner = CliRunner()


def test_train_and_eval_commands(tiny_dir, big_corpus, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--model", str(tiny_dir("llama")), "--corpus", str(big_corpus), "--kind", "transcoder",
                            "--layers", "0-1", "--expansion", "2", "--k", "6", "--tokens", "4k", "--batch-size", "256",
                            "--context", "32", "--eval-tokens", "1k", "--ce-tokens", "512", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "run.json").read_text())
    assert [d["name"] for d in summary["dictionaries"]] == ["transcoder.0", "transcoder.1"]
    ev = json.loads((out / "transcoder.1" / "eval.json").read_text())
    assert ev["tokens"] >= 1000 and 0 <= ev["dead_fraction"] <= 1 and "ce_loss_recovered" in ev
    assert "position 0" in ev["excluded"]
    shutil.copy(out / "transcoder.1" / "eval.json", tmp_path / "old.json")
    r = runner.invoke(app, ["eval", str(out / "transcoder.1"), "--model", str(tiny_dir("llama")), "--corpus",
                            str(big_corpus), "--tokens", "1k", "--ce-tokens", "0"])
    assert r.exit_code == 0, r.output
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["dictionary"] == "transcoder.1" and line["nmse"] == pytest.approx(ev["nmse"], rel=0.2)


@pytest.mark.parametrize("args,needle", [
    (["--kind", "nope", "--points", "resid_post.1"], "unknown dictionary kind"),
    (["--kind", "transcoder"], "needs --layers"),
    (["--kind", "sae", "--points", "resid_post"], "has no layer"),
    (["--kind", "sae", "--points", "resid_post.1", "--arch", "gated"], "unknown architecture"),
    (["--kind", "sae", "--layers", "7", "--points", "resid_post"], "do not exist"),
])
def test_train_input_errors(tiny_dir, big_corpus, tmp_path, args, needle):
    r = runner.invoke(app, ["train", "--model", str(tiny_dir("llama")), "--corpus", str(big_corpus), "--out",
                            str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert not (tmp_path / "o").exists()
