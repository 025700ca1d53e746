"""Tiny random models of every supported architecture, built from configs (no download), with a small
word-level tokenizer, saved as ordinary HF folders so they go through the real ``load_model`` path."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the of and to a in that is was he for it with as his on be at by i this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way well down "
    "should because each just those people mr how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three congress nation war peace law government united states president"
).split()
SPECIAL = ["<|endoftext|>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + [".", ",", ":", "?", "!"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
    )
    return fast


def tiny_config(arch: str, vocab: int):
    import transformers as t

    common = dict(vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=False)
    llama_like = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, **common)
    if arch == "llama":
        return t.LlamaConfig(**llama_like)
    if arch == "mistral":
        return t.MistralConfig(**llama_like)
    if arch == "qwen2":
        return t.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return t.Qwen3Config(head_dim=16, **llama_like)
    if arch == "gemma":
        return t.GemmaConfig(head_dim=16, **llama_like)
    if arch == "gemma2":
        return t.Gemma2Config(head_dim=16, query_pre_attn_scalar=16, **llama_like)
    if arch == "gemma3":
        return t.Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **llama_like)
    if arch == "gpt2":
        return t.GPT2Config(vocab_size=vocab, bos_token_id=0, eos_token_id=0, n_positions=128, n_embd=64, n_layer=3, n_head=4, n_inner=96)
    if arch in ("gpt_neox", "gpt_neox_serial"):
        return t.GPTNeoXConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                               use_parallel_residual=arch == "gpt_neox", **common)
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gpt2", "gpt_neox", "gpt_neox_serial"]


def save_tiny(arch: str, folder: Path, seed: int = 0) -> Path:
    """Build a random tiny model of ``arch`` and save it (with the tokenizer) to ``folder``."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config(arch, len(tok))
    model = AutoModelForCausalLM.from_config(cfg)
    # random-init norms are all ones; perturb them so tests notice a norm read at the wrong place
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
