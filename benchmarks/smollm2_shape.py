"""A randomly initialised Llama with SmolLM2-135M's shape, shared by the benchmark scripts.

Random weights cost the same per token as the real ones, so no download is needed.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def smollm2_shaped_model(layers: int = 30) -> LlamaForCausalLM:
    """Return a seeded Llama with hidden 576, 9 heads, 3 KV heads, MLP 1536 and vocabulary 49152."""
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
        tie_word_embeddings=True, attn_implementation="eager",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()
