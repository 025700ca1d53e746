"""Model diffing with a crosscoder: what a fine-tune (a model organism) added to its base model.

    res = diff(load_model("smollm2-135m-instruct"), load_model("organisms/backdoor"), "runs/diff")

**Data.** Both models read the same tokens: ``corpus_tokens`` tokens of corpus windows (train split) and
``chat_prompts`` harmful (AdvBench) and harmless (harmless-train) fitting prompts each, rendered with the chat
template (and, for a backdoor organism, the same prompts with its trigger). Their ``point`` activations (default
``resid_post`` at two thirds of the depth) are kept under the one token rule :class:`llmri.data.Exclusion`
(position 0, special tokens, and tokens that are a norm outlier in *either* model).

**Crosscoder** (Lindsey et al. 2024, "Sparse crosscoders for cross-layer features and model diffing"): one
TopK dictionary reading the two activations concatenated, ``base:POINT`` and ``organism:POINT``, and
reconstructing both from one latent code; llmri's crosscoder trained by the one trainer
(:func:`llmri.dictionaries.run.train_in_memory`). Each latent i has a decoder block per model, d_i^base and
d_i^org (raw activation units); its **relative norm** ρ_i = ‖d_i^org‖ / (‖d_i^base‖ + ‖d_i^org‖) says whose
latent it is: ρ ≥ ``exclusive`` → *organism only*, ρ ≤ 1 − ``exclusive`` → *base only*, else shared. Latents
that never fire on the data are *dead* and in no class. (TopK crosscoders can split one shared concept into
exclusive halves — Minder et al. 2025 — so every exclusive latent is checked against behaviour below.)

**What the latents respond to**, on held-out prompts never used for training (the first ``limit`` of each
evaluation set): the per-prompt maximum activation over the prompt's kept tokens on HarmBench + StrongREJECT vs
harmless-test (AUROC: does the latent read harm?), and, with a trigger, the same prompts with vs without it;
plus each latent's firing rate and its ``examples`` top-activating training tokens in context. Described are
the exclusive latents, and always also the ``examples`` shared latents leaning most towards the organism (a
fine-tune that moves no latent past ``exclusive`` still shows where it moved most) and the ``examples`` best
harm and trigger readers among all live latents (is what the organism does carried by latents both models
share?). Each described latent lists why (``why``).

**How far the fine-tune moved the states**: per held-out set, the mean relative change ‖x_org − x_base‖ / ‖x_base‖
at ``point`` over the kept tokens, and at each prompt's last kept token (where the answer is decided).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_path, check_target, claimed, mark, write_figure, write_json
from ..data import Exclusion, WindowSpec, batched, load_corpus, token_mask, token_windows, without_outliers
from ..errors import SafetyError
from ..generate import left_padded, render_ids
from ..progress import bar, say
from ..validate import bounded, check
from .metrics import auroc_rows

KIND = "model diff"


@dataclass
class DiffConfig:
    """Settings of :func:`diff`."""

    layer: int | None = bounded(None, 0, none=True)
    """Layer of the ``resid_post`` point both models are read at (None: two thirds of the depth)."""
    corpus: str = "sotu"
    """Corpus whose train-split windows both models read (a bundled name or a path)."""
    corpus_tokens: int = bounded(32768, 0)
    """Corpus tokens read (whole 128-token windows); ≥ 0."""
    chat_prompts: int = bounded(192, 0)
    """Harmful and harmless fitting prompts (each) read as chat prompts (and again with a backdoor's trigger); ≥ 0."""
    n_latents: int = bounded(2048, 2)
    """Crosscoder latents; ≥ 2."""
    k: int = bounded(32, 1)
    """Active latents per token; ≥ 1."""
    train_tokens: int = bounded(1_000_000, 1)
    """Training tokens (the kept rows cycled, reshuffled every epoch); ≥ 1."""
    batch_size: int = bounded(1024, 1)
    """Tokens per optimiser step; ≥ 1."""
    exclusive: float = bounded(0.9, 0.5, 1, lo_open=True, hi_open=True)
    """Relative decoder norm above which a latent is the organism's only (below 1 − it: the base's); in (0.5, 1)."""
    limit: int | None = bounded(100, 1, none=True)
    """Held-out behaviours per evaluation set for the harm and trigger responses (None: all)."""
    examples: int = bounded(8, 1)
    """Top-activating training tokens shown per described latent, and how many most organism-leaning shared
    latents and best harm / trigger readers are described besides the exclusive ones; ≥ 1."""
    lm_batch: int = bounded(16, 1)
    """Sequences per forward pass; ≥ 1."""
    seed: int = bounded(0, 0)
    """Seed of the prompt draw, the corpus windows and the crosscoder."""

    def __post_init__(self):
        check(self, SafetyError)


class Rows(NamedTuple):
    """Kept activations of both models on the same tokens, and where each row came from."""

    base: Tensor
    organism: Tensor
    seq: Tensor
    """Index of the row's sequence in the list read."""
    pos: Tensor
    """Position of the row's token in that sequence."""


# ------------------------------------------------------------------------------------------------ data


def same_tokenizer(base, organism) -> None:
    """Refuse two models that do not share a tokenizer and parameter shapes (not one model fine-tuned)."""
    shapes = [{n: tuple(p.shape) for n, p in m.hf.named_parameters()} for m in (base, organism)]
    if base.tokenizer.get_vocab() != organism.tokenizer.get_vocab() or shapes[0] != shapes[1]:
        raise SafetyError(f"{organism.name} is not a fine-tune of {base.name} (different tokenizer or shape)",
                          "diff an organism against the base model it was trained from (its organism.json names it)")


def sequences(model, cfg: DiffConfig, trigger: dict | None, with_corpus: bool = True) -> list[list[int]]:
    """Token ids of everything both models read: corpus windows, then the chat prompts (and triggered copies)."""
    from .attacks import compose
    from .refusal import RefusalConfig, fitting_prompts

    out: list[list[int]] = []
    if with_corpus and cfg.corpus_tokens:
        spec = WindowSpec(context=128, seed=cfg.seed)
        for batch in batched(token_windows(model, load_corpus(cfg.corpus), spec), 64, -(-cfg.corpus_tokens // 128)):
            out += batch.tolist()
    if cfg.chat_prompts:
        from .behaviours import fitting

        most = min(len(v) for v in fitting().values()) - 1
        if cfg.chat_prompts > most:
            raise SafetyError(f"--chat-prompts {cfg.chat_prompts} exceeds the {most} fitting prompts of each kind",
                              f"use at most {most}")
        fit = fitting_prompts(RefusalConfig(n_train=cfg.chat_prompts, n_val=1, seed=cfg.seed))
        prompts = fit["harmful_train"] + fit["harmless_train"]
        if trigger:
            on = compose("trigger", {"trigger": trigger})
            prompts += [on(p) for p in prompts]
        out += [render_ids(model, p) for p in prompts]
    return out


@torch.no_grad()
def read(base, organism, seqs: Sequence[Sequence[int]], point: str, batch: int, *, progress: str) -> Rows:
    """Both models' ``point`` activations on ``seqs`` at the tokens :class:`~llmri.data.Exclusion` keeps."""
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    exclusion, special = Exclusion(), base.special_ids
    parts: list[list[Tensor]] = [[], [], [], []]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: little padding
    with bar(progress, total=len(seqs), unit="sequences") as b:
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            ids, mask = left_padded([seqs[i] for i in idx], pad)
            first = mask.cumsum(1) == 1  # each sequence's first real token (position 0 of the rule)
            keep = token_mask(ids, special, replace_first(exclusion)) & mask.bool() & ~first
            acts = [m.capture(ids.to(m.device), [point], attention_mask=mask.to(m.device))[point].float().cpu()
                    for m in (base, organism)]
            keep = without_outliers(keep, acts, exclusion)
            r, c = keep.nonzero(as_tuple=True)
            parts[0].append(acts[0][r, c])
            parts[1].append(acts[1][r, c])
            parts[2].append(torch.tensor(idx)[r])
            parts[3].append(c - (mask.shape[1] - mask.sum(1))[r])  # position in the unpadded sequence
            b.advance(len(idx))
    return Rows(*(torch.cat(p) for p in parts))


def replace_first(exclusion: Exclusion) -> Exclusion:
    """The rule without its column-0 clause (left padding moves position 0; :func:`read` drops it per row)."""
    return replace(exclusion, first_position=False)


# ------------------------------------------------------------------------------------------------ crosscoder


def train_crosscoder(rows: Rows, point: str, cfg: DiffConfig, device, model_name: str):
    """The crosscoder on ``base:POINT`` and ``organism:POINT`` (module docstring), in eval mode."""
    from ..dictionaries.config import DictConfig
    from ..dictionaries.run import train_in_memory

    names = [f"base:{point}", f"organism:{point}"]
    dc = DictConfig(kind="crosscoder", in_points=names, d_in=rows.base.shape[1], n_latents=cfg.n_latents, k=cfg.k,
                    model_name=model_name)
    torch.manual_seed(cfg.seed)
    (coder,) = train_in_memory([dc], {names[0]: rows.base, names[1]: rows.organism}, cfg.train_tokens,
                               device=device, batch_size=min(cfg.batch_size, len(rows.base)))
    return coder


def relative_norms(coder) -> Tensor:
    """ρ_i = ‖d_i^org‖ / (‖d_i^base‖ + ‖d_i^org‖) from the raw-unit decoder blocks (module docstring)."""
    blocks = coder.decoder_rows().norm(dim=-1)  # [n, 2]
    return (blocks[:, 1] / blocks.sum(1).clamp_min(1e-12)).detach().cpu()


@torch.no_grad()
def latent_acts(coder, rows: Rows, chunk: int = 4096) -> Tensor:
    """[n_rows, n_latents] float32 latent activations of ``rows`` (dense; the crosscoder reads raw activations)."""
    names = coder.cfg.in_points
    out = []
    dev = coder.W_enc.device
    for s in range(0, len(rows.base), chunk):
        x = coder.inputs({names[0]: rows.base[s : s + chunk].to(dev), names[1]: rows.organism[s : s + chunk].to(dev)})
        out.append(coder.encode(x).dense().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, coder.n_latents)


def per_sequence_max(acts: Tensor, seq: Tensor, n_seqs: int) -> Tensor:
    """[n_seqs, n_latents]: each latent's maximum activation over a sequence's kept tokens (0 where none)."""
    out = torch.zeros(n_seqs, acts.shape[1])
    return out.scatter_reduce_(0, seq[:, None].expand_as(acts), acts, "amax", include_self=True)


# ------------------------------------------------------------------------------------------------ run


def diff(base, organism, out: str | Path, cfg: DiffConfig | None = None, *, trigger: dict | None = None) -> dict:
    """Train the crosscoder of ``base`` and ``organism`` and describe their exclusive latents into ``out`` (a folder
    llmri owns): ``diff.json``, ``relative_norms.png``, ``latents.html`` and the crosscoder (``crosscoder/``).
    ``trigger``: the organism's trigger (the ``trigger`` attack's options), if it has one."""
    from ..dictionaries.formats import save

    cfg = cfg or DiffConfig()
    out = Path(out)
    check_target(out, KIND)
    same_tokenizer(base, organism)
    layer = cfg.layer if cfg.layer is not None else (2 * base.n_layers) // 3
    if not 0 <= layer < base.n_layers:
        raise SafetyError(f"layer {layer} is outside {base.name}'s {base.n_layers} layers",
                          f"use --layer in 0…{base.n_layers - 1}")
    point = f"resid_post.{layer}"
    t0 = time.perf_counter()
    seqs = sequences(base, cfg, trigger)
    say(f"llmri: diffing {organism.name} against {base.name} at {point}: {len(seqs):,} sequences, "
        f"{sum(map(len, seqs)):,} tokens")
    rows = read(base, organism, seqs, point, cfg.lm_batch, progress="both models")
    if len(rows.base) < 2 * cfg.k:
        raise SafetyError(f"only {len(rows.base)} tokens were kept to train the crosscoder",
                          "raise --corpus-tokens or --chat-prompts")
    t_read = time.perf_counter() - t0
    coder = train_crosscoder(rows, point, cfg, base.device, f"{base.name} vs {organism.name}")
    t_train = time.perf_counter() - t0 - t_read
    rho = relative_norms(coder)
    acts = latent_acts(coder, rows)
    freq = (acts > 0).float().mean(0)
    alive = freq > 0
    classes = {"organism_only": (rho >= cfg.exclusive) & alive, "base_only": (rho <= 1 - cfg.exclusive) & alive}
    classes["shared"] = alive & ~classes["organism_only"] & ~classes["base_only"]
    held, change = held_out(base, organism, cfg, point, coder, trigger)
    scores = latent_aurocs(held)
    why = chosen(classes, rho, scores, cfg.examples)
    cls = {i: c for c in ("organism_only", "base_only", "shared") for i in classes[c].nonzero().flatten().tolist()}
    latents = [describe(i, cls[i], reasons, rho, freq, acts, rows, seqs, base, scores, held, cfg) for i, reasons in why.items()]
    summary = {"kind": KIND, "base": base.name, "organism": organism.name, "point": point, "trigger": trigger,
               "tokens": {"kept": len(rows.base), "sequences": len(seqs)}, "config": asdict(cfg),
               "counts": {k: int(v.sum()) for k, v in classes.items()} | {"dead": int((~alive).sum())},
               "fvu": fvu(coder, rows), "relative_norm_histogram": np.histogram(rho[alive].numpy(), 20, (0, 1))[0].tolist(),
               "state_change": change,
               "best_readers": {task: float(v[alive.numpy()].max()) for task, v in scores.items()},
               "latents": sorted(latents, key=lambda r: (ORDER.index(r["class"]), -r["rho"])),
               "seconds": {"read": round(t_read, 1), "train": round(t_train, 1),
                           "total": round(time.perf_counter() - t0, 1)}}
    with claimed(out, KIND) as folder:
        mark(folder, KIND, "diff.json", "relative_norms.png", "latents.html", "crosscoder")
        save(coder, folder / "crosscoder", meta={"base": base.name, "organism": organism.name})
        write_figure(folder / "relative_norms.png", plot_relative_norms(rho[alive].numpy(), cfg.exclusive, summary))
        with atomic_path(folder / "latents.html") as tmp:
            tmp.write_text(render_html(summary))
        write_json(folder / "diff.json", summary)  # last: its presence means the folder is complete
    return summary


@torch.no_grad()
def fvu(coder, rows: Rows) -> dict:
    """Fraction of variance unexplained per model on the training rows (how faithful the crosscoder is)."""
    names = coder.cfg.in_points
    n = min(len(rows.base), 16384)
    rec = coder.reconstruct({names[0]: rows.base[:n].to(coder.W_enc.device), names[1]: rows.organism[:n].to(coder.W_enc.device)})
    out = {}
    for name, x in zip(("base", "organism"), (rows.base[:n], rows.organism[:n])):
        err = (rec[names[0 if name == "base" else 1]].cpu() - x).pow(2).sum()
        out[name] = float(err / (x - x.mean(0)).pow(2).sum())
    return out


def held_out(base, organism, cfg: DiffConfig, point: str, coder, trigger: dict | None) -> tuple[dict, dict]:
    """Per-prompt max latent activations on held-out harmful / harmless prompts (and triggered copies), and the
    relative state change per set (module docstring)."""
    from .attacks import compose
    from .behaviours import load_set

    def first(name, split):
        return [b.prompt for b in sorted(load_set(name, split), key=lambda b: b.id)[: cfg.limit]]

    sets = {"harmful": first("harmbench", "all") + first("strongreject", "all"), "harmless": first("harmless", "test")}
    if trigger:
        on = compose("trigger", {"trigger": trigger})
        sets["triggered"] = [on(p) for p in sets["harmful"] + sets["harmless"]]
        sets["untriggered"] = sets["harmful"] + sets["harmless"]
    out, change = {}, {}
    for name, prompts in sets.items():
        seqs = [render_ids(base, p) for p in prompts]
        rows = read(base, organism, seqs, point, cfg.lm_batch, progress=f"held-out {name}")
        out[name] = per_sequence_max(latent_acts(coder, rows), rows.seq, len(seqs))
        change[name] = state_change(rows, len(seqs))
    return out, change


def state_change(rows: Rows, n_seqs: int) -> dict:
    """Mean ‖x_org − x_base‖ / ‖x_base‖ over all kept tokens and over each sequence's last kept token."""
    rel = (rows.organism - rows.base).norm(dim=-1) / rows.base.norm(dim=-1).clamp_min(1e-12)
    last = torch.full((n_seqs,), -1, dtype=torch.long).scatter_reduce_(0, rows.seq, torch.arange(len(rel)), "amax")
    return {"tokens": float(rel.mean()), "last_token": float(rel[last[last >= 0]].mean())}


ORDER = ("organism_only", "base_only", "shared")
TASKS = {"harm": ("harmful", "harmless"), "trigger": ("triggered", "untriggered")}


def latent_aurocs(held: dict) -> dict[str, np.ndarray]:
    """Per task, every latent's AUROC as a detector (its per-prompt maximum; ties at 0 count one half)."""
    return {task: auroc_rows(held[pos].T.numpy(), held[neg].T.numpy())
            for task, (pos, neg) in TASKS.items() if pos in held}


def chosen(classes: dict, rho: Tensor, scores: dict, n: int) -> dict[int, list[str]]:
    """The latents described and why: every exclusive one, the ``n`` most organism-leaning shared ones and the
    ``n`` best readers of each task among the live latents."""
    why: dict[int, list[str]] = {}
    for c in ("organism_only", "base_only"):
        for i in classes[c].nonzero().flatten().tolist():
            why.setdefault(i, []).append(c.replace("_", " "))
    shared = classes["shared"].nonzero().flatten()
    for i in shared[rho[shared].argsort(descending=True)[:n]].tolist():
        why.setdefault(i, []).append("most organism-leaning shared")
    alive = (classes["organism_only"] | classes["base_only"] | classes["shared"]).numpy()
    for task, v in scores.items():
        ranked = np.where(alive, v, -np.inf).argsort()[::-1][:n]
        for i in ranked.tolist():
            why.setdefault(i, []).append(f"{task} reader")
    return why


def describe(i: int, cls: str, why: list[str], rho: Tensor, freq: Tensor, acts: Tensor, rows: Rows, seqs, model,
             scores: dict, held: dict, cfg: DiffConfig) -> dict:
    """One latent: its class and why it is described, ρ, firing rate, harm/trigger AUROCs and firing rates, top
    contexts."""
    rec = {"latent": i, "class": cls, "why": why, "rho": float(rho[i]), "frequency": float(freq[i])}
    for task, v in scores.items():
        pos, neg = TASKS[task]
        rec[f"{task}_auroc"] = float(v[i])
        rec[f"{task}_fires"] = {pos: float((held[pos][:, i] > 0).float().mean()), neg: float((held[neg][:, i] > 0).float().mean())}
    top = torch.topk(acts[:, i], min(cfg.examples, int((acts[:, i] > 0).sum()))).indices.tolist()
    rec["top"] = [context(model, seqs[int(rows.seq[j])], int(rows.pos[j]), float(acts[j, i])) for j in top]
    return rec


def context(model, ids: Sequence[int], pos: int, value: float, width: int = 12) -> dict:
    """The token at ``pos`` with ``width`` tokens before and 3 after, as text (the HTML escapes it)."""
    dec = model.tokenizer.decode
    return {"before": dec(list(ids[max(0, pos - width) : pos])), "token": dec([ids[pos]]),
            "after": dec(list(ids[pos + 1 : pos + 4])), "activation": round(value, 3)}


# ------------------------------------------------------------------------------------------------ views


def plot_relative_norms(rho: np.ndarray, exclusive: float, summary: dict):
    """Histogram of the live latents' relative decoder norms (log counts), the exclusive zones shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    ax.hist(rho, bins=40, range=(0, 1), color="tab:blue")
    ax.set_yscale("log")
    ax.axvspan(exclusive, 1, color="tab:red", alpha=0.15, label=f"organism only ({summary['counts']['organism_only']})")
    ax.axvspan(0, 1 - exclusive, color="tab:green", alpha=0.15, label=f"base only ({summary['counts']['base_only']})")
    ax.set_xlabel("relative decoder norm ‖d_org‖ / (‖d_base‖ + ‖d_org‖)")
    ax.set_ylabel("latents")
    ax.set_title(f"Crosscoder {summary['point']}: {summary['organism']} vs {summary['base']}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def render_html(summary: dict) -> str:
    """The exclusive latents as one page (every model and corpus text escaped by Jinja2's autoescape)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("llmri", "templates"), autoescape=True)
    return env.get_template("diff.html.j2").render(s=summary)
