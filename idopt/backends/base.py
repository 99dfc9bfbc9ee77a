"""Interface of the weighting-problem backends and the steps they share.

A backend solves one single-target :class:`~idopt.problem.WeightingProblem`

    minimize F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2  s.t.  w >= 0, 1^T w = b

and returns a :class:`~idopt.solution.Solution`. Backends report what happened in the
status and never warn or raise for an inaccurate result themselves. The failure policy
(warning, exception) is applied once, by :func:`idopt.solve.solve`.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import time
from typing import ClassVar

import numpy as np
from scipy import linalg

from idopt.certificate import KKTCertificate, kkt_certificate
from idopt.errors import InvalidInputError
from idopt.problem import WeightingProblem
from idopt.solution import Solution
from idopt.status import Status

logger = logging.getLogger(__name__)


class Backend(abc.ABC):
    """A solver of single-target weighting problems.

    Capabilities are class attributes, so they can be read without an instance.

    Attributes
    ----------
    name : str
        Method name used by :func:`idopt.solve.solve` and the tolerance table.
    supports_factored : bool
        Whether a factored Q = A^T H A is used without forming the n x n matrix.
    supports_warm_start : bool
        Whether the ``w0`` option (a starting point, shape (n,)) is used.
    exact : bool
        Whether the weights come from a direct computation (rounding errors only) rather
        than from an iterative method that stops at a tolerance.
    requires : tuple of str
        Importable modules the backend needs; see :meth:`available`.
    options : frozenset of str
        Keyword options accepted by :meth:`solve`.
    """

    name: ClassVar[str]
    supports_factored: ClassVar[bool] = False
    supports_warm_start: ClassVar[bool] = False
    exact: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def available(cls) -> bool:
        """Check that every module in ``requires`` can be imported, without importing it."""
        return all(importlib.util.find_spec(module) is not None for module in cls.requires)

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise InvalidInputError naming any option the backend does not accept."""
        unknown = sorted(set(options) - cls.options)
        if unknown:
            allowed = ", ".join(sorted(cls.options)) or "none"
            raise InvalidInputError(
                f"method {cls.name!r} does not accept the option(s) {', '.join(unknown)}; allowed: {allowed}"
            )

    @abc.abstractmethod
    def solve(self, problem: WeightingProblem, **options) -> Solution:
        """Solve a single-target problem (p of shape (n,)) and return the raw result."""

    def solve_columns(self, problem: WeightingProblem, **options) -> tuple[Solution, ...]:
        """Solve every target column of ``problem``, one Solution per column.

        Backends that can reuse work between columns (a factorization, a compiled
        problem) override this; the default solves the columns one by one.
        """
        return tuple(self.solve(problem.column(j), **options) for j in range(problem.num_targets))


def require_single_target(problem: WeightingProblem, method: str) -> None:
    """Raise InvalidInputError unless p is a vector (one target)."""
    if problem.p.ndim != 1:
        raise InvalidInputError(
            f"method {method!r} solves one target at a time, but p has shape {problem.p.shape}; "
            "pass problem.column(j) or use idopt.solve.solve, which loops over the columns"
        )


def check_warm_start(w0, n: int) -> np.ndarray | None:
    """Return ``w0`` as a finite float64 array of shape (n,), or None."""
    if w0 is None:
        return None
    array = np.asarray(w0)
    if array.dtype.kind != "f" or array.shape != (n,):
        raise InvalidInputError(
            f"w0 must be a float array of shape ({n},) (a starting point for the weights); "
            f"got dtype {array.dtype} and shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("w0 must be finite; it contains NaN or infinite values")
    return array.astype(np.float64, copy=False)


def certify(problem: WeightingProblem, w: np.ndarray) -> tuple[float, KKTCertificate]:
    """Compute F(w) and the KKT certificate of ``w`` from the problem alone.

    The gradient residuals are scaled by the largest term of grad F(w) (see
    :meth:`WeightingProblem.gradient_scale`), the weight residuals by the budget b.

    Returns
    -------
    (float, KKTCertificate)
        The objective F(w) and the certificate.
    """
    grad = problem.gradient(w)
    certificate = kkt_certificate(w, grad, problem.budget, grad_scale=problem.gradient_scale(w))
    return problem.objective(w), certificate


def clean_weights(x: np.ndarray, support_tol: float) -> tuple[np.ndarray, dict]:
    """Set the weights an iterative solver left near zero to exactly zero.

    Entries with x_i <= support_tol * max(x) (negative ones included) become 0. The
    other entries are kept as they are, so the sum drifts from b by the mass removed, and
    the certificate's primal residual shows that drift. Rescaling instead would move
    every weight on the support.

    Returns
    -------
    (numpy.ndarray, dict)
        The weights, shape (n,), and {"zeroed": count, "zeroed_mass": sum of the positive
        entries removed, "min_raw": min(x)}.
    """
    w = np.array(x, dtype=np.float64)
    largest = float(np.max(w)) if w.size else 0.0
    small = w <= support_tol * max(largest, 0.0)
    info = {
        "zeroed": int(np.count_nonzero(small & (w != 0.0))),
        "zeroed_mass": float(np.sum(np.maximum(w[small], 0.0))),
        "min_raw": float(np.min(w)) if w.size else 0.0,
    }
    w[small] = 0.0
    return w, info


# Largest support on which :func:`refine_on_support` forms and factors the Hessian
# block. The cost is O(|S|^2 r + |S|^3), estimated at a few seconds for |S| = 3000 on one core.
# NOTE: above this size Clarabel results are not refined and keep the interior-point
# accuracy, so they may come out INACCURATE at the 1e-8 certificate tolerance.
MAX_REFINE_SUPPORT = 3000


def _hessian_block(problem: WeightingProblem, support: np.ndarray) -> np.ndarray:
    """Return the block of (eta/c) Q + lam I on the rows and columns in ``support``."""
    size = support.shape[0]
    block = problem.lam * np.eye(size)
    if problem.has_quadratic:
        if problem.Q is not None:
            block += problem.curvature * problem.Q[np.ix_(support, support)]
        else:
            columns = problem.A[:, support]
            middle = columns if problem.H is None else problem.H @ columns
            block += problem.curvature * (columns.T @ middle)
    return block


def refine_on_support(problem: WeightingProblem, w: np.ndarray) -> np.ndarray | None:
    """Solve the KKT system exactly on the support guessed from an approximate ``w``.

    Support guess: with g = grad F(w), nu = the mean of g over {w_i > 0} and
    mu_i = g_i - nu, sample i is kept when h_ii * w_i > mu_i, h_ii being the Hessian
    diagonal; both sides are in gradient units. On the support S the equality-constrained
    problem gives

        H_SS w_S = p_S + nu 1,   1^T w_S = b,
        nu = (b - 1^T H_SS^-1 p_S) / (1^T H_SS^-1 1),

    solved with a Cholesky factorization of H_SS. This is the step OSQP's polishing
    performs, applied here to any backend's output.

    Returns
    -------
    numpy.ndarray or None
        The refined weights, shape (n,), or None when the problem is a linear program
        (H_SS = 0), the support is empty or larger than MAX_REFINE_SUPPORT, H_SS is not
        positive definite, or a refined weight is <= 0 (the guess was wrong).
    """
    if not problem.has_quadratic and problem.lam == 0.0:
        return None
    grad = problem.gradient(w)
    positive = w > 0
    if not positive.any():
        return None
    multipliers = grad - float(np.mean(grad[positive]))
    diagonal = problem.lam + (problem.curvature * _quad_diagonal(problem) if problem.has_quadratic else 0.0)
    support = np.flatnonzero(diagonal * w > multipliers)
    if support.shape[0] == 0 or support.shape[0] > MAX_REFINE_SUPPORT:
        return None
    try:
        factor = linalg.cho_factor(_hessian_block(problem, support), lower=True)
    except linalg.LinAlgError:
        return None
    solved_p = linalg.cho_solve(factor, problem.p[support])
    solved_one = linalg.cho_solve(factor, np.ones(support.shape[0]))
    nu = (problem.budget - float(np.sum(solved_p))) / float(np.sum(solved_one))
    weights = solved_p + nu * solved_one
    if not np.all(weights > 0):
        return None
    refined = np.zeros(problem.n)
    refined[support] = weights
    return refined


def _quad_diagonal(problem: WeightingProblem) -> np.ndarray:
    """Return the diagonal of Q, shape (n,), from the factor when Q is factored."""
    if problem.Q is not None:
        return np.diag(problem.Q).copy()
    middle = problem.A if problem.H is None else problem.H @ problem.A
    return np.einsum("ij,ij->j", problem.A, middle)


def status_from_certificate(solver_status: Status, certificate: KKTCertificate, tol: float) -> Status:
    """Return the status a result gets from its certificate.

    A backend status with usable weights (OPTIMAL, INACCURATE, ITERATION_LIMIT,
    TIME_LIMIT) becomes OPTIMAL when every relative KKT residual is <= ``tol``; a
    converged (OPTIMAL) result that misses ``tol`` becomes INACCURATE, and the other
    early stops keep their status. OPTIMAL_RESTRICTED, INFEASIBLE and SOLVER_ERROR are
    kept as they are.
    """
    if not solver_status.has_solution or solver_status is Status.OPTIMAL_RESTRICTED:
        return solver_status
    if certificate.passes(tol):
        return Status.OPTIMAL
    if solver_status is Status.OPTIMAL:
        return Status.INACCURATE
    return solver_status


def build_solution(
    problem: WeightingProblem,
    w: np.ndarray,
    *,
    solver_status: Status,
    certificate_tol: float,
    iterations: int,
    started: float,
    method: str,
    extras: dict | None = None,
    refine: bool = False,
) -> Solution:
    """Certify ``w`` and return a Solution whose status follows the certificate.

    With ``refine``, the point is replaced by :func:`refine_on_support` when that lowers
    the largest residual; extras["refined"] records whether it did.

    The status comes from :func:`status_from_certificate`. For INFEASIBLE and
    SOLVER_ERROR, w is set to zeros (not a usable result).
    """
    details = dict(extras or {})
    if not solver_status.has_solution:
        w = np.zeros(problem.n)
    objective, certificate = certify(problem, w)
    if refine and solver_status.has_solution:
        refined = refine_on_support(problem, w)
        if refined is not None:
            refined_objective, refined_certificate = certify(problem, refined)
            accepted = refined_certificate.max_residual < certificate.max_residual
            details["refined"] = accepted
            details["unrefined_max_residual"] = certificate.max_residual
            if accepted:
                w, objective, certificate = refined, refined_objective, refined_certificate
    status = status_from_certificate(solver_status, certificate, certificate_tol)
    details.setdefault("certificate_tol", certificate_tol)
    if status is not solver_status:
        details["solver_status"] = solver_status.value
    solution = Solution(
        w=w,
        nu=certificate.nu,
        objective=objective,
        status=status,
        iterations=int(iterations),
        wall_time_s=time.perf_counter() - started,
        method=method,
        certificate=certificate,
        lam=problem.lam,
        budget=problem.budget,
        support_size=int(np.count_nonzero(w > 0)),
        extras=details,
    )
    logger.debug(
        "%s: n=%s lam=%s status=%s support=%s max_residual=%.3e",
        method, problem.n, problem.lam, status.value, solution.support_size, certificate.max_residual,
    )
    return solution
