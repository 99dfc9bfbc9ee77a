"""Time batched (vmap) per-sample gradients against a loop of single-sample backward passes.

Run: ``.venv/bin/python benchmarks/bench_per_sample.py``. The model is a randomly
initialised Llama config (4 blocks, hidden 128, vocabulary 1024) and the batch holds 16
right-padded sequences of up to 64 tokens. The script prints a markdown table of median wall
times, with gradients over every parameter of the model. The numbers depend on the machine
and its thread count.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gradients.params import flat_dim, select_parameters
from gradients.per_sample import per_sample_gradients
from timing import median_seconds


def build_model(attn_implementation: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def build_batch(batch_size: int, seq_len: int, vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=generator)
    lengths[0] = seq_len
    attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    parser.add_argument("--seq-len", type=int, default=64, help="padded sequence length in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method")
    args = parser.parse_args()

    # The CPU SDPA kernel has no vmap batching rule in torch 2.13, and torch warns about it.
    warnings.filterwarnings("ignore", message="There is a performance drop")
    batch = build_batch(args.batch_size, args.seq_len, 1024)
    rows = []
    for attn_implementation in ("eager", "sdpa"):
        model = build_model(attn_implementation)
        params = select_parameters(model, "all")
        for method in ("vmap", "loop"):
            seconds = median_seconds(
                lambda: per_sample_gradients(model, batch, params, normalize=False, method=method),
                args.repeats,
            )
            rows.append((attn_implementation, method, seconds))
    total_dim = flat_dim(params)

    print(
        f"B={args.batch_size}, L<={args.seq_len}, N={total_dim} parameters, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| attention | method | median s | loop / method |")
    print("|---|---|---|---|")
    loop_seconds = {attn: s for attn, method, s in rows if method == "loop"}
    for attn_implementation, method, seconds in rows:
        ratio = loop_seconds[attn_implementation] / seconds
        print(f"| {attn_implementation} | {method} | {seconds:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
