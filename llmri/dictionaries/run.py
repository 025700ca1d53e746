"""A training run as one call: dictionary configs from (kind, points, layers) → Trainer → eval → files.

    dicts = plan(model, kind="sae", arch="topk", points=["resid_post"], layers="all", expansion=8, k=32)
    train(model, dicts, TrainConfig(tokens=2_000_000), out="runs/sae-all")

:func:`train_in_memory` is the same Trainer on rows already in memory, with nothing written to disk (the
scan's quick SAEs and transcoders).

Output: ``out/<dictionary name>/`` in SAELens format (SAEs, transcoders) or llmri's (crosscoders, CLTs),
each with ``llmri.json`` (configs, training log, timing) and ``eval.json`` (held-out metrics), plus
``out/run.json`` summarising the run. Checkpoints live in ``out/checkpoint`` until the run ends.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .. import data
from ..atomic import check_target, claimed, mark, write_json
from ..hookpoints import layer_of
from ..progress import say
from ..store import ActivationStore
from ..validate import check_number
from . import formats
from .config import DictConfig, DictionaryError, TrainConfig
from .evaluate import EvalConfig, evaluate_many
from .sources import ModelSource, StoreSource, TensorSource
from .trainer import CHECKPOINT, Trainer, build, init_distributed


def parse_indices(spec: str | None, n: int, what: str = "layers", owner: str = "model") -> list[int]:
    """``all`` | ``3`` | ``0-5`` | ``1,4,9`` → indices below ``n`` (negative ones count from the end)."""
    if spec is None or spec == "":
        return []
    if spec == "all":
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise DictionaryError(f"cannot read {what} '{spec}'", "use all, 5, 0-5 or 1,4,9")
        lo = int(m.group(1))
        lo = lo + n if lo < 0 else lo
        hi = int(m.group(2)) if m.group(2) else lo
        out += list(range(lo, hi + 1))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        shown = bad if len(bad) <= 5 else [*bad[:3], "…", bad[-1]]
        raise DictionaryError(f"{what} {shown} do not exist", f"the {owner} has {what} 0..{n - 1}")
    return out


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """``all`` | ``3`` | ``0-5`` | ``1,4,9`` (negative indices count from the end)."""
    return parse_indices(spec, n_layers)


def plan(model, *, kind: str = "sae", arch: str = "topk", points: list[str] | None = None, layers: str | None = None,
         expansion: float = 8, latents: int = 0, k: int = 32, skip: bool = False, sparsity_coeff: float = 0.0,
         sparsity: str = "l0") -> list[DictConfig]:
    """Dictionary configs for a request. ``points`` may be point kinds without a layer (``resid_post``) to be
    combined with ``layers``; transcoders and CLTs take ``layers`` only (mlp_in.l → mlp_out.l)."""
    from .config import ARCHS, KINDS

    if kind not in KINDS:
        raise DictionaryError(f"unknown dictionary kind '{kind}'", f"use one of {', '.join(KINDS)}")
    if arch not in ARCHS:
        raise DictionaryError(f"unknown architecture '{arch}'", f"use one of {', '.join(ARCHS)}")
    check_number("--expansion", expansion, 0, lo_open=True, error=DictionaryError)
    check_number("--latents", latents, 0, integer=True, error=DictionaryError, fix="use 0 (from --expansion) or a positive count")
    L = model.n_layers
    layer_list = parse_layers(layers, L)
    n = latents or int(round(expansion * model.d_model))
    common = dict(arch=arch, d_in=model.d_model, n_latents=n, k=k, skip=skip, sparsity_coeff=sparsity_coeff,
                  sparsity=sparsity, model_name=model.name)
    if kind in ("transcoder", "clt"):
        if not layer_list:
            layer_list = sorted({layer_of(model.resolve(p)) for p in points or []} - {None})
        if not layer_list:
            raise DictionaryError(f"--kind {kind} needs --layers", "e.g. --layers all or --layers 3-5")
        if kind == "transcoder":
            return [DictConfig(kind="transcoder", in_points=[f"mlp_in.{l}"], out_points=[f"mlp_out.{l}"], **common)
                    for l in layer_list]
        return [DictConfig(kind="clt", in_points=[f"mlp_in.{l}" for l in layer_list],
                           out_points=[f"mlp_out.{l}" for l in layer_list], **common)]
    if not points:
        raise DictionaryError(f"--kind {kind} needs --points", "e.g. --points resid_post.15 or --points resid_post --layers all")
    resolved: list[str] = []
    for p in points:
        if "." not in p and p not in ("embed", "final_norm", "logits"):
            if not layer_list:
                raise DictionaryError(f"point '{p}' has no layer", f"write {p}.5 or add --layers")
            resolved += [model.resolve(f"{p}.{l}") for l in layer_list]
        else:
            resolved.append(model.resolve(p))
    if kind == "crosscoder":
        return [DictConfig(kind="crosscoder", in_points=resolved, **common)]
    return [DictConfig(kind="sae", in_points=[p], **common) for p in resolved]


def train_in_memory(dict_cfgs: list[DictConfig], rows: dict[str, torch.Tensor], tokens: int, *, device,
                    batch_size: int = 1024) -> list:
    """Train ``dict_cfgs`` together on kept rows already in memory ({point: [n, d]}, aligned; cycled, reshuffled
    each epoch, for ``tokens`` tokens) and return them in eval mode; no checkpoints, nothing left on disk.
    Raises :class:`DictionaryError` when the rows hold less than one batch."""
    cfg = TrainConfig(tokens=tokens, batch_size=batch_size, checkpoint_every=0, norm_batches=2, log_every=8)
    dicts = [build(c, device=device, seed=i) for i, c in enumerate(dict_cfgs)]
    source = TensorSource(rows, batch_size)
    with tempfile.TemporaryDirectory(prefix="llmri-train-") as scratch:
        Trainer(dicts, cfg, source, scratch).fit()
    for d in dicts:
        d.eval()
    return dicts


def train(model, dict_cfgs: list[DictConfig], cfg: TrainConfig, out: str | Path, *, corpus: str = data.DEFAULT_CORPUS,
          store: str | Path | None = None, windows: data.WindowSpec | None = None, resume: bool = False,
          eval_cfg: EvalConfig | None = None, device: str | torch.device | None = None) -> list[Path]:
    """Train, evaluate and save; returns the dictionary folders. Under torchrun, ranks split the work."""
    out = Path(out)
    for c in dict_cfgs:
        check_target(out / c.name, "dictionary")
    with claimed(out, "run", legacy=("run.json", CHECKPOINT + "/trainer.json")):  # never over foreign files
        mark(out, "run", "run.json", CHECKPOINT)
        return _train(model, dict_cfgs, cfg, out, corpus=corpus, store=store, windows=windows, resume=resume,
                      eval_cfg=eval_cfg, device=device)


def _train(model, dict_cfgs: list[DictConfig], cfg: TrainConfig, out: Path, *, corpus: str, store, windows, resume: bool,
           eval_cfg: EvalConfig | None, device) -> list[Path]:
    rank, world = init_distributed()
    device = torch.device(device) if device is not None else model.device
    dicts = [build(c, device=device, seed=cfg.seed + i) for i, c in enumerate(dict_cfgs)]
    points = sorted({p for c in dict_cfgs for p in c.in_points + c.out_points})
    docs = data.load_corpus(corpus)
    share = cfg.distribute == "data" and world > 1
    if cfg.batch_size % (world if share else 1):
        raise DictionaryError(f"batch size {cfg.batch_size} does not split over {world} ranks",
                              "use a batch size divisible by the number of processes")
    local_batch = cfg.batch_size // (world if share else 1)
    if store is not None:
        source = StoreSource(ActivationStore(store), points, cfg.batch_size, seed=cfg.seed,
                             rank=rank if share else 0, world=world if share else 1)
    else:
        source = ModelSource(model, docs, points, local_batch, windows=windows or data.WindowSpec(seed=cfg.seed),
                             seed=cfg.seed, rank=rank if share else 0, world=world if share else 1)
    trainer = Trainer(dicts, cfg, source, out)
    t0 = time.perf_counter()
    trainer.fit(resume=resume)
    train_seconds = time.perf_counter() - t0
    folders = []
    summary = []
    saving = [d for d in trainer.dicts if not (share and rank != 0)]
    results = [{} for _ in saving]
    if saving and eval_cfg is not None and (eval_cfg.tokens or eval_cfg.ce_tokens):
        results = evaluate_many(model, saving, docs, eval_cfg)
    for d, result in zip(saving, results):
        density = result.pop("_density", None)
        info = {"dict": d.cfg.to_dict(), "train": cfg.to_dict(), "history": trainer.history(trainer.dicts.index(d)),
                "train_seconds": train_seconds, "dictionary_seconds": trainer.dict_seconds,
                "lm_seconds": getattr(source, "lm_seconds", 0.0), "world_size": world, "source": str(store or corpus)}
        folder = formats.save(d, out / d.cfg.name, density=density,
                              meta={"dataset_path": str(store or corpus), "context_size": (windows or data.WindowSpec()).context},
                              extra={"llmri.json": info, **({"eval.json": result} if result else {})})
        folders.append(folder)
        summary.append({"name": d.cfg.name, "folder": str(folder), **{k: result.get(k) for k in (
            "nmse", "l0", "dead_fraction", "ce_loss_recovered", "kl_clean_spliced") if k in result}})
        say(f"llmri: saved {d.cfg.name} → {folder}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        write_json(out / "run.json", {"dictionaries": summary if world == 1 else None, "train_seconds": train_seconds,
                                      "dictionary_seconds": trainer.dict_seconds,
                                      "lm_seconds": getattr(source, "lm_seconds", 0.0), "world_size": world,
                                      "tokens": cfg.tokens})
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return folders
