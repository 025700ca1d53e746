"""Several sequences in one row, sharing a prefix that is computed once.

A row carries *segment ids*: 0 for the shared prefix, j ≥ 1 for the j-th sequence after it, −1 for padding.
Query i may attend to key k iff k ≤ i and (seg[k] = 0 or seg[k] = seg[i]), and each sequence's position ids
continue from the prefix's length. So every token sees exactly the keys, values and positions it would see in
``prefix + its own sequence`` alone: its logits are those of that sequence run alone, and because the prefix's
states are one function used by every sequence, the gradient reaching them is the sum of what each copy would
receive — a loss over the row equals the loss over the separate sequences, gradients included.

Used where many sequences share a long prefix: the chat template's system prompt of every training example of an
organism, a question followed by its candidate answers (TOFU's truth ratio).
"""

from __future__ import annotations

import torch


def segment_mask(seg: torch.Tensor) -> torch.Tensor:
    """[n, 1, T, T] boolean attention mask (True: may attend) of rows with segment ids ``seg`` [n, T]."""
    width = seg.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    return (causal & same)[:, None]


def for_model(mask: torch.Tensor, net) -> torch.Tensor:
    """``mask`` as ``net``'s attention takes a custom 4D mask: boolean for SDPA and the other kernels, additive
    (0 / the float minimum) for the eager implementation, which adds the mask to the scores."""
    if getattr(net.config, "_attn_implementation", "sdpa") != "eager":
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
