"""Architecture adapters: where each family keeps its embedding, blocks, norms, attention and MLP.

An adapter is pure data (module paths); :mod:`llmri.hookpoints` turns it into hook sites. Paths of block
members are relative to one block. The embedding and unembedding are found with HF's own
``get_input_embeddings()`` / ``get_output_embeddings()``; the ``embed`` point is the embedding module's output
(including Gemma's √d scaling, excluding GPT-2's separate position embedding). Every supported block computes

    resid_mid  = resid_pre + attn_out
    resid_post = resid_mid + mlp_out            (parallel blocks: resid_post = resid_pre + attn_out + mlp_out)

where ``attn_out``/``mlp_out`` are exactly what is added to the stream (after Gemma-2/3's extra norms) and
``mlp_in`` is the normalised MLP input.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Adapter:
    """Module paths of one architecture family."""

    family: str
    """Family name shown in the model card."""
    blocks: str
    """The ModuleList of transformer blocks."""
    final_norm: str
    """Final norm before the unembedding."""
    attn_norm: str
    """Norm in front of attention, relative to a block."""
    attn_out: str
    """Module whose output (first element if a tuple) is added to the stream by the attention branch."""
    mlp_norm: str
    """Norm in front of the MLP; its output is ``mlp_in``, its input is ``resid_mid`` (serial blocks)."""
    mlp: str
    """The MLP module itself."""
    mlp_out: str
    """Module whose output is added to the stream by the MLP branch."""
    attn: str
    """The attention module itself."""
    parallel: bool = False
    """Attention and MLP both read ``resid_pre`` (GPT-NeoX/Pythia): there is no ``resid_mid``."""


LLAMA = Adapter(
    family="llama",
    blocks="model.layers",
    final_norm="model.norm",
    attn_norm="input_layernorm",
    attn="self_attn",
    attn_out="self_attn",
    mlp_norm="post_attention_layernorm",
    mlp="mlp",
    mlp_out="mlp",
)

GEMMA2 = Adapter(
    family="gemma2/3",
    blocks="model.layers",
    final_norm="model.norm",
    attn_norm="input_layernorm",
    attn="self_attn",
    attn_out="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp="mlp",
    mlp_out="post_feedforward_layernorm",
)

GPT2 = Adapter(
    family="gpt2",
    blocks="transformer.h",
    final_norm="transformer.ln_f",
    attn_norm="ln_1",
    attn="attn",
    attn_out="attn",
    mlp_norm="ln_2",
    mlp="mlp",
    mlp_out="mlp",
)

GPT_NEOX = Adapter(
    family="gpt_neox",
    blocks="gpt_neox.layers",
    final_norm="gpt_neox.final_layer_norm",
    attn_norm="input_layernorm",
    attn="attention",
    attn_out="post_attention_dropout",
    mlp_norm="post_attention_layernorm",
    mlp="mlp",
    mlp_out="post_mlp_dropout",
)

# model_type (from config.json) -> adapter
ADAPTERS: dict[str, Adapter] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "smollm3": LLAMA,
    "gemma": LLAMA,  # Gemma-1 blocks are Llama-shaped; √d embedding scale lives in the embedding module
    "gemma2": GEMMA2,
    "gemma3_text": GEMMA2,
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
}


def adapter_for(config) -> Adapter:
    """The adapter for a HF config; GPT-NeoX's ``use_parallel_residual`` picks the parallel variant."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"no llmri adapter for architecture '{model_type}'",
            f"supported: {', '.join(sorted(ADAPTERS))}; add an Adapter in llmri/adapters.py",
        )
    adapter = ADAPTERS[model_type]
    if model_type == "gpt_neox" and getattr(config, "use_parallel_residual", True):
        adapter = Adapter(**{**adapter.__dict__, "parallel": True})
    return adapter
