"""Time the torch fast Walsh-Hadamard transform and the two gradient projectors.

Prints two markdown tables of median wall times:

1. ``fwht`` against a dense matmul with the precomputed Sylvester matrix, batch B, for
   small D;
2. HadamardProjector against RademacherProjector for N = 2^20, d = 4096, B = 8, with
   the ratio of their medians.

Run: ``python benchmarks/bench_projection.py`` from the repository root (about 25 s with
one thread on a shared 2-core CPU machine, torch 2.13). The numbers depend on the machine
and on the thread count; they are measurements, not bounds.
"""

from __future__ import annotations

import argparse

import torch

from gradients.hadamard import fwht, hadamard_matrix
from gradients.projection import make_projector
from timing import median_seconds


def bench_transform(batch: int, log2_sizes: list[int], repeats: int) -> list[str]:
    """Time fwht and x @ (H / sqrt(D)) on a (B, D) float32 batch; return markdown lines."""
    lines = [
        f"### fwht vs dense matmul, B = {batch}, float32, median of {repeats}",
        "",
        "| D | fwht (ms) | dense matmul (ms) | dense / fwht |",
        "|---:|---:|---:|---:|",
    ]
    generator = torch.Generator().manual_seed(0)
    for log2_size in log2_sizes:
        size = 2**log2_size
        x = torch.randn(batch, size, generator=generator)
        dense = hadamard_matrix(size) / size**0.5
        fast_s = median_seconds(lambda: fwht(x), repeats)
        dense_s = median_seconds(lambda: x @ dense, repeats)
        lines.append(
            f"| 2^{log2_size} | {1e3 * fast_s:.3f} | {1e3 * dense_s:.3f} | {dense_s / fast_s:.2f} |"
        )
    return lines


def bench_projectors(
    input_dim: int, proj_dim: int, batch: int, hadamard_repeats: int, rademacher_repeats: int
) -> list[str]:
    """Time both projectors on a (B, N) float32 batch; return markdown lines."""
    x = torch.randn(batch, input_dim, generator=torch.Generator().manual_seed(1))
    hadamard = make_projector("hadamard", input_dim, proj_dim, seed=0)
    rademacher = make_projector("rademacher", input_dim, proj_dim, seed=0, show_progress=False)
    hadamard_s = median_seconds(lambda: hadamard(x), hadamard_repeats)
    # No warm-up run: generating the N * d signs dominates every call, so one is enough.
    rademacher_s = median_seconds(lambda: rademacher(x), rademacher_repeats, warmup=False)
    return [
        f"### projectors, N = {input_dim}, d = {proj_dim}, B = {batch}, float32 on CPU",
        "",
        "| projector | runs | median (s) | relative to hadamard |",
        "|---|---:|---:|---:|",
        f"| hadamard | {hadamard_repeats} | {hadamard_s:.3f} | 1.00 |",
        f"| rademacher | {rademacher_repeats} | {rademacher_s:.3f} "
        f"| {rademacher_s / hadamard_s:.1f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per small case")
    parser.add_argument(
        "--rademacher-repeats", type=int, default=1,
        help="timed runs of the Rademacher projector (about 18 s each with one CPU thread)",
    )
    parser.add_argument("--input-dim", type=int, default=2**20, help="N of the projector case")
    parser.add_argument("--proj-dim", type=int, default=4096, help="d of the projector case")
    parser.add_argument("--batch", type=int, default=8, help="B, the number of vectors")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads; 0 keeps torch's default. With 2 threads on a shared "
        "2-core machine, thread-pool waits of about 16 ms swamped the sub-millisecond cases",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("\n".join(bench_transform(args.batch, list(range(4, 13, 2)), args.repeats)))
    print()
    lines = bench_projectors(
        args.input_dim, args.proj_dim, args.batch, args.repeats, args.rademacher_repeats
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
