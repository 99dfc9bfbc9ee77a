"""Time per-sample gradients at SmolLM2-135M's shape: vmap against a loop, per parameter subset.

Run: ``.venv/bin/python benchmarks/bench_per_sample_smollm2.py``. The model is a randomly
initialised Llama with SmolLM2-135M's shape (30 blocks, hidden 576, vocabulary 49152, tied
embeddings), so no download is needed and the cost is the real one. The batch holds 4 sequences
of 100 tokens whose last 20 are labels, and the gradients are masked to 2^22 random elements as
in ``make demo``. Subsets: "all" (135M parameters, including the tied embedding matrix) and
the transformer blocks only ("re:.*layers.*", 106M). Prints median seconds per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradients.params import ParameterMask, flat_dim, select_parameters
from gradients.per_sample import per_sample_gradients
from smollm2_shape import smollm2_shaped_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    parser.add_argument("--seq-len", type=int, default=100, help="tokens per sample")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method")
    args = parser.parse_args()

    model = smollm2_shaped_model()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 49152, (args.batch_size, args.seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : args.seq_len - 20] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    print(f"SmolLM2-135M shape, B = {args.batch_size}, L = {args.seq_len}, mask 2^22, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| parameters | N | vmap s | loop s | loop / vmap |")
    print("|---|---|---|---|---|")
    for spec in ("all", "re:.*layers.*"):
        params = select_parameters(model, spec)
        mask = ParameterMask.for_params(params, count=1 << 22, seed=0)
        medians = {}
        for method in ("vmap", "loop"):
            per_sample_gradients(model, batch, params, mask=mask, method=method)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                per_sample_gradients(model, batch, params, mask=mask, method=method)
                times.append(time.perf_counter() - start)
            medians[method] = statistics.median(times)
        ratio = medians["loop"] / medians["vmap"]
        print(f"| {spec} | {flat_dim(params)} | {medians['vmap']:.2f} | {medians['loop']:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
