"""Reading a model's intermediate layers through its output: the logit lens and a fitted linear lens.

    lens = fit_linear_lens(model, [15, 21, 27], corpus_windows)      # least squares on general text
    logits = lens.logits(model, 1, resid_post_21)                    # read layer 21 as if it were the last

**Logit lens** (nostalgebraist 2020): ``resid_post.l`` put through the model's final norm and unembedding, as if
the remaining layers did nothing. A plain list of layers is the logit lens wherever a lens is taken.

**Linear lens** (Din et al. 2023, "Jump to Conclusions: Short-Cutting Transformers with Linear
Transformations"): per layer l an affine map A_l h + b_l fitted by least squares to send ``resid_post.l`` to the
last layer's ``resid_post.{L−1}`` on the same tokens, then the final norm and unembedding. Fitted on general
text (the default corpus), it reads what a layer already knows in the output's coordinates better than the
logit lens (which assumes the remaining layers add nothing); as an unlearning attack it is a *trained* linear
probe that never sees the forgotten items. The tuned lens of Belrose et al. (2023) trains the same map for the
KL to the output distribution instead; least squares needs one pass and one solve per layer:

    [A_l; b_l] = (XᵀX + λ·mean(diag XᵀX)·I)⁻¹ XᵀY,   X = [h_l, 1],  Y = h_{L−1},

accumulated in float64 over the kept tokens of :class:`llmri.data.Exclusion` (position 0 and special tokens
are attention sinks whose norms would dominate the squares), with a small ridge ``λ`` (relative to the mean
diagonal, so it does not depend on the stream's scale).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .errors import CorpusError
from .progress import bar


class Lens:
    """Layers read through the output, with (linear lens) an affine map per layer before the final norm."""

    def __init__(self, layers: Sequence[int], weight: Tensor | None = None, *, tokens: int = 0, name: str = "logit lens"):
        self.layers = tuple(int(l) for l in layers)
        self.weight = weight
        """[len(layers), d + 1, d] float32: rows 0…d−1 are A_lᵀ, row d is b_l (None: the logit lens)."""
        self.tokens = tokens
        """Tokens the maps were fitted on (0 for the logit lens)."""
        self.name = name

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def map(self, j: int, h: Tensor) -> Tensor:
        """The state of the ``j``-th layer moved to the last layer's coordinates (unchanged for the logit lens)."""
        if self.weight is None:
            return h
        w = self.weight[j].to(device=h.device, dtype=h.dtype)
        return h @ w[:-1] + w[-1]

    def logits(self, model, j: int, h: Tensor) -> Tensor:
        """Output logits read from ``h`` (``resid_post`` of the ``j``-th layer): final norm and unembedding."""
        norm = model.hf.get_submodule(model.adapter.final_norm)
        return model.hf.get_output_embeddings()(norm(self.map(j, h)))


def as_lens(lens: Sequence[int] | Lens | None) -> Lens | None:
    """A :class:`Lens` from a lens or a list of layers (the logit lens)."""
    return lens if lens is None or isinstance(lens, Lens) else Lens(lens)


@torch.no_grad()
def fit_linear_lens(model, layers: Sequence[int], windows: Iterable[Tensor], *, tokens: int = 65_536,
                    ridge: float = 1e-3, progress: str = "linear lens") -> Lens:
    """The linear lens at ``layers`` (module docstring), fitted on batches of token windows ([B, T] ids) until
    ``tokens`` kept tokens have been read."""
    from .data import Exclusion, kept_mask

    last = f"resid_post.{model.n_layers - 1}"
    points = [f"resid_post.{l}" for l in layers]
    d = model.d_model
    xtx = torch.zeros(len(layers), d + 1, d + 1, dtype=torch.float64)
    xty = torch.zeros(len(layers), d + 1, d, dtype=torch.float64)
    seen = 0
    with bar(progress, total=tokens, unit="tokens") as b:
        for ids in windows:
            acts = model.capture(ids.to(model.device), list(dict.fromkeys(points + [last])))
            keep = kept_mask(ids.to(model.device), list(acts.values()), model.special_ids, Exclusion())
            y = acts[last][keep].double().cpu()
            for j, p in enumerate(points):
                x = torch.cat([acts[p][keep].double().cpu(), torch.ones(len(y), 1, dtype=torch.float64)], 1)
                xtx[j] += x.T @ x
                xty[j] += x.T @ y
            seen += len(y)
            b.advance(len(y))
            if seen >= tokens:
                break
    if seen == 0:
        raise CorpusError("no token was left to fit the linear lens on", "use a larger corpus")
    eye = torch.eye(d + 1, dtype=torch.float64)
    scale = xtx.diagonal(dim1=1, dim2=2)[:, :d].mean(1)  # [layers]
    weight = torch.linalg.solve(xtx + ridge * scale[:, None, None] * eye, xty)
    return Lens(layers, weight.float(), tokens=seen, name="linear lens")
