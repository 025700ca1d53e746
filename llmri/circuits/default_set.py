"""The default transcoder set of a model: trained once on first use, cached, reused by every later trace.

``llmri trace PROMPT`` without ``--transcoders`` calls :func:`default_transcoders` (so do ``intervene`` and
``validate``): the first call caches ``mlp_in.l``/``mlp_out.l`` of every layer on train-split tokens of the
corpus (an activation store, :func:`llmri.store.create_store`) and trains one TopK transcoder per layer on
it (:func:`llmri.dictionaries.run.train`); later calls find the finished set and only say which one they use.

Layout, under ``$LLMRI_CACHE/transcoders/<key>/`` with key = ``<model name>-<model digest>-<config hash>``
(the digest covers the model's weights and config files; the hash the fields of :class:`DefaultTranscoders`
that change the result)::

    store/          the cached activations (deleted once the set is complete, unless ``keep_store``)
    run/            the training run as ``llmri train`` writes it: transcoder.<l>/ folders, run.json, and
                    checkpoint/ while training — what :func:`llmri.circuits.load_transcoders` reads
    complete.json   written last and atomically: the set is whole (config, model, timings)
    .lock           held while a process builds the set (a second process waits for it)

Interrupting is safe at any point: the store is written shard by shard and the trainer checkpoints every
``checkpoint_every`` steps, so the next call continues where the last one stopped (verifying the shards on
disk) and, on CPU, ends with the same weights as an uninterrupted run. Without ``complete.json`` a set is
never loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import data
from ..assets import cache_dir, digest
from ..atomic import user_os_error, write_json
from ..dictionaries.config import DictionaryError, TrainConfig
from ..dictionaries.run import plan, train
from ..dictionaries.trainer import CHECKPOINT, Trainer, build
from ..progress import say
from ..store import StoreConfig, create_store
from ..validate import bounded, check

SET_VERSION = 1
"""Bumped when the recipe changes in a way the config does not show (it is part of the key)."""
SHARD_TOKENS = 8192
"""Tokens per store shard: the unit of resumption while caching (≈ 15 s of forward passes on 2 cores)."""
COMPLETE = "complete.json"
# calibration of the up-front estimate (measured with benchmarks/first_trace.py): the store's own cost per
# token beyond a hooked forward (float16 copies, checksums, writing), and the data path's per training step
CACHE_OVERHEAD = 1.15
STEP_OVERHEAD = 1.25


@dataclass
class DefaultTranscoders:
    """What the default transcoder set is. The defaults are a measured trade-off for the default model
    (SmolLM2-135M, 30 layers) on 2 CPU cores (``benchmarks/first_trace.py``): the first ``llmri trace`` takes
    ≈ 8 minutes idle (70 s caching, 340 s training, 60 s for the trace; 14 minutes beside two busy processes)
    and its graphs on the 8 known-behaviour prompts score replacement 0.354 and completeness 0.805 on average,
    0.945 and 0.983 of the README's 4× set (2,304 latents, 80k cached tokens, 480k token-steps: 17 minutes of
    training alone). Width is not what limits such short runs — 3× (1,728 latents) scored 0.356 / 0.805 for
    ≈ 1.25× the training time —, data is: 61,440 cached tokens and 450,560 token-steps reach 0.370 / 0.814
    (0.99 of the 4× set) in ≈ 11 minutes idle, too close to 15 once another process shares the cores."""

    expansion: float = bounded(2.0, 0, lo_open=True)
    """Latents per transcoder = expansion × d_model; > 0."""
    k: int = bounded(32, 1)
    """Active latents per token (TopK); ≥ 1 and at most the latents."""
    skip: bool = True
    """Add a learned linear skip connection x·W_skipᵀ (a linear path the graph attributes exactly, so less of
    the MLP output is left to error nodes)."""
    cache_tokens: int = bounded(40_960, 1)
    """Train-split corpus tokens cached (rounded up to whole windows); ≥ 1."""
    train_tokens: int = bounded(327_680, 1)
    """Training token-steps (several epochs over the cached tokens); ≥ 1."""
    batch_size: int = bounded(4096, 1)
    """Tokens per optimiser step; ≥ 1."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus whose train split is cached (bundled name or path)."""
    seed: int = bounded(0, 0)
    """Seed of the windows, initialisation and data order."""
    checkpoint_every: int = bounded(10, 0)
    """Training steps between checkpoints (how much an interruption loses); 0 = none. Not part of the key."""
    keep_store: bool = False
    """Keep the cached activations after training (2 × d_model float16 values per token and layer: 2.8 GB for
    the default on SmolLM2, the disk the build needs at its peak; the set itself is 190 MB). Not part of the key."""

    def __post_init__(self):
        check(self, DictionaryError)

    def key_fields(self) -> dict:
        """The fields that change the trained set (and so the cache key)."""
        d = asdict(self)
        for name in ("checkpoint_every", "keep_store"):
            d.pop(name)
        return d


def model_digest(model) -> str:
    """sha256 identifying a model's weights and config: from the manifest of a converted GGUF (computed once
    at conversion), of an HF folder's files (memoised), or of the loaded tensors for a hub id."""
    src = Path(model.source) if model.source else None
    manifest = src / "llmri-manifest.json" if src is not None else None
    if manifest is not None and manifest.is_file():
        files = json.loads(manifest.read_text()).get("files", {})
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    if src is not None and src.is_dir():
        return digest(src)
    h = hashlib.sha256(model.config.to_json_string().encode())
    for name, t in sorted(model.hf.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def set_key(model, config: DefaultTranscoders) -> str:
    """Folder name of ``model``'s set under ``config``: model name, model digest, config hash."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-.")[:48] or "model"
    spec = json.dumps({"version": SET_VERSION, **config.key_fields()}, sort_keys=True)
    return f"{name}-{model_digest(model)[:12]}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def set_folder(model, config: DefaultTranscoders | None = None, *, root: str | Path | None = None) -> Path:
    """Where ``model``'s default set lives (whether or not it exists yet)."""
    return Path(root or cache_dir() / "transcoders") / set_key(model, config or DefaultTranscoders())


def default_transcoders(model, config: DefaultTranscoders | None = None, *, root: str | Path | None = None) -> Path:
    """The run folder of ``model``'s default transcoder set (one TopK transcoder per layer), training and
    caching it first if needed; resumes an interrupted build. ``root`` defaults to ``$LLMRI_CACHE/transcoders``."""
    cfg = config or DefaultTranscoders()
    cfg.__post_init__()
    folder = set_folder(model, cfg, root=root)
    run = folder / "run"
    if _complete(folder, model.n_layers):
        say(f"llmri: using the cached default transcoders {folder}")
        return run
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only or full cache: one line naming the folder
        raise user_os_error(folder, err) from None
    with _locked(folder):
        if _complete(folder, model.n_layers):  # another process finished it while we waited
            say(f"llmri: using the cached default transcoders {folder}")
            return run
        seconds = _build(model, cfg, folder)
        if not cfg.keep_store:
            shutil.rmtree(folder / "store", ignore_errors=True)
        write_json(folder / COMPLETE, {"key": folder.name, "model": model.name, "model_digest": model_digest(model),
                                       "layers": model.n_layers, "config": asdict(cfg), "version": SET_VERSION,
                                       "seconds": seconds})
    say(f"llmri: default transcoders ready in {folder}")
    return run


def _complete(folder: Path, n_layers: int) -> bool:
    try:
        info = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("key") == folder.name and _trained(folder / "run", n_layers)


def _trained(run: Path, n_layers: int) -> bool:
    """Training ended and every transcoder was saved (run.json is written after the last one)."""
    return (run / "run.json").is_file() and all((run / f"transcoder.{l}" / "cfg.json").is_file()
                                                for l in range(n_layers))


@contextmanager
def _locked(folder: Path):
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say(f"llmri: another llmri process is building {folder}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(model, cfg: DefaultTranscoders, folder: Path) -> dict:
    """Cache and train what is missing; returns the seconds each part took in this call."""
    L = model.n_layers
    run, store = folder / "run", folder / "store"
    seconds = {"estimate": 0.0, "cache": 0.0, "train": 0.0}
    if _trained(run, L):  # interrupted after training, before the marker
        return seconds
    dict_cfgs = plan(model, kind="transcoder", arch="topk", layers="all", expansion=cfg.expansion, k=cfg.k,
                     skip=cfg.skip)
    windows = data.WindowSpec(seed=cfg.seed)
    store_cfg = StoreConfig(points=[f"mlp_in.{l}" for l in range(L)] + [f"mlp_out.{l}" for l in range(L)],
                            tokens=cfg.cache_tokens, corpus=cfg.corpus, windows=windows, shard_tokens=SHARD_TOKENS)
    tc = TrainConfig(tokens=cfg.train_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                     checkpoint_every=cfg.checkpoint_every)
    t0 = time.perf_counter()
    cache_left = _cache_left(store, cfg, windows.context)
    steps_left = tc_steps = -(-tc.tokens // tc.batch_size)
    ckpt = run / CHECKPOINT / "trainer.json"
    if ckpt.is_file():
        steps_left = max(0, tc_steps - int(json.loads(ckpt.read_text()).get("step", 0)))
    cache_s, train_s = _estimate(model, dict_cfgs[0], tc, cache_left, steps_left)
    seconds.update(estimate=time.perf_counter() - t0, estimated_cache=cache_s, estimated_train=train_s)
    n = dict_cfgs[0].n_latents
    done = [] if cache_left == cfg.cache_tokens else [f"{cfg.cache_tokens - cache_left:,} tokens already cached"]
    if steps_left < tc_steps:
        done.append(f"training resumes at step {tc_steps - steps_left}/{tc_steps}")
    say(f"llmri: no finished default transcoders for {model.name} yet; training them once into {folder} "
        f"({'; '.join(done) + '; ' if done else ''}interrupt any time: the next run continues): {L} TopK transcoders "
        f"mlp_in.l → mlp_out.l, layers 0–{L - 1}, {n:,} latents ({cfg.expansion:g}× d_model), k = {cfg.k}"
        f"{', skip' if cfg.skip else ''}; {cfg.cache_tokens:,} train-split tokens of {cfg.corpus} cached, "
        f"{cfg.train_tokens:,} token-steps (≈ {cfg.train_tokens / cfg.cache_tokens:.0f} epochs). "
        f"Estimated from a quick measurement: ≈ {_duration(cache_s + train_s)} "
        f"({_duration(cache_s)} caching, {_duration(train_s)} training)")
    t0 = time.perf_counter()
    if cache_left:
        create_store(model, store, store_cfg)
    seconds["cache"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train(model, dict_cfgs, tc, run, corpus=cfg.corpus, store=store, windows=windows, resume=ckpt.is_file(),
          eval_cfg=None)
    seconds["train"] = time.perf_counter() - t0
    return {k: round(v, 2) for k, v in seconds.items()}


def _cache_left(store: Path, cfg: DefaultTranscoders, context: int) -> int:
    """Tokens still to cache (0 when the store is complete)."""
    try:
        meta = json.loads((store / "meta.json").read_text())
    except (OSError, ValueError):
        return cfg.cache_tokens
    if meta.get("complete"):
        return 0
    shards = len(list((store / "shards").glob("*.safetensors")))
    return max(0, cfg.cache_tokens - shards * max(1, SHARD_TOKENS // context) * context)


def _estimate(model, dict_cfg, tc: TrainConfig, cache_tokens: int, steps: int) -> tuple[float, float]:
    """Seconds for caching ``cache_tokens`` and for ``steps`` training steps of all layers, from the best of
    two hooked forward passes and of three training steps of one transcoder on random data (≈ 2–3 s)."""
    cache_s = train_s = 0.0
    L = model.n_layers
    if cache_tokens:
        points = [f"mlp_in.{l}" for l in range(L)] + [f"mlp_out.{l}" for l in range(L)]
        ctx = data.WindowSpec().context
        ids = torch.randint(0, model.vocab_size, (4, ctx), generator=torch.Generator().manual_seed(0)).to(model.device)
        with torch.no_grad():
            model.capture(ids[:1], points)  # warm-up
            per_token = _best(lambda: model.capture(ids, points), 2) / ids.numel()
        cache_s = cache_tokens * per_token * CACHE_OVERHEAD
    if steps:
        d = build(dict_cfg, device=model.device)
        g = torch.Generator().manual_seed(0)
        batch = {p: torch.randn(tc.batch_size, dict_cfg.d_in, generator=g).to(model.device)
                 for p in dict_cfg.in_points + dict_cfg.out_points}
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer([d], TrainConfig(tokens=3 * tc.batch_size, batch_size=tc.batch_size, checkpoint_every=0),
                              None, scratch)
            trainer._train_step(batch)  # warm-up
            per_step = _best(lambda: trainer._train_step(batch), 3)
        train_s = steps * L * per_step * STEP_OVERHEAD
    return cache_s, train_s


def _best(fn, repeat: int) -> float:
    """Shortest of ``repeat`` timed calls (a busy neighbour inflates single timings)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


__all__ = ["DefaultTranscoders", "default_transcoders", "model_digest", "set_folder", "set_key"]
