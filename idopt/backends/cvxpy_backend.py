"""CVXPY backend: the weighting problem as a CVXPY model, Clarabel by default.

The objective is written with ``sum_squares`` of a factor, never with ``quad_form``,
because CVXPY checks ``quad_form(w, Q)`` for PSD-ness numerically and rejects a
rank-deficient Q as non-convex:

- factored Q = A^T H A: (eta/2c) ||L^T A w||^2 with H = L L^T, or (eta/2c) ||A w||^2
  when H is absent, plus (lam/2) ||w||^2;
- dense Q: (1/2) ||L^T w||^2 with L L^T = (eta/c) Q + lam I (Cholesky, or an eigenvalue
  factor when the matrix is only semidefinite), so Q itself may be indefinite as long as
  the Hessian is PSD.

p enters as a CVXPY Parameter, so the model is compiled once and reused for every
target column.
"""

from __future__ import annotations

import importlib.util
import logging
import time

import numpy as np
from scipy import linalg

from idopt.backends.base import Backend, build_solution, clean_weights, require_single_target
from idopt.errors import InvalidInputError, SolverError
from idopt.problem import WeightingProblem
from idopt.solution import Solution
from idopt.status import Status
from idopt.tolerances import tolerance_for

logger = logging.getLogger(__name__)

DEFAULT_SOLVER = "CLARABEL"

# CVXPY's problem.status strings (cvxpy 1.9) mapped to the package's statuses before
# the certificate is checked; any other string maps to SOLVER_ERROR. Clarabel's
# "AlmostSolved" arrives as "optimal_inaccurate" and becomes OPTIMAL only when the
# certificate passes. The feasible set is non-empty and bounded, so "unbounded" can
# only come from a numerical failure.
_STATUS_BY_NAME = {
    "optimal": Status.OPTIMAL,
    "optimal_inaccurate": Status.INACCURATE,
    "infeasible": Status.INFEASIBLE,
    "infeasible_inaccurate": Status.INFEASIBLE,
    "unbounded": Status.SOLVER_ERROR,
    "unbounded_inaccurate": Status.SOLVER_ERROR,
    "infeasible_or_unbounded": Status.SOLVER_ERROR,
    "user_limit": Status.ITERATION_LIMIT,
    "solver_error": Status.SOLVER_ERROR,
}


def map_cvxpy_status(name) -> Status:
    """Return the package status of a CVXPY ``problem.status``; unknown values give SOLVER_ERROR."""
    return _STATUS_BY_NAME.get(str(name), Status.SOLVER_ERROR)


def _import_cvxpy():
    if importlib.util.find_spec("cvxpy") is None:
        raise ImportError("the CVXPY backend needs the cvxpy package: pip install 'idopt[qp]'")
    import cvxpy

    return cvxpy


def _default_solver_options(solver: str) -> dict:
    """Return tight stopping tolerances for solvers whose option names are known."""
    tol = tolerance_for("cvxpy").solver
    if solver == "CLARABEL":
        return {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol, "tol_ktratio": 1e-8, "max_iter": 500}
    return {}


def psd_factor(matrix: np.ndarray, name: str) -> np.ndarray:
    """Return L with L L^T = ``matrix`` for a symmetric PSD matrix (k x k).

    Cholesky is tried first; a matrix that is only semidefinite is factored from its
    eigenvalues, with eigenvalues down to -1e-12 * max|eigenvalue| rounded to 0.

    Raises
    ------
    InvalidInputError
        If an eigenvalue is below that threshold (the matrix is indefinite).
    """
    try:
        return linalg.cholesky(matrix, lower=True)
    except linalg.LinAlgError:
        pass
    values, vectors = linalg.eigh(matrix)
    scale = max(float(np.max(np.abs(values))), 1e-300)
    if values[0] < -1e-12 * scale:
        raise InvalidInputError(
            f"method 'cvxpy' needs {name} positive semidefinite to write the objective as a sum of "
            f"squares, but its smallest eigenvalue is {values[0]:.6g} (largest magnitude {scale:.6g}). "
            "Use method='active_set', or pass a dense Q so that only (eta/c) Q + lam I must be PSD"
        )
    return vectors * np.sqrt(np.maximum(values, 0.0))


class _Model:
    """A compiled CVXPY model of one problem, with p as a parameter."""

    def __init__(self, cp, problem: WeightingProblem):
        n = problem.n
        self.w = cp.Variable(n, nonneg=True)
        self.p = cp.Parameter(n)
        objective = -self.p @ self.w
        if problem.has_quadratic and problem.A is not None:
            if problem.lam > 0:
                objective = objective + 0.5 * problem.lam * cp.sum_squares(self.w)
            projected = problem.A @ self.w
            if problem.H is not None:
                projected = psd_factor(problem.H, "H").T @ projected
            objective = objective + 0.5 * problem.curvature * cp.sum_squares(projected)
        elif problem.has_quadratic:
            factor = psd_factor(problem.dense_hessian(), "(eta/c) Q + lam I")
            objective = objective + 0.5 * cp.sum_squares(factor.T @ self.w)
        elif problem.lam > 0:
            objective = objective + 0.5 * problem.lam * cp.sum_squares(self.w)
        constraints = [cp.sum(self.w) == problem.budget]
        self.model = cp.Problem(cp.Minimize(objective), constraints)


class CVXPYBackend(Backend):
    """Any CVXPY solver; Clarabel (interior point) unless ``solver`` names another.

    Options of :meth:`solve`
    ------------------------
    solver : str, default "CLARABEL"
        A name from ``cvxpy.installed_solvers()`` (case-insensitive), e.g. "SCS".
    solver_options : dict, optional
        Keyword arguments for the solver; they replace the package defaults (tight
        tolerances for Clarabel, none for other solvers).
    verbose : bool, default False
        Let the solver print its log.
    """

    name = "cvxpy"
    supports_factored = True
    supports_warm_start = False
    exact = False
    requires = ("cvxpy",)
    options = frozenset({"solver", "solver_options", "verbose"})

    def _solver_name(self, cp, options: dict) -> str:
        requested = options.get("solver", DEFAULT_SOLVER)
        installed = cp.installed_solvers()
        if not isinstance(requested, str) or requested.upper() not in installed:
            raise InvalidInputError(
                f"solver {requested!r} is not an installed CVXPY solver; installed: {', '.join(installed)}"
            )
        return requested.upper()

    def _run(self, cp, model: _Model, column: WeightingProblem, solver: str, options: dict) -> Solution:
        started = time.perf_counter()
        model.p.value = column.p
        settings = options.get("solver_options")
        if settings is None:
            settings = _default_solver_options(solver)
        elif not isinstance(settings, dict):
            raise InvalidInputError(f"solver_options must be a dict of solver settings; got {type(settings).__name__}")

        try:
            model.model.solve(solver=solver, verbose=bool(options.get("verbose", False)), **settings)
        except cp.error.SolverError as error:
            raise SolverError(f"CVXPY solver {solver} failed for n={column.n}: {error}") from error

        solver_status = map_cvxpy_status(model.model.status)
        stats = model.model.solver_stats
        iterations = stats.num_iters if stats is not None and stats.num_iters is not None else 0
        extras = {"cvxpy_status": str(model.model.status), "solver": solver}
        w = np.zeros(column.n)
        if solver_status.has_solution and model.w.value is not None:
            w, cleaning = clean_weights(np.asarray(model.w.value, dtype=np.float64), tolerance_for(self.name).support)
            extras.update(cleaning)
        elif solver_status.has_solution:
            solver_status = Status.SOLVER_ERROR
            extras["reason"] = "the solver returned no values for w"

        return build_solution(
            column,
            w,
            solver_status=solver_status,
            certificate_tol=tolerance_for(self.name).certificate,
            iterations=iterations,
            started=started,
            method=f"cvxpy:{solver.lower()}",
            extras=extras,
            refine=True,
        )

    def solve(self, problem: WeightingProblem, **options) -> Solution:
        """Solve a single-target problem through CVXPY; see the class docstring for the options.

        Returns
        -------
        Solution
            Status from :func:`map_cvxpy_status`, then set by the certificate.

        Raises
        ------
        InvalidInputError
            For an unknown option or solver name (the message lists the installed
            solvers), or an indefinite H / Hessian.
        SolverError
            If CVXPY raises ``cvxpy.error.SolverError`` (chained).
        """
        self.check_options(options)
        require_single_target(problem, self.name)
        return self.solve_columns(problem, **options)[0]

    def solve_columns(self, problem: WeightingProblem, **options) -> tuple[Solution, ...]:
        """Solve every target column with one compiled model, changing only the parameter p."""
        self.check_options(options)
        cp = _import_cvxpy()
        solver = self._solver_name(cp, options)
        model = _Model(cp, problem)
        return tuple(self._run(cp, model, problem.column(j), solver, options) for j in range(problem.num_targets))
