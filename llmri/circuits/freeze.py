"""Freeze attention patterns and normalisation denominators at their values on a recorded forward pass.

With both frozen, everything between the MLPs is linear in the residual stream: attention is a fixed mixing
of values across positions and each norm is ``x ↦ γ ⊙ (x − mean?) / σ + β`` with σ a constant. This is
what makes the replacement model linear in its features (attribution) and what "attention frozen"
interventions mean.

* Attention: the model's attention function (``sdpa``/``eager``, looked up through transformers'
  ``AttentionInterface`` at every call) is wrapped once; for modules being frozen it swaps the query and
  key for the recorded ones (detached), so the softmax pattern is the recorded one while values, output
  projection and gradients through them are live. Every HF family that dispatches attention through the
  interface (Llama/Mistral/Qwen/Gemma/GPT-2/GPT-NeoX) is covered by the same code.
* Norms: a forward hook on each norm module (the adapter's block norms, Gemma's post-norms, the final norm)
  records σ and, when frozen, recomputes the output with the recorded σ (in fp32).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import UnsupportedArchitectureError

_ACTIVE: dict[int, Freezer] = {}  # id(attention module) -> the freezer handling it
_WRAPPED: set[str] = set()


def _install_attention_wrapper(impl: str) -> None:
    """Wrap the attention implementation ``impl`` once per process (a no-op for modules not being frozen)."""
    if impl in _WRAPPED:
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    original = ALL_ATTENTION_FUNCTIONS._global_mapping.get(impl)

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        freezer = _ACTIVE.get(id(module))
        if freezer is not None:
            query, key = freezer._qk(module, query, key)
        fn = original or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query, key, value, attention_mask, *args, **kwargs)

    AttentionInterface.register(impl, attention)
    _WRAPPED.add(impl)


def norm_modules(model) -> list[nn.Module]:
    """Every normalisation the residual stream passes through, in forward order."""
    a, mods = model.adapter, []
    for block in model.blocks:
        for path in (a.attn_norm, a.attn_out, a.mlp_norm, a.mlp_out):
            m = block.get_submodule(path)
            if _is_norm(m) and m not in mods:
                mods.append(m)
    mods.append(model.hf.get_submodule(a.final_norm))
    return mods


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")


def _norm_affine(m: nn.Module, d: int, device) -> tuple[bool, float, Tensor, Tensor | None]:
    """(centred, eps, γ_eff, β) of a norm module: y = γ_eff ⊙ x_c / sqrt(mean(x_c²) + eps) + β."""
    if isinstance(m, nn.LayerNorm):
        g = m.weight.float() if m.weight is not None else torch.ones(d, device=device)
        return True, m.eps, g, None if m.bias is None else m.bias.float()
    eps = getattr(m, "variance_epsilon", getattr(m, "eps", 1e-6))
    w = getattr(m, "weight", None)
    g = torch.ones(d, device=device) if w is None else w.float()
    if type(m).__name__.startswith("Gemma"):  # Gemma's RMSNorm scales by (1 + weight)
        g = 1.0 + g
    return False, float(eps), g, None


class Freezer:
    """Record attention queries/keys and norm denominators once, then replay them.

    ``with f.record(): model(...)`` stores them; ``with f.frozen(): model(...)`` uses them (a batch of
    several copies of the recorded prompt is fine: recorded tensors broadcast over the batch)."""

    def __init__(self, model):
        self.model = model
        self.attn = [block.get_submodule(model.adapter.attn) for block in model.blocks]
        self.norms = norm_modules(model)
        self.qk: dict[int, tuple[Tensor, Tensor]] = {}
        self.sigma: dict[int, Tensor] = {}
        self._mode = "off"
        _install_attention_wrapper(model.hf.config._attn_implementation or "eager")

    # ------------------------------------------------------------ attention
    def _qk(self, module, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        if self._mode == "record":
            self.qk[id(module)] = (query.detach(), key.detach())
            return query, key
        q, k = self.qk[id(module)]
        return q.expand(query.shape[0], *q.shape[1:]), k.expand(key.shape[0], *k.shape[1:])

    # ------------------------------------------------------------ norms
    def _norm_hook(self, module, args, output):
        x = args[0] if args else None
        if x is None:
            raise UnsupportedArchitectureError("a norm module was called without a positional input",
                                               "freezing norms needs norms called as module(x)")
        centred, eps, g, b = _norm_affine(module, x.shape[-1], x.device)
        xf = x.float()
        xc = xf - xf.mean(-1, keepdim=True) if centred else xf
        if self._mode == "record":
            sigma = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            y = xc / sigma * g + (0 if b is None else b)
            out = output[0] if isinstance(output, tuple) else output
            if not torch.allclose(y.to(out.dtype), out, rtol=1e-3, atol=1e-3 * out.abs().max().item() + 1e-6):
                raise UnsupportedArchitectureError(
                    f"llmri cannot reproduce the norm {type(module).__name__} as γ·x/σ(+β)",
                    "add its formula to llmri/circuits/freeze.py:_norm_affine")
            self.sigma[id(module)] = sigma.detach()
            return None
        y = xc / self.sigma[id(module)] * g + (0 if b is None else b)
        return y.to(x.dtype)

    # ------------------------------------------------------------ contexts
    @contextmanager
    def _active(self, mode: str, norms: bool = True) -> Iterator[Freezer]:
        if self._mode != "off":
            raise RuntimeError("a Freezer is already active")
        self._mode = mode
        handles = [m.register_forward_hook(self._norm_hook) for m in self.norms] if norms else []
        for m in self.attn:
            _ACTIVE[id(m)] = self
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for m in self.attn:
                _ACTIVE.pop(id(m), None)
            self._mode = "off"

    def record(self):
        """Context: forward passes inside it record queries, keys and σ (values are unchanged)."""
        return self._active("record")

    def frozen(self, norms: bool = True):
        """Context: forward passes inside it use the recorded patterns and (``norms``) σ; gradients stop there."""
        if not self.qk or not self.sigma:
            raise RuntimeError("record a forward pass before freezing")
        return self._active("frozen", norms)
