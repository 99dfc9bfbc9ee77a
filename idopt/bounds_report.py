"""Compare measured approximation errors with the bounds of :mod:`idopt.bounds` on stored gradients.

Inputs: exact (projected) gradients G (n x d) of n samples, their approximations G_hat (n x d),
for example the landmark approximations C G_L, and target gradients T (m x d). As the theorem
assumes, each exact row g_i and its approximation are divided by ||g_i|| (so the relative
error is kept) and each target row by its own norm.

The report contains:

- Delta^2 = (1/n) sum_i ||g_hat_i - g_i||^2, the bound n Delta^2 / d on ||p - p_hat||^2 and the
  bound n Delta^2 / (lam^2 d) on ||w(p) - w(p_hat)||^2.
- Per target t_j: ||p - p_hat||^2 with p = G t_j and p_hat = G_hat t_j, ||w(p) - w(p_hat)||^2 with
  w from :func:`idopt.first_order.solve_first_order` (budget n), their ratios to the bounds, and
  the Lipschitz check ||w(p) - w(p_hat)|| <= ||p - p_hat|| / lam.
- Plausibility of the assumptions. The bounds hold in expectation over the approximation and a
  random change of basis. For one fixed target, a ratio above 1 means the errors are larger than
  average along that target's direction. Bias: the norm of the mean error vector against its
  value without a common bias, and the mean of <e_i, g_i> (negative when the approximation
  shrinks the gradients) with its standard error. Isotropy: the ratio of the largest to the
  mean eigenvalue of the error second-moment matrix and the spread of per-coordinate second
  moments, each with its value expected under isotropy.

A single signed permutation P D only permutes and flips coordinates, so it changes neither
isotropy statistic; Lemma D.2 makes the errors isotropic on average over random draws of P D,
which is the randomness the bounds average over. The statistics therefore test whether the
errors are already isotropic in the stored basis, the assumption of Lemma D.1 without the
change of basis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from idopt.arrays import load_npy
from idopt.bounds import (
    MeanEstimate,
    eigenvalue_ratio,
    estimate_mean,
    first_order_weights,
    isotropic_eigenvalue_ratio,
    score_error_bound,
    weight_error_bound,
)
from idopt.errors import InvalidInputError
from idopt.json_report import json_safe
from idopt.validation import check_lam

logger = logging.getLogger(__name__)

# File names that `idopt select` writes for the bounds report.
EXACT_FILE = "holdout_gradients.npy"
APPROX_FILE = "holdout_approx.npy"
TARGETS_FILE = "target_gradients_projected.npy"

# Relative rounding allowance of the Lipschitz check: w is computed in float64 to a KKT
# tolerance of 1e-9 (idopt.first_order.DEFAULT_TOL), so ||w - w_hat|| may exceed
# ||p - p_hat|| / lam by about 1e-9 times the weight scale.
LIPSCHITZ_RTOL = 1e-7


def load_array(path: str | Path, name: str) -> np.ndarray:
    """Load a float array from a .npy file without unpickling; raise InvalidInputError naming ``name``."""
    array = load_npy(path, name)
    if array.dtype.kind != "f":
        raise InvalidInputError(f"{name}: {path} has dtype {array.dtype}; expected a floating array")
    return array.astype(np.float64, copy=False)


def run_files(run_dir: str | Path) -> tuple[Path, Path, Path]:
    """Return the exact, approximate and target gradient files inside an `idopt select` output folder."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InvalidInputError(f"--run: folder not found: {folder}")
    paths = (folder / EXACT_FILE, folder / APPROX_FILE, folder / TARGETS_FILE)
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise InvalidInputError(
            f"--run: {folder} lacks {', '.join(missing)}; rerun `idopt select` with the option that "
            "writes held-out gradients, or pass --exact, --approx and --targets"
        )
    return paths


@dataclass
class TargetRow:
    """Measured errors for one target, and their ratios to the bounds."""

    target: int
    score_error: float
    score_ratio: float
    weight_error: float
    weight_ratio: float
    lipschitz_ratio: float
    lipschitz_holds: bool


@dataclass
class BoundsReport:
    """Everything :func:`compute_bounds_report` measures; see the module docstring.

    Attributes
    ----------
    n, dim, num_targets : int
        Samples, gradient dimension d and targets m.
    lam : float
        lam > 0 of the first-order weights.
    delta_squared : float
        Delta^2 = (1/n) sum_i ||g_hat_i - g_i||^2 after normalization.
    score_bound, weight_bound : float
        n Delta^2 / d and n Delta^2 / (lam^2 d).
    targets : list of TargetRow
        One row per target.
    mean_score_ratio : float
        Mean over targets of ||p - p_hat||^2 / (n Delta^2 / d).
    bias_norm : float
        ||m|| for the mean error m = (1/n) sum_i e_i.
    bias_norm_expected : float
        sqrt(trace(Cov(e)) / n), the root of E||m||^2 when the errors have no common mean.
    radial_bias : MeanEstimate
        Estimate of E<e_i, g_i> over samples; 0 for an unbiased approximation.
    eigenvalue_ratio, eigenvalue_ratio_isotropic : float
        lambda_max / mean eigenvalue of (1/n) sum_i (e_i - m)(e_i - m)^T and its
        Marchenko-Pastur value (1 + sqrt(d / n))^2 for isotropic Gaussian errors.
    coordinate_spread, coordinate_spread_isotropic : float
        Coefficient of variation over coordinates j of v_j = (1/n) sum_i (e_ij - m_j)^2, and the
        value sqrt(mean_j Var_i((e_ij - m_j)^2) / n) / mean_j v_j it takes from sampling noise
        alone when all coordinates have the same variance.
    """

    n: int
    dim: int
    num_targets: int
    lam: float
    delta_squared: float
    score_bound: float
    weight_bound: float
    targets: list[TargetRow]
    mean_score_ratio: float
    bias_norm: float
    bias_norm_expected: float
    radial_bias: MeanEstimate
    eigenvalue_ratio: float
    eigenvalue_ratio_isotropic: float
    coordinate_spread: float
    coordinate_spread_isotropic: float
    sources: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return the report as a JSON-ready dict (non-finite floats become None)."""
        return json_safe(asdict(self))


def _check_stores(exact: np.ndarray, approx: np.ndarray, targets: np.ndarray) -> None:
    for name, array in (("exact", exact), ("approx", approx), ("targets", targets)):
        if array.ndim != 2 or 0 in array.shape:
            raise InvalidInputError(f"{name} must be a non-empty 2-D array (rows x d); got shape {array.shape}")
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(f"{name} has {int(bad.sum())} NaN or inf values (first at index {first})")
    if approx.shape != exact.shape:
        raise InvalidInputError(
            f"approx must have the shape of exact (one approximation per exact gradient); "
            f"got {approx.shape} and {exact.shape}"
        )
    if targets.shape[1] != exact.shape[1]:
        raise InvalidInputError(
            f"targets must have d = {exact.shape[1]} columns like exact; got {targets.shape[1]}"
        )
    if exact.shape[0] < 2:
        raise InvalidInputError(f"exact needs at least 2 samples (rows) for standard errors; got {exact.shape[0]}")


def _unit_rows(array: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InvalidInputError(
            f"{name} row {int(zero[0])} is zero ({zero.size} zero rows); the bounds need non-zero "
            "gradients, so drop those rows"
        )
    return norms


def compute_bounds_report(exact, approx, targets, lam: float) -> BoundsReport:
    """Measure approximation errors on stored gradients and compare them with the bounds.

    Parameters
    ----------
    exact : array_like, shape (n, d)
        Exact (projected) gradients G, non-zero rows, n >= 2.
    approx : array_like, shape (n, d)
        Their approximations G_hat.
    targets : array_like, shape (m, d)
        Target gradients T, non-zero rows.
    lam : float
        lam > 0 of the first-order weights (budget n).

    Returns
    -------
    BoundsReport
        Delta^2, the bounds, per-target errors and ratios, and the bias and isotropy statistics
        of the errors e_i = (g_hat_i - g_i) / ||g_i||.
    """
    exact = np.asarray(exact, dtype=np.float64)
    approx = np.asarray(approx, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    _check_stores(exact, approx, targets)
    lam = check_lam(lam)
    if lam == 0:
        raise InvalidInputError("lam must be > 0 (the weight bound is n Delta^2 / (lam^2 d)); got 0")

    norms = _unit_rows(exact, "exact")
    G = exact / norms[:, None]
    G_hat = approx / norms[:, None]
    T = targets / _unit_rows(targets, "targets")[:, None]
    n, dim = G.shape
    errors = G_hat - G

    delta_squared = float(np.mean(np.sum(errors**2, axis=1)))
    score_bound = score_error_bound(n, delta_squared, dim)
    weight_bound = weight_error_bound(n, delta_squared, dim, lam)

    rows = []
    for j in range(T.shape[0]):
        p = G @ T[j]
        p_hat = G_hat @ T[j]
        score_error = float(np.sum((p - p_hat) ** 2))
        w = first_order_weights(p, lam)
        w_hat = first_order_weights(p_hat, lam)
        weight_error = float(np.sum((w - w_hat) ** 2))
        ratio = _ratio(np.sqrt(weight_error), np.sqrt(score_error) / lam)
        rows.append(TargetRow(
            target=j,
            score_error=score_error,
            score_ratio=_ratio(score_error, score_bound),
            weight_error=weight_error,
            weight_ratio=_ratio(weight_error, weight_bound),
            lipschitz_ratio=float(ratio),
            lipschitz_holds=bool(ratio <= 1.0 + LIPSCHITZ_RTOL),
        ))

    mean_error = errors.mean(axis=0)
    centered = errors - mean_error
    coordinate_second = np.mean(centered**2, axis=0)
    trace = float(np.sum(centered**2)) / (n - 1)
    report = BoundsReport(
        n=n,
        dim=dim,
        num_targets=T.shape[0],
        lam=lam,
        delta_squared=delta_squared,
        score_bound=score_bound,
        weight_bound=weight_bound,
        targets=rows,
        mean_score_ratio=float(np.mean([row.score_ratio for row in rows])),
        bias_norm=float(np.linalg.norm(mean_error)),
        bias_norm_expected=float(np.sqrt(trace / n)),
        radial_bias=estimate_mean(np.sum(errors * G, axis=1)),
        eigenvalue_ratio=eigenvalue_ratio(centered),
        eigenvalue_ratio_isotropic=float(isotropic_eigenvalue_ratio(n, dim)),
        coordinate_spread=_coefficient_of_variation(coordinate_second),
        coordinate_spread_isotropic=_isotropic_spread(centered, coordinate_second),
    )
    logger.info(
        "bounds report: n=%d d=%d targets=%d Delta^2=%.4g mean ratio to n Delta^2/d=%.3g",
        n, dim, T.shape[0], delta_squared, report.mean_score_ratio,
    )
    return report


def _ratio(value: float, bound: float) -> float:
    if bound > 0:
        return value / bound
    return 0.0 if value == 0 else float("inf")


def _coefficient_of_variation(values: np.ndarray) -> float:
    mean = float(np.mean(values))
    return float(np.std(values)) / mean if mean > 0 else float("nan")


def _isotropic_spread(centered: np.ndarray, coordinate_second: np.ndarray) -> float:
    """Return the coefficient of variation of v_j that sampling noise alone gives under equal variances.

    Each v_j is a mean of n draws of (e_ij - m_j)^2, so its standard deviation is about
    sqrt(Var_i((e_ij - m_j)^2) / n); the value pooled over j is used for every coordinate.
    """
    n = centered.shape[0]
    mean = float(np.mean(coordinate_second))
    if mean == 0:
        return float("nan")
    pooled = float(np.mean(np.var(centered**2, axis=0, ddof=1)))
    return float(np.sqrt(pooled / n)) / mean


def bounds_report_from_files(exact_path, approx_path, targets_path, lam: float) -> BoundsReport:
    """Load the three .npy stores and return :func:`compute_bounds_report`, with the file paths recorded."""
    exact = load_array(exact_path, "--exact")
    approx = load_array(approx_path, "--approx")
    targets = load_array(targets_path, "--targets")
    report = compute_bounds_report(exact, approx, targets, lam)
    report.sources = {"exact": str(exact_path), "approx": str(approx_path), "targets": str(targets_path)}
    return report


def format_bounds_report(report: BoundsReport, max_rows: int = 50) -> str:
    """Format the report as a text table with an assumptions section."""
    lines = [
        f"samples n = {report.n}, dimension d = {report.dim}, targets m = {report.num_targets}, lam = {report.lam:.6g}",
        f"Delta^2 (mean squared error of unit-normalized gradients) = {report.delta_squared:.6g}",
        f"bound on ||p - p_hat||^2:   n Delta^2 / d         = {report.score_bound:.6g}",
        f"bound on ||w - w_hat||^2:   n Delta^2 / (lam^2 d) = {report.weight_bound:.6g}",
        "",
        f"{'target':>6}  {'||p-p_hat||^2':>14} {'/bound':>8}  {'||w-w_hat||^2':>14} {'/bound':>8}  "
        f"{'Lipschitz':>9}",
    ]
    for row in report.targets[:max_rows]:
        verdict = f"{row.lipschitz_ratio:.3f}" + ("" if row.lipschitz_holds else " FAIL")
        lines.append(
            f"{row.target:>6}  {row.score_error:>14.6g} {row.score_ratio:>8.3f}  "
            f"{row.weight_error:>14.6g} {row.weight_ratio:>8.3f}  {verdict:>9}"
        )
    if len(report.targets) > max_rows:
        lines.append(f"... {len(report.targets) - max_rows} more targets in the JSON output")
    lines.append(
        f"mean ratio ||p-p_hat||^2 / bound over targets: {report.mean_score_ratio:.3f} "
        "(the bound holds on average over a random basis, so a fixed target may exceed 1; for "
        f"independent isotropic Gaussian errors each ratio is about 1 +- sqrt(2/n) = 1 +- {np.sqrt(2.0 / report.n):.3f})"
    )
    bias = report.radial_bias
    lines += [
        "",
        "assumptions (errors e_i = (g_hat_i - g_i) / ||g_i||)",
        f"  bias: ||mean e|| = {report.bias_norm:.4g}, expected without a common bias "
        f"{report.bias_norm_expected:.4g} (ratio {_ratio(report.bias_norm, report.bias_norm_expected):.2f})",
        f"  bias along g_i: mean <e_i, g_i> = {bias.mean:.4g} +- {bias.standard_error:.2g} "
        f"(z = {bias.z_score(0.0):.1f}; 0 when unbiased, negative for shrinkage)",
        f"  isotropy: lambda_max / mean eigenvalue = {report.eigenvalue_ratio:.4g}, "
        f"isotropic Gaussian value {report.eigenvalue_ratio_isotropic:.4g}",
        f"  isotropy: per-coordinate variance spread (CV) = {report.coordinate_spread:.4g}, "
        f"sampling noise alone {report.coordinate_spread_isotropic:.4g}",
    ]
    return "\n".join(lines)


def write_json(report: BoundsReport, path: str | Path) -> Path:
    """Write :meth:`BoundsReport.to_dict` as indented JSON to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


__all__ = [
    "APPROX_FILE",
    "BoundsReport",
    "EXACT_FILE",
    "TARGETS_FILE",
    "TargetRow",
    "bounds_report_from_files",
    "compute_bounds_report",
    "format_bounds_report",
    "load_array",
    "run_files",
    "write_json",
]
