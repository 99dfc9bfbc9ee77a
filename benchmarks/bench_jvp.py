"""Time batched JVP embeddings against embedding one sample at a time.

Run: ``.venv/bin/python benchmarks/bench_jvp.py``. The model is a randomly initialised Llama
with SmolLM2-135M's shape (hidden 576, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152), so no
download is needed and the cost per token is the real one. Embeddings use the first 4 blocks and
2 directions, the pipeline's defaults. The batch holds 16 sequences with lengths drawn from
[48, 128] tokens. The script prints a markdown table of median wall times and the ratio.
"""

from __future__ import annotations

import argparse

import torch

from gradients.jvp import JVPConfig, JVPEmbedder
from timing import median_seconds
from smollm2_shape import smollm2_shaped_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per method")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = smollm2_shaped_model(layers=4)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(48, 129, (args.batch_size,), generator=generator)
    longest = int(lengths.max())
    input_ids = torch.randint(0, 49152, (args.batch_size, longest), generator=generator)
    mask = (torch.arange(longest) < lengths[:, None]).long()

    batched = JVPEmbedder(model, JVPConfig(num_blocks=4, num_directions=2))
    looped = JVPEmbedder(model, JVPConfig(num_blocks=4, num_directions=2))
    looped._use_vmap = False

    def run_batched():
        with torch.no_grad():
            batched.embed_batch(input_ids, mask)

    def run_one_at_a_time(embedder):
        with torch.no_grad():
            for row in range(args.batch_size):
                length = int(lengths[row])
                embedder.embed_batch(input_ids[row:row + 1, :length], mask[row:row + 1, :length])

    rows = [
        ("batched, vmap over directions", median_seconds(run_batched, args.repeats)),
        ("one sample at a time, vmap over directions", median_seconds(lambda: run_one_at_a_time(batched), args.repeats)),
        ("one sample and one direction at a time", median_seconds(lambda: run_one_at_a_time(looped), args.repeats)),
    ]
    base = rows[0][1]
    print(f"JVP embeddings, SmolLM2-135M shape, 4 blocks, 2 directions, B = {args.batch_size}, "
          f"{int(lengths.sum())} tokens, {args.threads} threads, torch {torch.__version__}\n")
    print("| method | median s | per sample ms | ratio to batched |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {1000 * seconds / args.batch_size:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
