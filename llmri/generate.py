"""Batched greedy chat generation: the model's chat template, left padding, a KV cache, deterministic.

    gens = generate(model, ["How do I bake bread?", conversation, attacked], GenerateConfig(max_new_tokens=64))

A prompt is a user message (str), a list of chat messages (``{"role", "content"}``), or anything with
``messages`` and ``prefill`` (a :class:`llmri.safety.attacks.Attacked`): the text the model continues is the
chat template with its generation prompt, then the prefill. Prompts are batched longest first (padding stays
small) and left-padded; ``transformers``' ``generate`` does the decoding (greedy, KV cache). The answer ends
at the model's end-of-turn token or after ``max_new_tokens``; results come back in the order given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .errors import LlmriError
from .progress import bar
from .validate import bounded, check


class ChatTemplateError(LlmriError):
    """The model has no chat template, so a chat prompt cannot be rendered."""


@dataclass
class GenerateConfig:
    """Settings of :func:`generate`."""

    max_new_tokens: int = bounded(64, 1)
    """Tokens generated at most per prompt; ≥ 1."""
    batch_size: int = bounded(16, 1)
    """Prompts decoded together; ≥ 1."""
    system: str = ""
    """A system message put before every conversation that has none ("" adds none)."""

    def __post_init__(self):
        check(self, LlmriError)


class Generation(NamedTuple):
    """One answer."""

    text: str
    """The generated text after the prompt (and prefill), special tokens removed."""
    tokens: int
    """Tokens generated (up to and including the end-of-turn token)."""
    finished: bool
    """The model ended its turn (False: cut at ``max_new_tokens``)."""


def messages_of(prompt: Any, system: str = "") -> tuple[list[dict[str, str]], str]:
    """(chat messages, prefill) of a prompt (see the module docstring)."""
    if isinstance(prompt, str):
        messages, prefill = [{"role": "user", "content": prompt}], ""
    elif hasattr(prompt, "messages"):
        messages, prefill = list(prompt.messages), getattr(prompt, "prefill", "")
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        messages, prefill = [dict(m) for m in prompt], ""
    else:
        raise LlmriError(f"cannot read a prompt of type {type(prompt).__name__}",
                         "give a user message (str), a list of {role, content} messages or an attacked prompt")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages, prefill


def render_ids(model, prompt: Any, system: str = "") -> list[int]:
    """Token ids of the chat template with its generation prompt, then the prefill."""
    tok = model.tokenizer
    if not getattr(tok, "chat_template", None):
        raise ChatTemplateError(f"{model.name} has no chat template, so chat prompts cannot be rendered",
                                "use an instruct model, or set one: model.tokenizer.chat_template = open(FILE).read() "
                                "(a Jinja template as in the model's tokenizer_config.json)")
    messages, prefill = messages_of(prompt, system)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    return tok(text, add_special_tokens=False)["input_ids"]


def stop_ids(model) -> list[int]:
    """Tokens that end a turn: the tokenizer's EOS, the generation config's EOS ids and ChatML's ``<|im_end|>``."""
    tok, ids = model.tokenizer, set()
    cfg = getattr(model.hf, "generation_config", None)
    for x in (tok.eos_token_id, getattr(cfg, "eos_token_id", None)):
        ids |= set(x) if isinstance(x, (list, tuple)) else {x} if x is not None else set()
    end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    return sorted(ids | ({end} if end is not None else set()))


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] ids, [B, T] attention mask) of token rows padded on the left to the longest (for decoding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[j, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate(model, prompts: Sequence[Any], cfg: GenerateConfig | None = None, *, progress: str = "generation"
             ) -> list[Generation]:
    """Greedy answers to ``prompts`` (see the module docstring), in the order given."""
    cfg = cfg or GenerateConfig()
    rows = [render_ids(model, p, cfg.system) for p in prompts]
    if not rows:
        return []
    model.check_context(max(len(r) for r in rows) + cfg.max_new_tokens)
    stops = stop_ids(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[Generation | None] = [None] * len(rows)
    with bar(progress, total=len(rows), unit="prompts") as b:
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            ids, mask = left_padded([rows[i] for i in idx], pad)
            width = ids.shape[1]
            new = model.hf.generate(ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
                                    max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                                    temperature=None, top_p=None, top_k=None)[:, width:].tolist()
            for j, i in enumerate(idx):
                out[i] = _answer(model, new[j], stops)
            b.advance(len(idx))
    return out


def _answer(model, new: list[int], stops: list[int]) -> Generation:
    end = next((k for k, t in enumerate(new) if t in stops), None)
    kept = new if end is None else new[:end]
    return Generation(model.tokenizer.decode(kept, skip_special_tokens=True), len(new) if end is None else end + 1,
                      end is not None)
