"""Unlearning methods: fine-tuning losses and training-free edits of the weights, behind one call.

    unlearn_model(model, task, UnlearnConfig("npo"))       # the model is changed in place

**Fine-tuning methods** (full fine-tuning with AdamW, gradient norm clipped at 1, ``steps`` steps over seeded
forget and retain batches; f = a forget batch, r = a retain batch, ℓ_θ(y|x) the summed log-probability of the
row's target tokens, |y| their count, CE the mean token cross-entropy):

- ``ga`` gradient ascent: L = −CE(f).
- ``graddiff``: L = −CE(f) + α·CE(r) (α = ``retain_weight``).
- ``npo`` (Zhang et al. 2024, "Negative Preference Optimization"): L = −(2/β)·E_f log σ(−β·(ℓ_θ − ℓ_ref))
  + α·CE(r), ℓ_ref the original model's (read once before training); β = ``beta`` (default 0.1). Bounded
  below, so unlike GA it slows down as the forget likelihood falls instead of diverging.
- ``simnpo`` (Fan et al. 2024, "Simplicity Prevails"): NPO without the reference and length-normalised,
  L = −(2/β)·E_f log σ(−(β/|y|)·ℓ_θ − γ) + α·CE(r); β default 4.5, γ = ``gamma`` (default 0.125) (the
  open-unlearning TOFU settings).
- ``rmu`` (Li et al. 2024, "The WMDP Benchmark"): at ``resid_post.layer`` the forget rows' states are pulled to
  c·u (u a fixed random unit vector, c = ``rmu_scale`` × the mean state norm there on retain rows) and the
  retain rows' to the original model's states: L = ‖h_f − c·u‖² / n̄² + α_rmu·‖h_r − h_r^ref‖² / n̄² (means over
  the positions read; n̄ that mean norm); only the MLPs of layers ``layer``−2 … ``layer`` train. As WMDP reads
  every token of its forget documents, the positions read are every token after the prefix all rows share (the
  chat template's header): the question and the answer, where a fact is retrieved before its first answer token
  is predicted. (This module first read the answer tokens only, at lr 5e-5: inert on every task. On the cloze
  validation split at lr 2e-3 the answer-only rule forgot less and cost retain five times more — forget /
  retain probability 0.545 / 0.635 → 0.308 / 0.506, against 0.102 / 0.606 reading question and answer; on the
  facts organism the two rules were alike, 0.607 / 0.696 and 0.625 / 0.699.)

**Training-free edits** of the MLP output maps W_out (``down_proj`` in Llama; y = W_out·m) of ``edit_layers``,
from the MLP outputs Y_f, Y_r on the forget and retain target tokens (statistics only; no gradient):

- ``manifold``: the retain outputs' principal subspace U (the fewest principal directions of the uncentred
  second moment holding ``retain_energy`` of it) and the forget outputs' part outside it, Y_f(I − UUᵀ); its top
  ``rank`` principal directions V are removed from what the MLP writes: W_out ← (I − VVᵀ)·W_out. Directions that
  carry the forget data but that retain data hardly uses are cut; the retain data's manifold is left alone.
- ``leace`` (Belrose et al. 2023, "LEACE"): with z = 1 on forget and 0 on retain tokens, Σ the (Ledoit–Wolf shrunk)
  covariance of their MLP outputs, W = Σ^(−1/2) and σ = Cov(y, z), the eraser E = W⁺·uuᵀ·W (u = Wσ/‖Wσ‖) is folded into
  the weights: W_out ← (I − E)·W_out. This is LEACE's linear part; the affine centring term is left out (an
  MLP output map has no bias to hold it), which still makes the two classes' mean outputs equal — no linear
  probe on that layer's MLP output separates forget from retain by its mean — but moves the overall mean.

**Inference-time clamping** (:mod:`llmri.unlearning.clamp`): ``sae`` — SAE features that fire on forget and
hardly on retain tokens are clamped negative where they fire (Farrell et al. 2024); no weight changes.

A loss that becomes non-finite stops training with :class:`UnlearnError`; the weights of the last good step
are kept (restored in memory; a folder run keeps its last checkpoint).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import bounded, check, check_choice
from .tasks import Row, Task, UnlearnError

LOSS_METHODS = ("ga", "graddiff", "npo", "simnpo", "rmu")
EDIT_METHODS = ("manifold", "leace")
METHODS = LOSS_METHODS + EDIT_METHODS + ("sae",)
DEFAULT_LR = {"rmu": 2e-3}
"""Per-method learning rates other than 1e-5. RMU's from a sweep on the validation splits (60 steps, forget /
retain-eval answer probability; cloze 0.545 / 0.635, facts organism 0.710 / 0.707 before): lr 5e-5 → 0.520 /
0.639 and —; 5e-4 → 0.346 / 0.647 and 0.708 / 0.707; 2e-3 → 0.102 / 0.606 and 0.625 / 0.699; 5e-3 → 0.086 /
0.532 and 0.335 / 0.690. 2e-3 is the largest that costs neither task more than 5% of its retain probability
(5e-3 forgets far more facts but costs cloze 16%)."""
"""Learning rates that differ from ``1e-5`` (the TOFU / open-unlearning default for full fine-tuning)."""
DEFAULT_BETA = {"npo": 0.1, "simnpo": 4.5}


@dataclass
class UnlearnConfig:
    """Settings of :func:`unlearn_model` (each method reads the fields its docstring names)."""

    method: str = "npo"
    """One of :data:`METHODS`."""
    steps: int = bounded(60, 1)
    """Optimizer steps (fine-tuning methods); ≥ 1."""
    lr: float | None = bounded(None, 0, lo_open=True, none=True)
    """AdamW learning rate; None: 1e-5, 2e-3 for rmu (:data:`DEFAULT_LR`); > 0."""
    batch_size: int = bounded(8, 1)
    """Forget rows (and as many retain rows) per step; ≥ 1."""
    retain_weight: float = bounded(1.0, 0)
    """α: weight of the retain cross-entropy (graddiff, npo, simnpo); ≥ 0."""
    beta: float | None = bounded(None, 0, lo_open=True, none=True)
    """β of npo (default 0.1) and simnpo (default 4.5); > 0."""
    gamma: float = bounded(0.125, 0)
    """SimNPO's reward margin γ; ≥ 0."""
    layer: int | None = bounded(None, 0, none=True)
    """RMU's and SAE clamping's layer (its ``resid_post``); None: a quarter of the depth (WMDP used layer 7 of 32)."""
    rmu_scale: float = bounded(2.0, 0, lo_open=True)
    """RMU's target norm as a multiple of the mean state norm at its layer; > 0."""
    rmu_retain: float = bounded(100.0, 0)
    """α_rmu: weight of RMU's retain term; ≥ 0."""
    rank: int = bounded(8, 1)
    """Manifold edit: directions removed per layer; ≥ 1."""
    retain_energy: float = bounded(0.99, 0, 1, lo_open=True)
    """Manifold edit: share of the retain outputs' second moment their protected subspace holds; in (0, 1]."""
    edit_layers: str = "all"
    """Layers whose MLP output maps the edits change: ``all``, ``3``, ``2-5`` or ``1,4,7``."""
    sae: str | None = None
    """SAE clamping: a trained SAE on ``resid_post.layer`` (a folder of ``llmri train``, SAELens or sparsify);
    None: train one on the task's rows."""
    sae_latents: int = bounded(0, 0)
    """SAE clamping, trained here: latents (0: 4 × d_model); ≥ 0."""
    sae_tokens: int = bounded(200_000, 1)
    """SAE clamping, trained here: training tokens (the task's rows, cycled); ≥ 1."""
    sae_features: int = bounded(16, 1)
    """SAE clamping: features clamped; ≥ 1."""
    sae_retain_max: float = bounded(0.01, 0, 1)
    """SAE clamping: the largest share of retain tokens a clamped feature may fire on; in [0, 1]."""
    sae_clamp: float = bounded(4.0, 0)
    """SAE clamping: c — an active feature's value becomes −c × its mean forget activation (0: ablation); ≥ 0."""
    seed: int = bounded(0, 0)
    """Seeds batch order and RMU's random direction."""

    def __post_init__(self):
        check(self, UnlearnError)
        check_choice("unlearning method", self.method, METHODS, UnlearnError)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, 1e-5)

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.method, 0.1)


class Outcome(dict):
    """What :func:`unlearn_model` reports: ``method``, ``seconds``, ``flops`` (fine-tuning: 6·N·tokens for
    trained tokens + 2·N·tokens for reference reads, N the model's parameters: an upper bound for rmu, whose
    passes stop at its layer; edits: 2·N·tokens of the statistics' reads), ``loss`` (per step), ``stopped`` (a divergence message or
    None), and per method its chosen settings."""


def layers_of(spec: str, n_layers: int) -> list[int]:
    """``all`` | ``3`` | ``2-5`` | ``1,4,7`` → sorted layer indices, each checked against the depth."""
    if spec == "all":
        return list(range(n_layers))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UnlearnError(f"--edit-layers {spec!r} is not a layer list", "write all, 3, 2-5 or 1,4,7") from None
    bad = sorted(x for x in out if not 0 <= x < n_layers)
    if bad or not out:
        raise UnlearnError(f"--edit-layers {spec!r} names layers outside 0…{n_layers - 1}",
                           f"use layers 0 to {n_layers - 1}")
    return sorted(out)


# ----------------------------------------------------------------------------------------------- batches


def batches(rows: Sequence[Row], batch_size: int, seed: int, salt: str):
    """Endless seeded batches of row indices: a fresh shuffle every pass."""
    for epoch in range(10**9):
        order = list(range(len(rows)))
        random.Random(f"{salt}/{seed}/{epoch}").shuffle(order)
        for k in range(0, len(order), batch_size):
            yield order[k : k + batch_size]


def tensors(model, rows: Sequence[Row]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask and labels (−100 off the targets) on the model's device."""
    from ..safety.organism import batch_tensors, pad_id

    ids, mask, labels = batch_tensors(rows, pad_id(model))
    return ids.to(model.device), mask.to(model.device), labels.to(model.device)


def sequence_logprobs(net, ids: Tensor, mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """([B] summed log-probability of each row's targets, [B] their count)."""
    logits = net(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    tgt = labels[:, 1:]
    keep = tgt != -100
    lp = logits.log_softmax(-1).gather(-1, tgt.clamp_min(0)[..., None])[..., 0] * keep
    return lp.sum(1), keep.sum(1)


def cross_entropy(net, ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy of the targets."""
    return net(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss


@torch.no_grad()
def reference_logprobs(model, rows: Sequence[Row], batch_size: int = 16) -> Tensor:
    """[len(rows)] summed target log-probabilities of the model as it is now (NPO's reference)."""
    out = []
    for k in range(0, len(rows), batch_size):
        out.append(sequence_logprobs(model.hf, *tensors(model, rows[k : k + batch_size]))[0].cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------- fine-tuning


def _trainable(model, cfg: UnlearnConfig) -> list[Tensor]:
    """Parameters the method trains: every weight, or (rmu) the MLPs of layers ``layer``−2 … ``layer``."""
    for p in model.hf.parameters():
        p.requires_grad_(cfg.method != "rmu")
    if cfg.method != "rmu":
        return list(model.hf.parameters())
    blocks = model.hf.get_submodule(model.adapter.blocks)
    layer = rmu_layer(model, cfg)
    params = []
    for l in range(max(0, layer - 2), layer + 1):
        for p in blocks[l].get_submodule(model.adapter.mlp).parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def rmu_layer(model, cfg: UnlearnConfig) -> int:
    layer = model.n_layers // 4 if cfg.layer is None else cfg.layer
    if not 0 <= layer < model.n_layers:
        raise UnlearnError(f"--layer {layer} is outside the model's layers 0…{model.n_layers - 1}",
                           f"use a layer from 0 to {model.n_layers - 1}")
    return layer


def _targets(labels: Tensor) -> Tensor:
    """[B, T] bool: positions whose *own* token is a target (the edit methods' statistics)."""
    return labels != -100


def shared_prefix(rows: Sequence[Row]) -> int:
    """Length of the token prefix every row starts with (a chat template's header; a window's BOS)."""
    first = rows[0][0]
    n = min(len(r[0]) for r in rows)
    for r in rows[1:]:
        ids = r[0]
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return n


def _read_positions(mask: Tensor, skip: int) -> Tensor:
    """[B, T] bool: the positions RMU reads — every real token after the shared prefix (the question *and* the
    answer: a fact is retrieved at the question's tokens, before the first answer token is predicted)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return mask.bool() & (pos >= skip)[None]


class _RMU:
    """RMU's fixed pieces: the layer, the target vector c·u, the retain rows' original states, n̄²."""

    def __init__(self, model, task: Task, cfg: UnlearnConfig):
        self.point = f"resid_post.{rmu_layer(model, cfg)}"
        self.skip = shared_prefix(task.forget + task.retain)
        states, norms = [], []
        with torch.no_grad():
            for k in range(0, len(task.retain), 16):
                ids, mask, labels = tensors(model, task.retain[k : k + 16])
                h = model.capture(ids, [self.point], attention_mask=mask)[self.point].float()
                for j, row in enumerate(task.retain[k : k + 16]):
                    states.append(h[j, : len(row[0])].cpu())
                norms.append(h[_read_positions(mask, self.skip)].norm(dim=-1).cpu())
        self.retain_states = states
        self.norm = torch.cat(norms).mean().item()
        g = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(model.d_model, generator=g)  # WMDP: uniform [0, 1), normalised
        self.target = (cfg.rmu_scale * self.norm * u / u.norm()).to(model.device)

    def loss(self, model, fb, rb, r_idx: Sequence[int], alpha: float) -> Tensor:
        ids, mask, labels = fb
        h = model.capture(ids, [self.point], attention_mask=mask, grad=True)[self.point].float()
        forget = (h[_read_positions(mask, self.skip)] - self.target).pow(2).sum(-1).mean()
        ids, mask, labels = rb
        h = model.capture(ids, [self.point], attention_mask=mask, grad=True)[self.point].float()
        ref = torch.zeros_like(h)
        for j, i in enumerate(r_idx):
            ref[j, : len(self.retain_states[i])] = self.retain_states[i].to(h.device)
        keep = _read_positions(mask, self.skip)
        retain = (h[keep] - ref[keep]).pow(2).sum(-1).mean()
        return (forget + alpha * retain) / self.norm**2


def _loss_fn(model, task: Task, cfg: UnlearnConfig) -> Callable:
    """loss(f_idx, r_idx) → scalar for the configured fine-tuning method."""
    net, alpha, beta = model.hf, cfg.retain_weight, cfg.beta_value
    f_rows, r_rows = task.forget, task.retain

    def retain_ce(r_idx):
        return alpha * cross_entropy(net, *tensors(model, [r_rows[i] for i in r_idx])) if alpha and r_rows else 0.0

    if cfg.method == "ga":
        return lambda f, r: -cross_entropy(net, *tensors(model, [f_rows[i] for i in f]))
    if cfg.method == "graddiff":
        return lambda f, r: -cross_entropy(net, *tensors(model, [f_rows[i] for i in f])) + retain_ce(r)
    if cfg.method == "npo":
        ref = reference_logprobs(model, f_rows)

        def npo(f, r):
            lp, _ = sequence_logprobs(net, *tensors(model, [f_rows[i] for i in f]))
            ratio = lp - ref[f].to(lp.device)
            return -(2 / beta) * torch.nn.functional.logsigmoid(-beta * ratio).mean() + retain_ce(r)

        return npo
    if cfg.method == "simnpo":
        def simnpo(f, r):
            lp, n = sequence_logprobs(net, *tensors(model, [f_rows[i] for i in f]))
            reward = -(beta / n.clamp_min(1)) * lp - cfg.gamma
            return -(2 / beta) * torch.nn.functional.logsigmoid(reward).mean() + retain_ce(r)

        return simnpo
    rmu = _RMU(model, task, cfg)
    return lambda f, r: rmu.loss(model, tensors(model, [f_rows[i] for i in f]), tensors(model, [r_rows[i] for i in r]),
                                 r, cfg.rmu_retain)


def _tokens(rows: Sequence[Row], idx: Sequence[int]) -> int:
    return sum(len(rows[i][0]) for i in idx)


def fine_tune(model, task: Task, cfg: UnlearnConfig, *, on_step: Callable[[int], None] | None = None) -> Outcome:
    """Run a fine-tuning method for ``cfg.steps`` steps; ``on_step(step)`` after each (for trajectories)."""
    from ..progress import bar

    if not task.forget:
        raise UnlearnError("the forget set is empty", "choose a task and forget split with items in it")
    if cfg.method in ("graddiff", "rmu") and not task.retain:
        raise UnlearnError(f"{cfg.method} needs retain rows and the task has none", "use ga, npo or simnpo")
    t0 = time.perf_counter()
    n_params = sum(p.numel() for p in model.hf.parameters())
    flops = 2 * n_params * sum(len(r[0]) for r in task.forget) if cfg.method == "npo" else 0  # reference read
    if cfg.method == "rmu":
        flops += 2 * n_params * sum(len(r[0]) for r in task.retain)
    loss_of = _loss_fn(model, task, cfg)
    params = _trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    fb = batches(task.forget, cfg.batch_size, cfg.seed, "forget")
    rb = batches(task.retain, cfg.batch_size, cfg.seed, "retain") if task.retain else None
    good = [p.detach().clone() for p in params]
    history, stopped = [], None
    model.hf.train()
    try:
        with bar(f"unlearning ({cfg.method})", total=cfg.steps, unit="steps") as b:
            for step in range(cfg.steps):
                f_idx, r_idx = next(fb), (next(rb) if rb else [])
                loss = loss_of(f_idx, r_idx)
                if not torch.isfinite(loss):
                    stopped = (f"the {cfg.method} loss became {loss.item()} at step {step}; "
                               f"the weights after step {step - 1} are kept")
                    with torch.no_grad():
                        for p, g in zip(params, good):
                            p.copy_(g)
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                with torch.no_grad():
                    for p, g in zip(params, good):
                        g.copy_(p)
                history.append(round(loss.item(), 5))
                flops += 6 * n_params * (_tokens(task.forget, f_idx) + (_tokens(task.retain, r_idx) if rb else 0))
                b.advance(1)
                if on_step:
                    model.hf.eval()
                    on_step(step + 1)
                    model.hf.train()
    finally:
        model.hf.eval()
        for p in model.hf.parameters():
            p.requires_grad_(False)
    return Outcome(method=cfg.method, seconds=round(time.perf_counter() - t0, 2), flops=float(flops), loss=history,
                   stopped=stopped, lr=cfg.learning_rate,
                   **({"beta": cfg.beta_value} if cfg.method in ("npo", "simnpo") else {}),
                   **({"layer": rmu_layer(model, cfg)} if cfg.method == "rmu" else {}))


# ------------------------------------------------------------------------------------------------ edits


@torch.no_grad()
def mlp_outputs(model, rows: Sequence[Row], layers: Sequence[int], batch_size: int = 16) -> dict[int, Tensor]:
    """{layer: [tokens, d] float64 MLP outputs at the rows' target tokens}."""
    points = [f"mlp_out.{l}" for l in layers]
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for k in range(0, len(rows), batch_size):
        ids, mask, labels = tensors(model, rows[k : k + batch_size])
        acts = model.capture(ids, points, attention_mask=mask)
        keep = _targets(labels)
        for l, p in zip(layers, points):
            out[l].append(acts[p][keep].double().cpu())
    return {l: torch.cat(v) for l, v in out.items()}


def manifold_projector(y_forget: Tensor, y_retain: Tensor, rank: int, retain_energy: float) -> Tensor:
    """[d, d] projector VVᵀ onto the top ``rank`` directions of the forget outputs outside the retain outputs'
    principal subspace (module docstring)."""
    evals, evecs = torch.linalg.eigh(y_retain.T @ y_retain / len(y_retain))
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    share = evals.cumsum(0) / evals.sum().clamp_min(1e-300)
    k = int((share < retain_energy).sum().item()) + 1
    u = evecs[:, :k]
    outside = y_forget - (y_forget @ u) @ u.T
    evals_f, evecs_f = torch.linalg.eigh(outside.T @ outside / len(outside))
    keep = evals_f.flip(0)[:rank] > 1e-12 * max(evals_f.max().item(), 1e-300)
    v = evecs_f.flip(1)[:, :rank][:, keep]
    return v @ v.T


def leace_eraser(y_forget: Tensor, y_retain: Tensor, eps: float = 1e-8) -> Tensor:
    """[d, d] LEACE's linear eraser E = W⁺uuᵀW for the forget (z = 1) / retain (z = 0) label (module docstring).

    Σ is the Ledoit–Wolf shrunk covariance, (1 − a)·Σ̂ + a·(tr Σ̂ / d)·I with scikit-learn's optimal a (the
    reference implementation shrinks too): with few tokens Σ̂ is (nearly) singular, W = Σ^(−1/2) blows up along
    its near-null directions and so can E (on the cloze task, ~500 answer tokens in 576 dimensions, unshrunk LEACE
    took perplexity 31 → 5·10⁶). Shrinkage keeps E a bounded rank-1 projection that equalises the class means
    (they need only E·Cov(y, z) = Cov(y, z), true for any invertible W)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = torch.cat([y_forget, y_retain])
    z = torch.cat([torch.ones(len(y_forget)), torch.zeros(len(y_retain))]).to(x)
    xc = x - x.mean(0)
    a = float(ledoit_wolf_shrinkage(xc.cpu().numpy(), assume_centered=True))
    sigma = xc.T @ xc / len(x)
    sigma = (1 - a) * sigma + a * torch.trace(sigma) / len(sigma) * torch.eye(len(sigma), dtype=x.dtype, device=x.device)
    cov_xz = xc.T @ (z - z.mean()) / len(x)
    evals, evecs = torch.linalg.eigh(sigma)
    ok = evals > eps * evals.max()
    q, lam = evecs[:, ok], evals[ok]
    w = q @ torch.diag(lam.rsqrt()) @ q.T
    w_pinv = q @ torch.diag(lam.sqrt()) @ q.T
    u = w @ cov_xz
    if u.norm() == 0:
        return torch.zeros_like(sigma)
    u = u / u.norm()
    return w_pinv @ torch.outer(u, u) @ w


@torch.no_grad()
def apply_out(model, layer: int, erase: Tensor) -> None:
    """W_out ← (I − erase)·W_out (and the bias alike) for the MLP output map of ``layer``."""
    from ..safety.refusal import writer

    m = writer(model, model.hf, f"mlp_out.{layer}")
    keep = (torch.eye(len(erase), dtype=torch.float64) - erase)
    if isinstance(m, torch.nn.Linear):  # y = W x + b, W [d, in]
        m.weight.copy_((keep.to(m.weight.device) @ m.weight.double()).to(m.weight.dtype))
    else:  # GPT-2 Conv1D: y = x W + b, W [in, d]
        m.weight.copy_((m.weight.double() @ keep.T.to(m.weight.device)).to(m.weight.dtype))
    if getattr(m, "bias", None) is not None:
        m.bias.copy_((keep.to(m.bias.device) @ m.bias.double()).to(m.bias.dtype))


def edit(model, task: Task, cfg: UnlearnConfig, stats: tuple[dict, dict] | None = None) -> Outcome:
    """Apply a training-free edit (``manifold`` or ``leace``) to the MLP output maps of ``cfg.edit_layers``;
    ``stats``: the forget and retain :func:`mlp_outputs` when already read (several strengths of one edit)."""
    if not task.forget or not task.retain:
        raise UnlearnError(f"the {cfg.method} edit needs forget and retain rows", "use a task with both")
    t0 = time.perf_counter()
    layers = layers_of(cfg.edit_layers, model.n_layers)
    yf, yr = stats or (mlp_outputs(model, task.forget, layers), mlp_outputs(model, task.retain, layers))
    removed = {}
    for l in layers:
        erase = (manifold_projector(yf[l], yr[l], cfg.rank, cfg.retain_energy) if cfg.method == "manifold"
                 else leace_eraser(yf[l], yr[l]))
        apply_out(model, l, erase)
        removed[l] = round(float(torch.trace(erase).item()), 3)
    n_params = sum(p.numel() for p in model.hf.parameters())
    tokens = sum(len(r[0]) for r in task.forget) + sum(len(r[0]) for r in task.retain)
    return Outcome(method=cfg.method, seconds=round(time.perf_counter() - t0, 2), flops=float(2 * n_params * tokens),
                   loss=[], stopped=None, layers=layers, removed=removed,
                   **({"rank": cfg.rank, "retain_energy": cfg.retain_energy} if cfg.method == "manifold" else {}))


def clamped(model, task: Task, cfg: UnlearnConfig, prepared: tuple | None = None) -> Outcome:
    """SAE clamping (:mod:`llmri.unlearning.clamp`) attached to ``model``; ``prepared``: :func:`~llmri.unlearning.
    clamp.prepare`'s SAE, features and cost when already made (several strengths of one clamp)."""
    from .clamp import clamp, prepare

    sae, feats, cost = prepared or prepare(model, task, cfg)
    clamp(model, sae, feats, cfg.sae_clamp)
    return Outcome(method="sae", seconds=round(cost["seconds"], 2), flops=float(cost["flops"]), loss=[], stopped=None,
                   point=feats.point, clamp=cfg.sae_clamp, features=feats.ids, forget_freq=feats.forget_freq,
                   retain_freq=feats.retain_freq, trained_sae=not cfg.sae)


def unlearn_model(model, task: Task, cfg: UnlearnConfig, *, on_step: Callable[[int], None] | None = None,
                  stats: tuple[dict, dict] | None = None, prepared: tuple | None = None) -> Outcome:
    """Unlearn ``task.forget`` from ``model`` in place with ``cfg.method``; see the module docstring."""
    if cfg.method == "sae":
        return clamped(model, task, cfg, prepared)
    if cfg.method in EDIT_METHODS:
        return edit(model, task, cfg, stats)
    return fine_tune(model, task, cfg, on_step=on_step)


__all__ = ["METHODS", "LOSS_METHODS", "EDIT_METHODS", "UnlearnConfig", "Outcome", "unlearn_model", "fine_tune",
           "edit", "manifold_projector", "leace_eraser", "apply_out", "layers_of"]
