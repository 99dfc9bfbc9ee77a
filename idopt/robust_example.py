"""Worked example of robust weights on a seeded linear regression.

The source pool mixes samples drawn like the target (x ~ N(0, I_d), y = <x, theta_true> +
noise) with samples whose labels come from another parameter vector theta_other. Weights
are computed once at theta_0 = 0:

- uniform: w = 1 (every sample counts once);
- first_order: argmin -p^T w + (lam/2)||w||^2 (eta = 0), the closed form of idopt;
- robust rho=...: argmin R(w) of :mod:`idopt.robust` with learning rate eta, for each rho in
  the grid. rho = 0 is the plain second-order problem.

Each weighting then trains theta by gradient descent on sum_i w_i (<x_i, theta> - y_i)^2 from
theta_0 with one shared learning rate, and the mean squared error on held-out target samples
is recorded after every step. Used by ``idopt robust-example`` and benchmarks/bench_robust.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import linalg

from idopt.errors import InvalidInputError
from idopt.first_order import solve_first_order
from idopt.robust import LinearSquaredLoss, RobustProblem, solve_robust

logger = logging.getLogger(__name__)

DEFAULT_RHOS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class ExampleConfig:
    """Settings of the worked example.

    Attributes
    ----------
    seed : int
        Seed of the data.
    dim : int
        Number of parameters d.
    matching, mismatched : int
        Source samples drawn like the target, and with labels from theta_other.
    targets : int
        Target samples whose gradient and Hessian define p, Q, a_w and B_w.
    validation : int
        Held-out target samples for the validation loss.
    noise : float
        Standard deviation of the label noise.
    mismatch_angle_deg : float
        Angle between theta_other and theta_true, both of norm sqrt(d).
    rhos : tuple of float
        Radii of the parameter perturbation (units of theta).
    steps : int
        Gradient descent steps per weighting.
    starts : int
        SLSQP starting points per robust solve.
    """

    seed: int = 0
    dim: int = 8
    matching: int = 60
    mismatched: int = 60
    targets: int = 20
    validation: int = 1000
    noise: float = 0.3
    mismatch_angle_deg: float = 100.0
    rhos: tuple = DEFAULT_RHOS
    steps: int = 100
    starts: int = 4

    def check(self) -> None:
        """Raise InvalidInputError for a setting out of range."""
        for name in ("dim", "matching", "mismatched", "targets", "validation", "steps", "starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1; got {value!r}")
        if self.dim < 2:
            raise InvalidInputError(f"dim must be >= 2 so that theta_other can differ in direction; got {self.dim}")
        if not np.isfinite(self.noise) or self.noise < 0:
            raise InvalidInputError(f"noise must be finite and >= 0 (label noise standard deviation); got {self.noise!r}")
        if len(self.rhos) == 0 or any((not np.isfinite(r)) or r < 0 for r in self.rhos):
            raise InvalidInputError(f"rhos must be a non-empty list of finite values >= 0; got {self.rhos!r}")


@dataclass
class ExampleResult:
    """Weights, validation curves and settings of one run of the example.

    Attributes
    ----------
    weights : dict of str to (n,) float64
        Weights per method name, each summing to n.
    curves : dict of str to (steps + 1,) float64
        Validation mean squared error per method, before training and after each step.
    matching : (n,) bool
        True for source samples drawn like the target.
    eta, lam, learning_rate : float
        Learning rate of the weighting objective, l2 weight on w, and the shared gradient
        descent step size.
    objective_values : dict of str to float
        R(w) at the returned weights (first_order and uniform: R at rho = 0).
    solve_seconds : dict of str to float
        Wall time of each robust solve.
    """

    weights: dict
    curves: dict
    matching: np.ndarray
    eta: float
    lam: float
    learning_rate: float
    objective_values: dict = field(default_factory=dict)
    solve_seconds: dict = field(default_factory=dict)

    def matching_share(self, name: str) -> float:
        """Return the fraction of the total weight on matching samples for one method."""
        w = self.weights[name]
        return float(w[self.matching].sum() / w.sum())


def make_data(config: ExampleConfig) -> dict:
    """Draw the source pool, target and validation sets, returned as a dict of arrays."""
    rng = np.random.default_rng(config.seed)
    d = config.dim
    theta_true = rng.normal(size=d)
    theta_true *= np.sqrt(d) / np.linalg.norm(theta_true)
    orthogonal = rng.normal(size=d)
    orthogonal -= (orthogonal @ theta_true) / (theta_true @ theta_true) * theta_true
    orthogonal *= np.sqrt(d) / np.linalg.norm(orthogonal)
    angle = np.deg2rad(config.mismatch_angle_deg)
    theta_other = np.cos(angle) * theta_true + np.sin(angle) * orthogonal

    def draw(count: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(count, d))
        return x, x @ theta + config.noise * rng.normal(size=count)

    x_match, y_match = draw(config.matching, theta_true)
    x_other, y_other = draw(config.mismatched, theta_other)
    x_target, y_target = draw(config.targets, theta_true)
    x_valid, y_valid = draw(config.validation, theta_true)
    order = rng.permutation(config.matching + config.mismatched)
    x_source = np.vstack([x_match, x_other])[order]
    y_source = np.concatenate([y_match, y_other])[order]
    matching = np.concatenate([np.ones(config.matching, bool), np.zeros(config.mismatched, bool)])[order]
    return {
        "x_source": x_source, "y_source": y_source, "matching": matching,
        "x_target": x_target, "y_target": y_target,
        "x_validation": x_valid, "y_validation": y_valid,
        "theta_true": theta_true, "theta_other": theta_other,
    }


def train_curve(x, y, w, x_valid, y_valid, learning_rate: float, steps: int) -> np.ndarray:
    """Run gradient descent on sum_i w_i (<x_i, theta> - y_i)^2 from theta = 0.

    Returns the validation mean squared error before training and after each step,
    shape (steps + 1,).
    """
    theta = np.zeros(x.shape[1])
    curve = np.empty(steps + 1)
    for step in range(steps + 1):
        residual = x_valid @ theta - y_valid
        curve[step] = float(residual @ residual) / len(y_valid)
        if step < steps:
            theta = theta - learning_rate * (2.0 * x.T @ (w * (x @ theta - y)))
    return curve


def run_example(config: ExampleConfig | None = None) -> ExampleResult:
    """Compute the weights of every method and their validation curves.

    eta is 0.5 / lambda_max(H_1), with H_1 = 2 X_S^T X_S the source Hessian at w = 1. lam is
    the mean of max(p - q, 0) over the samples, with q the median of p, a scale rule that
    makes the first-order solution keep a part of the pool. The shared training step is
    1 / max_w lambda_max(H_w) over all weightings, so that every run is stable.
    """
    config = config or ExampleConfig()
    config.check()
    data = make_data(config)
    n = config.matching + config.mismatched
    model = LinearSquaredLoss.create(
        data["x_source"], data["y_source"], data["x_target"], data["y_target"], np.zeros(config.dim)
    )
    h_ones = model.weighted_hessian(np.ones(n))
    eta = 0.5 / float(linalg.eigvalsh(h_ones)[-1])
    p = model.source_gradients.T @ model.target_gradient
    lam = float(np.mean(np.maximum(p - np.median(p), 0.0)))
    logger.info("example: n = %d, d = %d, eta = %.4g, lam = %.4g", n, config.dim, eta, lam)

    weights = {"uniform": np.ones(n), "first_order": solve_first_order(p, lam, float(n)).w}
    objective_values, solve_seconds = {}, {}
    plain = RobustProblem.create(model, eta=eta, rho=0.0, lam=lam)
    for name in ("uniform", "first_order"):
        objective_values[name] = plain.objective(weights[name])
    for rho in config.rhos:
        problem = RobustProblem.create(model, eta=eta, rho=float(rho), lam=lam)
        solution = solve_robust(problem, starts=config.starts, seed=config.seed)
        name = f"robust rho={rho:g}"
        weights[name] = solution.w
        objective_values[name] = solution.objective
        solve_seconds[name] = solution.wall_time_s
        logger.info("%s: R = %.6g, %d of %d starts converged, %.2f s", name, solution.objective,
                    solution.converged, solution.starts, solution.wall_time_s)

    largest = max(float(linalg.eigvalsh(model.weighted_hessian(w))[-1]) for w in weights.values())
    learning_rate = 1.0 / largest
    curves = {
        name: train_curve(data["x_source"], data["y_source"], w, data["x_validation"], data["y_validation"],
                          learning_rate, config.steps)
        for name, w in weights.items()
    }
    return ExampleResult(weights, curves, data["matching"], eta, lam, learning_rate, objective_values, solve_seconds)


def format_summary(result: ExampleResult) -> str:
    """Return a Markdown table: weight share on matching samples, support and validation MSE."""
    steps = len(next(iter(result.curves.values()))) - 1
    checkpoints = sorted({min(10, steps), min(30, steps), steps})
    header = ["weights", "share on matching", "non-zero"] + [f"val MSE @ {s}" for s in checkpoints]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, w in result.weights.items():
        cells = [name, f"{result.matching_share(name):.3f}", f"{int(np.count_nonzero(w > 1e-8))}"]
        cells += [f"{result.curves[name][s]:.4f}" for s in checkpoints]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_example(result: ExampleResult, path, rho_for_histogram: float | None = None) -> Path:
    """Write a PNG with the validation curves and the distribution of robust weights.

    Left: validation MSE against gradient descent steps for every weighting (log scale).
    Right: histogram of the robust weights at ``rho_for_histogram`` (default: the largest
    rho), split into matching and mismatched source samples. Needs matplotlib.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'idopt[dev]' or pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robust_names = [name for name in result.weights if name.startswith("robust")]
    if rho_for_histogram is None:
        chosen = robust_names[-1]
    else:
        chosen = f"robust rho={rho_for_histogram:g}"
        if chosen not in result.weights:
            raise InvalidInputError(f"rho_for_histogram={rho_for_histogram:g} is not in the rho grid of the result")

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, curve in result.curves.items():
        style = "-" if name.startswith("robust") else "--"
        left.plot(curve, style, label=name, linewidth=1.5)
    left.set_yscale("log")
    left.set_xlabel("gradient descent step")
    left.set_ylabel("validation MSE on the target")
    left.set_title("Training on the weighted source loss")
    left.legend(fontsize=8)

    w = result.weights[chosen]
    bins = np.linspace(0.0, max(float(w.max()), 1e-12), 25)
    right.hist(w[result.matching], bins=bins, alpha=0.7, label="matching samples")
    right.hist(w[~result.matching], bins=bins, alpha=0.7, label="mismatched samples")
    right.set_xlabel("weight")
    right.set_ylabel("samples")
    right.set_title(f"Distribution of the {chosen} weights")
    right.legend(fontsize=8)

    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def write_example(out_dir, config: ExampleConfig | None = None) -> tuple[ExampleResult, Path]:
    """Run the example and write robust_example.png and weights.npz into ``out_dir``."""
    start = time.perf_counter()
    result = run_example(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_example(result, out / "robust_example.png")
    np.savez(out / "weights.npz", matching=result.matching,
             **{name.replace(" ", "_"): w for name, w in result.weights.items()})
    logger.info("example written to %s in %.1f s", out, time.perf_counter() - start)
    return result, png
