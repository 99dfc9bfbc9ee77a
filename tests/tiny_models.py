"""Tiny random-initialised causal LMs of several layouts, for fast tests (nothing downloaded)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 64


def tiny_model(kind: str = "llama", layers: int = 3, vocab_size: int = VOCAB, seed: int = 0, dtype=torch.float32):
    """Return a tiny model of the given layout in eval mode with eager attention."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=layers, n_head=2,
                                           n_positions=256, bos_token_id=0, eos_token_id=1))
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    model.config._attn_implementation = "eager"
    return model.to(dtype).eval()
