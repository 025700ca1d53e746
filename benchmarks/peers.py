"""Peer SAE trainers, run in-process on the same batches as llmri (for ``sae_training.py``).

sparsify (EleutherAI's ``eai-sparsify``) is installed into a folder of its own, outside llmri's dependencies::

    pip install --no-deps --target .peers/sparsify eai-sparsify==1.3.3 schedulefree==1.4.1 \\
        simple-parsing==0.1.9 docstring-parser natsort==8.4.0 einops

Only its modules for the coder and the optimiser are imported (its package ``__init__`` also imports the
LM-driven trainer, which needs ``datasets``); its training step is reproduced from ``sparsify/trainer.py``
with that trainer's defaults for ``loss_fn="fvu"``: SignSGD under ``ScheduleFreeWrapper(momentum=0.95)``,
lr = 5e-3 / √(n_latents / 2¹⁴), no aux-k (``auxk_alpha = 0``), ``b_dec`` set to the first batch's mean, the
decoder renormalised before every forward and its gradient projected off the decoder directions, and on
CUDA its forward under bf16 autocast with its Triton decoder (both its defaults there).
"""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor


def import_sparsify(folder: str | Path) -> types.SimpleNamespace:
    """sparsify's coder, config and optimisers from a ``pip install --target`` folder (version checked)."""
    folder = Path(folder).resolve()
    if not (folder / "sparsify" / "sparse_coder.py").exists():
        raise SystemExit(f"no sparsify under {folder}: install it there with the command in benchmarks/peers.py")
    sys.path.insert(0, str(folder))
    pkg = types.ModuleType("sparsify")  # the package without its __init__ (see the module docstring)
    pkg.__path__ = [str(folder / "sparsify")]
    sys.modules.setdefault("sparsify", pkg)
    from schedulefree import ScheduleFreeWrapper
    from sparsify.config import SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from sparsify.sparse_coder import SparseCoder

    version = next((d.version for d in metadata.distributions(path=[str(folder)]) if d.metadata["Name"] == "eai-sparsify"),
                   "unknown")
    return types.SimpleNamespace(SparseCoder=SparseCoder, SparseCoderConfig=SparseCoderConfig, SignSGD=SignSGD,
                                 ScheduleFreeWrapper=ScheduleFreeWrapper, version=version)


class SparsifyRun:
    """One sparsify TopK SAE trained step by step (``step(x)``); ``weights()`` gives the evaluation weights
    (ScheduleFree's averaged iterate, as sparsify saves them)."""

    def __init__(self, sp: types.SimpleNamespace, d_in: int, n_latents: int, k: int, device: str, seed: int = 0):
        torch.manual_seed(seed)
        self.sae = sp.SparseCoder(d_in, sp.SparseCoderConfig(num_latents=n_latents, k=k), device, dtype=torch.float32)
        lr = 5e-3 / (n_latents / 2**14) ** 0.5
        self.opt = sp.ScheduleFreeWrapper(sp.SignSGD([dict(params=self.sae.parameters(), lr=lr)]), momentum=0.95)
        self.opt.train()
        self.since_fired = torch.zeros(n_latents, dtype=torch.long, device=device)
        self.started = False

    def step(self, x: Tensor) -> None:
        sae = self.sae
        if not self.started:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
            self.started = True
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, total_variance=(x - x.mean(0)).pow(2).sum())
        out.fvu.backward()
        with torch.profiler.record_function("optimizer"):
            sae.remove_gradient_parallel_to_decoder_directions()
            self.opt.step()
            self.opt.zero_grad()
        fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        self.since_fired += len(x)
        self.since_fired[fired] = 0

    def weights(self) -> dict[str, Tensor]:
        """W_enc, b_enc, W_dec, b_dec at the averaged iterate (the optimiser is left in train mode)."""
        self.opt.eval()
        s = self.sae
        w = {"W_enc": s.encoder.weight.detach().clone(), "b_enc": s.encoder.bias.detach().clone(),
             "W_dec": s.W_dec.detach().clone(), "b_dec": s.b_dec.detach().clone()}
        self.opt.train()
        return w
