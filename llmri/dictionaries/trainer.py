"""One Trainer for every dictionary kind: SAEs, transcoders, crosscoders and CLTs, one or many at once.

All dictionaries of a run are fed from the same batches (so all-layer training costs one LM forward per
batch). Per dictionary: Adam (fused where available) with linear warm-up and a linear decay to zero,
unit-norm decoder constraint for TopK-style dictionaries, aux-k loss on dead latents, dead-latent
tracking. Checkpoints (safetensors + JSON, written whole) every ``checkpoint_every`` steps; ``resume``
continues bit-identically on CPU.

Multi-process training uses ``torchrun`` + ``torch.distributed``: ``distribute="data"`` wraps each
dictionary in DistributedDataParallel and gives each rank a share of every batch; ``distribute="layers"``
assigns dictionaries to ranks round-robin.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..atomic import atomic_path, write_json
from ..progress import bar, say
from .clt import CrossLayerTranscoder
from .coder import SparseCoder
from .config import DictConfig, DictionaryError, TrainConfig
from .protocol import Dictionary

CHECKPOINT = "checkpoint"


def build(cfg: DictConfig, *, device=None, seed: int = 0) -> Dictionary:
    """A freshly initialised dictionary for ``cfg``."""
    cls = CrossLayerTranscoder if cfg.kind == "clt" else SparseCoder
    return cls(cfg, device=device, seed=seed)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Stats:
    """Running numbers of one dictionary (reset at every log line)."""

    sq_err: float = 0.0
    var: float = 0.0
    l0: float = 0.0
    loss: float = 0.0
    aux: float = 0.0
    steps: int = 0
    history: list[dict] = field(default_factory=list)


def _diverged(d: Dictionary, step: int, what: str) -> DictionaryError:
    return DictionaryError(f"training of {d.cfg.name} diverged at step {step}: {what}",
                           "check the activations (a store is verified by llmri; a live model may overflow in float16) "
                           "or lower --lr; --resume continues from the last good checkpoint")


class Trainer:
    """Train ``dicts`` on batches from ``source``; artefacts and checkpoints go to ``out``."""

    def __init__(self, dicts: list[Dictionary], cfg: TrainConfig, source, out: str | Path):
        self.cfg, self.source, self.out = cfg, source, Path(out)
        self.rank, self.world = _dist()
        self.all_dicts = dicts
        mine = [i for i in range(len(dicts)) if cfg.distribute != "layers" or i % self.world == self.rank]
        self.mine = mine
        self.dicts = [dicts[i] for i in mine]
        self.points = sorted({p for d in dicts for p in d.cfg.in_points + d.cfg.out_points})
        self.device = next(dicts[0].parameters()).device
        self.compute_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        self.opts = [self._optimizer(d) for d in self.dicts]
        self.since_fired = [torch.zeros(d.n_latents, dtype=torch.long, device=self.device) for d in self.dicts]
        self.stats = [Stats() for _ in self.dicts]
        self.step = 0
        self.total_steps = -(-cfg.tokens // cfg.batch_size)
        self.dict_seconds = 0.0
        self.wrapped = [self._wrap(d) for d in self.dicts]

    # ------------------------------------------------------------ setup
    def _optimizer(self, d: Dictionary) -> torch.optim.Optimizer:
        """Adam; JumpReLU thresholds (log-parametrised) learn ``threshold_lr_scale`` times faster."""
        lr = self.cfg.learning_rate(d.cfg)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        th = [p for n, p in d.named_parameters() if n == "log_threshold"]
        rest = [p for n, p in d.named_parameters() if n != "log_threshold"]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if th:
            groups.append({"params": th, "lr_scale": self.cfg.threshold_lr_scale})
        return torch.optim.Adam(groups, lr=lr, betas=self.cfg.betas, **fused)

    def _wrap(self, d: Dictionary) -> nn.Module:
        if self.world > 1 and self.cfg.distribute == "data":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(_LossModule(d), broadcast_buffers=False)
        return _LossModule(d)

    def _lr_factor(self, step: int) -> float:
        T = self.total_steps
        warm = max(1, int(self.cfg.warmup * T))
        decay_start = int((1 - self.cfg.decay) * T)
        f = min(1.0, (step + 1) / warm)
        if self.cfg.decay > 0 and step >= decay_start:
            f *= max(0.0, (T - step) / max(1, T - decay_start))
        return f

    @torch.no_grad()
    def _initialise(self, batches: list[dict[str, Tensor]]) -> None:
        """Normalisation scales (E‖x‖ = √d per point), target variance and decoder-bias init from data
        (summed over ranks, so every rank starts identical)."""

        def reduce(t: Tensor) -> Tensor:
            if self.world > 1 and self.cfg.distribute == "data":
                dist.all_reduce(t)
            return t

        norms = {}
        for p in self.points:
            s = reduce(torch.tensor([sum(b[p].double().norm(dim=-1).sum().item() for b in batches),
                                     sum(len(b[p]) for b in batches)], dtype=torch.float64, device=self.device))
            norms[p] = (s[0] / s[1]).item()
        for d in self.all_dicts:
            c = d.cfg
            if self.cfg.normalize:
                d.in_scale.copy_(torch.tensor([c.d_in**0.5 / norms[p] for p in c.in_points]))
                d.out_scale.copy_(torch.tensor([c.d_out**0.5 / norms[p] for p in c.out_points]))
            ys = torch.cat([d.targets(b) for b in batches]).double()
            total = reduce(torch.cat([ys.sum(0).flatten(), ys.pow(2).sum().view(1),
                                      torch.tensor([len(ys)], dtype=torch.float64, device=ys.device)]))
            n = total[-1]
            mean = total[:-2] / n
            d.target_var.fill_((total[-2] / n - mean.pow(2).sum()).item())
            d.b_dec.copy_(mean.view_as(d.b_dec).to(d.b_dec.dtype))

    # ------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False) -> list[Dictionary]:
        ckpt = self.out / CHECKPOINT
        if resume and (ckpt / "trainer.json").exists():
            self._load_checkpoint(ckpt)
            say(f"llmri: resuming from step {self.step}/{self.total_steps}")
        batches = iter(self.source)
        if self.step == 0:
            if resume:
                say("llmri: no checkpoint to resume from; starting fresh")
            # the first batches only set scales, variance and the decoder bias; training starts after them
            self._initialise([next(batches) for _ in range(self.cfg.norm_batches)])
        start_time = time.perf_counter()
        start_step = self.step
        with bar("training", total=self.total_steps - start_step, unit="steps") as b:
            while self.step < self.total_steps:
                try:
                    batch = next(batches)
                except StopIteration:
                    raise DictionaryError("the data source ran out before the requested tokens",
                                          "ask for fewer --tokens or provide more data") from None
                self._train_step(batch)
                self.step += 1
                b.advance()
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    b.note(self._log(time.perf_counter() - start_time, self.step - start_step))
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and self.step < self.total_steps:
                    self._check_finite()
                    self._save_checkpoint(ckpt)
        self._check_finite()
        self.seconds = time.perf_counter() - start_time
        return self.all_dicts

    def _check_finite(self) -> None:
        """Stop before a diverged dictionary is checkpointed or saved (the last checkpoint stays as it was)."""
        for d in self.dicts:
            bad = [n for n, p in d.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise _diverged(d, self.step, f"{', '.join(bad)} hold NaN or infinite values")

    def _train_step(self, batch: dict[str, Tensor]) -> None:
        batch = {p: v.to(self.device, non_blocking=True) for p, v in batch.items()}
        n_global = next(iter(batch.values())).shape[0] * (self.world if self.cfg.distribute == "data" else 1)
        factor = self._lr_factor(self.step)
        t0 = time.perf_counter()
        for i, (d, wrapped, opt) in enumerate(zip(self.dicts, self.wrapped, self.opts)):
            x, y = d.inputs(batch), d.targets(batch)
            dead = (self.since_fired[i] >= self.cfg.dead_window).nonzero().flatten()
            aux_k = self.cfg.aux_k or d.cfg.d_in // 2
            out = wrapped(x, y, dead, aux_k, self.cfg.aux_coeff, self.cfg.aux_fraction, self.compute_dtype)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            with torch.profiler.record_function("optimizer"):  # named for benchmarks/sae_training.py's time split
                d.remove_parallel_grad()
                for g in opt.param_groups:
                    g["lr"] = self.cfg.learning_rate(d.cfg) * factor * g["lr_scale"]
                opt.step()
                d.normalize_decoder()
            fired = out.fired
            if self.world > 1 and self.cfg.distribute == "data":
                f = fired.to(torch.uint8)
                dist.all_reduce(f, op=dist.ReduceOp.MAX)
                fired = f.bool()
            self.since_fired[i] += n_global
            self.since_fired[i].masked_fill_(fired, 0)
            s = self.stats[i]  # tensors until the next log line (no device sync per step)
            yf = y.reshape(y.shape[0], -1).detach()
            s.sq_err += out.sq_err
            s.var += (yf - yf.mean(0)).pow(2).sum()
            s.l0 += out.l0.detach()
            s.loss += out.loss.detach()
            s.aux += out.aux.detach()
            s.steps += 1
        self.dict_seconds += time.perf_counter() - t0

    def _log(self, elapsed: float, steps: int) -> str:
        tok_s = steps * self.cfg.batch_size / max(elapsed, 1e-9)
        notes = []
        for i, (d, s) in enumerate(zip(self.dicts, self.stats)):
            if not math.isfinite(float(s.loss)):
                raise _diverged(d, self.step, f"the loss is {float(s.loss)}")
            rec = {
                "step": self.step,
                "tokens": self.step * self.cfg.batch_size,
                "loss": float(s.loss) / s.steps,
                "nmse": float(s.sq_err) / float(s.var),
                "l0": float(s.l0) / s.steps,
                "aux": float(s.aux) / s.steps,
                "dead_pct": 100.0 * (self.since_fired[i] >= self.cfg.dead_window).float().mean().item(),
                "tokens_per_s": tok_s,
            }
            s.history.append(rec)
            self.stats[i] = Stats(history=s.history)
            notes.append(rec)
        n = len(notes)
        mean = {k: sum(r[k] for r in notes) / n for k in ("loss", "nmse", "l0", "dead_pct")}
        scope = f"{n} dicts, mean " if n > 1 else ""
        return (f"{scope}loss {mean['loss']:.4f} nmse {mean['nmse']:.3f} L0 {mean['l0']:.1f} "
                f"dead {mean['dead_pct']:.1f}% {tok_s:,.0f} tok/s")

    def history(self, i: int) -> list[dict]:
        """Logged numbers of local dictionary ``i``."""
        return self.stats[i].history

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, folder: Path) -> None:
        """Everything needed to continue bit-identically, written as one folder (temporary name, rename)."""
        meta_src, src_tensors = self.source.state()
        rank_folder = folder if self.world == 1 else folder / f"rank{self.rank}"
        target = rank_folder
        with atomic_path(target, directory=True) as tmp:
            for j, (d, opt) in enumerate(zip(self.dicts, self.opts)):
                tensors = {f"model.{k}": v.detach().contiguous() for k, v in d.state_dict().items()}
                state = opt.state_dict()
                for pid, st in state["state"].items():
                    for k, v in st.items():
                        tensors[f"opt.{pid}.{k}"] = v.detach().clone().contiguous() if torch.is_tensor(v) else torch.tensor(v)
                tensors["since_fired"] = self.since_fired[j].contiguous()
                save_file(tensors, str(tmp / f"dict{self.mine[j]}.safetensors"))
            if src_tensors:
                save_file({k: v.contiguous() for k, v in src_tensors.items()}, str(tmp / "source.safetensors"))
            write_json(tmp / "trainer.json", {
                "step": self.step, "source": meta_src, "config": self.cfg.to_dict(),
                "history": [s.history for s in self.stats], "dict_seconds": self.dict_seconds,
            })
        if self.world > 1:
            dist.barrier()
            if self.rank == 0:
                write_json(folder / "trainer.json", {"step": self.step, "world": self.world})

    def _load_checkpoint(self, folder: Path) -> None:
        rank_folder = folder if self.world == 1 else folder / f"rank{self.rank}"
        meta = json.loads((rank_folder / "trainer.json").read_text())
        self.step = meta["step"]
        self.dict_seconds = meta.get("dict_seconds", 0.0)
        for j, (d, opt) in enumerate(zip(self.dicts, self.opts)):
            tensors = load_file(str(rank_folder / f"dict{self.mine[j]}.safetensors"), device=str(self.device))
            d.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            state = opt.state_dict()
            for key, v in tensors.items():
                if key.startswith("opt."):
                    _, pid, name = key.split(".", 2)
                    state["state"].setdefault(int(pid), {})[name] = v
            opt.load_state_dict(state)
            self.since_fired[j] = tensors["since_fired"]
            self.stats[j].history = meta["history"][j]
        src = rank_folder / "source.safetensors"
        self.source.restore(meta["source"], load_file(str(src)) if src.exists() else {})


class _LossModule(nn.Module):
    """Wraps a dictionary so that DDP sees its training loss as ``forward``."""

    def __init__(self, d: Dictionary):
        super().__init__()
        self.d = d

    def forward(self, x, y, dead, aux_k, aux_coeff, aux_fraction, compute_dtype):
        return self.d.training_loss(x, y, dead=dead, aux_k=aux_k, aux_coeff=aux_coeff, aux_fraction=aux_fraction,
                                    compute_dtype=compute_dtype)


def _leave_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        atexit.register(_leave_distributed)  # a gloo group left alive at exit can abort the process (SIGABRT)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _dist()

