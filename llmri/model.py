"""``load_model(spec)`` → :class:`Model`: a Hugging Face causal LM, its tokenizer and its hook points.

``spec`` is a bundled name (``smollm2-135m-instruct``, ``gemma3-270m``, ``qwen2.5-coder-0.5b-instruct``), a local HF folder, a ``.gguf``
file, or a hub id (the normal ``from_pretrained`` path; it needs the network). GGUF files are dequantised
once into an ordinary HF folder under ``$LLMRI_CACHE/models`` (with a sha256 manifest checked on load).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import hookpoints
from .adapters import Adapter, adapter_for
from .assets import ASSETS, asset_path, cache_dir, digest
from .atomic import atomic_path, write_json
from .errors import ChecksumError, ContextLengthError, UnknownModelError
from .progress import say

DEFAULT_MODEL = "smollm2-135m-instruct"
BUNDLED = {"smollm2-135m-instruct": "smollm2-135m-instruct.gguf", "gemma3-270m": "gemma3-270m.gguf",
           "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct.gguf"}
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "gemma3": "gemma3-270m", "qwen": "qwen2.5-coder-0.5b-instruct"}
MANIFEST = "llmri-manifest.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class Batch(NamedTuple):
    """Token ids [batch, seq] and attention mask (1 = real token; right padding)."""

    input_ids: Tensor
    attention_mask: Tensor


class Model:
    """A loaded causal LM with canonical hook points. ``hf`` is the untouched transformers model."""

    def __init__(self, hf: nn.Module, tokenizer, name: str, source: str = ""):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.config = hf.config
        self.adapter: Adapter = adapter_for(self.config)
        cfg = self.config
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.d_mlp: int = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * self.d_model
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.vocab_size: int = cfg.vocab_size
        self.max_context: int = getattr(cfg, "max_position_embeddings", None) or 2048
        self._points = hookpoints.all_points(self.adapter, self.n_layers)
        self._sites: dict[str, hookpoints.Site] = {}

    # ------------------------------------------------------------ hook points
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.get_submodule(self.adapter.blocks)

    def hook_points(self) -> list[str]:
        """All canonical hook points in forward order."""
        return list(self._points)

    def resolve(self, name: str) -> str:
        """Canonical name for any accepted spelling (raises :class:`UnknownHookPointError`)."""
        point = hookpoints.canonical(name, self.adapter, self.n_layers)
        if point not in self._points:
            hookpoints.site(point, self.adapter, self.hf, self.n_layers)  # raises with the reason
        return point

    def site(self, point: str) -> hookpoints.Site:
        if point not in self._sites:
            self._sites[point] = hookpoints.site(self.resolve(point), self.adapter, self.hf, self.n_layers)
        return self._sites[point]

    def capture(self, input_ids: Tensor, points: Sequence[str], **kwargs) -> dict[str, Tensor]:
        """See :func:`llmri.hooks.capture`."""
        from .hooks import capture

        return capture(self, input_ids, points, **kwargs)

    def intervene(self, edits: Mapping) -> AbstractContextManager[None]:
        """See :func:`llmri.hooks.intervene`."""
        from .hooks import intervene

        return intervene(self, edits)

    # ------------------------------------------------------------ tokens
    @cached_property
    def bos_id(self) -> int:
        """The token that starts a document/window: the tokenizer's own BOS if it adds one, else
        ``<|endoftext|>`` if the vocabulary has it (SmolLM2, GPT-2, Pythia, Qwen), else BOS, else EOS."""
        tok = self.tokenizer
        auto = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        if len(auto) > len(plain) and auto[0] != plain[0]:
            return auto[0]
        eot = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else None
        for candidate in (eot, tok.bos_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        raise UnknownModelError("the tokenizer has no BOS, EOS or <|endoftext|> token", "pass prepend_bos=False")

    @cached_property
    def special_ids(self) -> set[int]:
        """Ids of special tokens (BOS/EOS/separators/chat markers): excluded from statistics by default."""
        return set(self.tokenizer.all_special_ids) | {self.bos_id}

    def tokenize(self, texts: str | Sequence[str], *, prepend_bos: bool = True, chat: bool = False,
                 max_length: int | None = None, pad_left: bool = False) -> Batch:
        """Token ids for raw texts (``bos_id`` prepended) or, with ``chat=True``, user turns formatted with
        the model's chat template (generation prompt appended). Right-padded (left with ``pad_left``, for
        batched generation)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for text in texts:
            if chat:
                ids = self.chat_ids(text)
            else:
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids = [self.bos_id, *ids] if prepend_bos else ids
            rows.append(ids[:max_length] if max_length else ids)
        self.check_context(max(len(r) for r in rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.bos_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if pad_left else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
        return Batch(ids, mask)

    def chat_ids(self, user_message: str) -> list[int]:
        """A single user turn through the chat template (falls back to the plain text for base models)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return [self.bos_id, *self.tokenizer(user_message, add_special_tokens=False)["input_ids"]]
        out = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def token_strings(self, ids: Sequence[int] | Tensor) -> list[str]:
        """Each token id decoded on its own (for heatmap labels)."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def check_context(self, length: int) -> None:
        if length > self.max_context:
            raise ContextLengthError(
                f"context of {length} tokens is longer than {self.name}'s limit of {self.max_context}",
                f"use a context length ≤ {self.max_context}",
            )

    # ------------------------------------------------------------ card
    def card(self) -> dict:
        """Architecture summary (JSON-serialisable)."""
        n_params = sum(p.numel() for p in self.hf.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "architecture": type(self.hf).__name__,
            "family": self.adapter.family,
            "model_type": self.config.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "vocab_size": self.vocab_size,
            "max_context": self.max_context,
            "n_params": n_params,
            "tied_embeddings": bool(getattr(self.config, "tie_word_embeddings", False)),
            "parallel_blocks": self.adapter.parallel,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "bos": self.tokenizer.convert_ids_to_tokens(self.bos_id),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "hook_points_per_layer": [k for k in hookpoints.PER_LAYER if f"{k}.0" in self._points],
            "hook_points": self.hook_points(),
        }


# ---------------------------------------------------------------- loading


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
               source: str | os.PathLike | None = None) -> Model:
    """Load a causal LM. ``source`` provides a bundled model's package file(s) by hand (see ``llmri fetch``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _dtype(dtype)
    dev = _device(device)
    spec = ALIASES.get(spec, spec)
    folder, name = _folder(spec, source)
    target = str(folder) if folder is not None else spec
    try:
        with _quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise UnknownModelError(
            f"could not load model '{spec}': {reason}",
            f"use a bundled name ({', '.join(BUNDLED)}), a local HF folder, a .gguf file, or a hub id with network access",
        ) from None
    hf.requires_grad_(False)
    return Model(hf.to(dev), tokenizer, name=name, source=target)


@contextmanager
def _quiet_transformers():
    """Hide transformers' per-load 'Loading weights' bars (conversion keeps its own bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise UnknownModelError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UnknownModelError(f"unknown device '{device}'", "use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnknownModelError("device 'cuda' was requested but torch sees no CUDA GPU", "use --device cpu")
    return dev


def _folder(spec: str, source) -> tuple[Path | None, str]:
    """Local HF folder for a spec (converting GGUF as needed), or (None, spec) for a hub id."""
    if spec in BUNDLED:
        gguf = asset_path(BUNDLED[spec], source=source)
        return converted(gguf, cache_dir() / "models" / spec), spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, path.name
    if path.is_file() and path.suffix == ".gguf":
        sha = digest(path)
        bundled = [n for n, a in BUNDLED.items() if ASSETS[a].sha256 == sha]  # the same file: reuse its folder
        name = bundled[0] if bundled else f"gguf-{sha[:16]}"
        return converted(path, cache_dir() / "models" / name), bundled[0] if bundled else path.stem
    if path.suffix == ".gguf" or spec.startswith((".", "/", "~")) or path.exists():
        raise UnknownModelError(f"model path '{spec}' does not exist or is not a folder/.gguf file",
                                "check the path, or use a bundled name: " + ", ".join(BUNDLED))
    return None, spec


def converted(gguf: Path, folder: Path) -> Path:
    """Dequantise a GGUF file into an HF folder once; afterwards verify the folder against its manifest."""
    manifest = folder / MANIFEST
    if manifest.exists():
        import json

        recorded = json.loads(manifest.read_text())
        for fname, sha in recorded["files"].items():
            f = folder / fname
            if not f.exists() or digest(f) != sha:
                raise ChecksumError(
                    f"converted model file {f} is missing or corrupted (sha256 mismatch)",
                    f"delete {folder} and run again to re-convert it",
                )
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnknownModelError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)",
                                    "give a .gguf model file, an HF folder or a bundled name: " + ", ".join(BUNDLED))
    say(f"llmri: converting {gguf.name} to a Hugging Face folder in {folder} (once)")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, EOFError) as err:  # a truncated or unsupported GGUF
        reason = " ".join(str(err).split())[:200]
        raise UnknownModelError(f"cannot convert {gguf}: {type(err).__name__}: {reason}",
                                "check that the file is a complete GGUF of a supported architecture") from None
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    with atomic_path(folder, directory=True) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MANIFEST, {"gguf": gguf.name, "gguf_sha256": digest(gguf), "files": files})
    return folder
