"""Capture and intervene: plain PyTorch forward hooks at canonical hook points.

``capture`` records activations and, by default, stops the forward pass (by raising inside the last hook)
as soon as every requested point has been seen, so asking for ``resid_post.5`` never runs layers 6+ or the
unembedding. ``intervene`` is a context manager that edits activations in place of the original ones for
every forward pass (and ``generate`` step) run inside it; capture inside it sees the edited values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from .errors import InterventionError
from .hookpoints import Site, order

if TYPE_CHECKING:
    from .model import Model

Positions = Union[None, int, slice, Sequence[int], Tensor]


# ---------------------------------------------------------------- hook plumbing


def _get(value):
    return value[0] if isinstance(value, tuple) else value


def _put(value, new: Tensor):
    return (new, *value[1:]) if isinstance(value, tuple) else new


def attach(site: Site, fn: Callable[[Tensor], Tensor | None]):
    """Register ``fn`` on a site; ``fn`` sees the activation and may return a replacement. Returns the handle."""
    if site.io == "out":

        def out_hook(_module, _args, output):
            new = fn(_get(output))
            return None if new is None else _put(output, new)

        return site.module.register_forward_hook(out_hook)

    def in_hook(_module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return site.module.register_forward_pre_hook(in_hook, with_kwargs=True)


class _StopForward(Exception):
    """Raised inside a hook once everything requested has been captured."""


# ---------------------------------------------------------------- capture


def capture(
    model: Model,
    input_ids: Tensor,
    points: Sequence[str],
    *,
    attention_mask: Tensor | None = None,
    stop_early: bool = True,
    grad: bool = False,
) -> dict[str, Tensor]:
    """Run ``input_ids`` [batch, seq] through the model and return ``{requested name: activation}``.

    Activations are [batch, seq, d] in the model's dtype and device. With ``stop_early`` (default) the
    forward pass ends right after the last requested point is computed. ``grad=True`` keeps the graph
    (no ``no_grad``, no detach) for attribution-style uses.
    """
    canon = {name: model.resolve(name) for name in points}
    wanted = sorted(set(canon.values()), key=lambda p: order(p, model.n_layers))
    got: dict[str, Tensor] = {}

    def recorder(point: str):
        def fn(x: Tensor):
            got[point] = x if grad else x.detach()
            if stop_early and len(got) == len(wanted):
                raise _StopForward
            return None

        return fn

    handles = [attach(model.site(p), recorder(p)) for p in wanted]
    try:
        with torch.set_grad_enabled(grad):
            model.hf(input_ids=input_ids.to(model.device), attention_mask=_mask(attention_mask, model), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {name: got[p] for name, p in canon.items()}


def _mask(attention_mask: Tensor | None, model: Model) -> Tensor | None:
    return None if attention_mask is None else attention_mask.to(model.device)


# ---------------------------------------------------------------- edits


def _at(x: Tensor, positions: Positions, fn: Callable[[Tensor, object], Tensor]) -> Tensor:
    """Apply ``fn(selected, index)`` to the positions (sequence dim 1) of ``x``; other positions untouched."""
    if positions is None:
        return fn(x, slice(None))
    index = torch.as_tensor(positions, device=x.device) if not isinstance(positions, (int, slice)) else positions
    out = x.clone()
    out[:, index] = fn(x[:, index], index)
    return out


def _like(v: Tensor | float, x: Tensor) -> Tensor:
    return torch.as_tensor(v).to(device=x.device, dtype=x.dtype)


def _values_at(value: Tensor, x_sel: Tensor, index) -> Tensor:
    """A patch value given for the whole sequence ([b, s, d] or [s, d]) is indexed like the activation."""
    value = _like(value, x_sel)
    if value.dim() >= 2 and not (isinstance(index, slice) and index == slice(None)):
        value = value[:, index] if value.dim() == 3 else value[index]
    return value


@dataclass
class Add:
    """x ← x + scale·vector (steering / activation addition)."""

    vector: Tensor
    scale: float = 1.0
    positions: Positions = None

    def __call__(self, x: Tensor) -> Tensor:
        return _at(x, self.positions, lambda s, i: s + self.scale * _values_at(self.vector, s, i))


@dataclass
class Scale:
    """x ← factor·x."""

    factor: float
    positions: Positions = None

    def __call__(self, x: Tensor) -> Tensor:
        return _at(x, self.positions, lambda s, i: s * self.factor)


@dataclass
class Ablate:
    """Zero-ablation (``mean=None``) or mean-ablation (x ← mean)."""

    mean: Tensor | None = None
    positions: Positions = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean is None:
            return _at(x, self.positions, lambda s, i: torch.zeros_like(s))
        return _at(x, self.positions, lambda s, i: _like(self.mean, s).expand_as(s).clone())


@dataclass
class Patch:
    """x ← value (activation patching). ``value`` is [b, s, d], [s, d] (indexed by ``positions``) or [d]."""

    value: Tensor
    positions: Positions = None

    def __call__(self, x: Tensor) -> Tensor:
        return _at(x, self.positions, lambda s, i: _values_at(self.value, s, i).expand_as(s).clone())


@dataclass
class Clamp:
    """Set the component of x along unit(direction) to ``value``: x ← x + (value − x·u)u.

    ``value=0`` is directional ablation (x ← x − uuᵀx).
    """

    direction: Tensor
    value: float = 0.0
    positions: Positions = None

    def __call__(self, x: Tensor) -> Tensor:
        def fn(s: Tensor, _i) -> Tensor:
            u = _like(self.direction, s)
            u = u / u.norm()
            return s + (self.value - s @ u).unsqueeze(-1) * u

        return _at(x, self.positions, fn)


Edit = Callable[[Tensor], Tensor]


@contextmanager
def intervene(model: Model, edits: Mapping[str, Edit | Sequence[Edit]]) -> Iterator[None]:
    """Apply ``{point: edit or [edits]}`` to every forward pass inside the block.

    An edit is any callable activation → activation (``Add``, ``Scale``, ``Ablate``, ``Patch``, ``Clamp``
    or your own). Edits are applied in forward order; several edits at one point compose left to right.
    """
    canon = sorted(((model.resolve(p), e) for p, e in edits.items()), key=lambda pe: order(pe[0], model.n_layers))
    handles = []
    try:
        for point, edit in canon:
            chain = list(edit) if isinstance(edit, (list, tuple)) else [edit]
            handles += _attach_edit(model, point, _compose(point, chain))
        yield
    finally:
        for h in handles:
            h.remove()


def _compose(point: str, chain: list[Edit]) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        for edit in chain:
            y = edit(x)
            if not isinstance(y, Tensor) or y.shape != x.shape:
                raise InterventionError(
                    f"edit {edit!r} at {point} returned {getattr(y, 'shape', type(y))}, expected a tensor of shape {tuple(x.shape)}",
                    "make the edit return an activation of the same shape",
                )
            x = y
        return x

    return fn


def _attach_edit(model: Model, point: str, fn: Callable[[Tensor], Tensor]) -> list:
    """Hooks that make ``point`` take the value ``fn(original)``.

    ``resid_mid`` is a sum inside the block (resid_pre + attn_out) with no module output of its own, so it
    is edited through ``attn_out``: attn_out ← fn(resid_pre + attn_out) − resid_pre.
    """
    if not point.startswith("resid_mid."):
        return [attach(model.site(point), fn)]
    model.site(point)  # raises for parallel blocks
    layer = point.split(".")[1]
    stash: dict[str, Tensor] = {}

    def keep(x: Tensor):
        stash["resid_pre"] = x
        return None

    def edit(a: Tensor) -> Tensor:
        r = stash["resid_pre"]
        return fn(r + a) - r

    return [attach(model.site(f"resid_pre.{layer}"), keep), attach(model.site(f"attn_out.{layer}"), edit)]
