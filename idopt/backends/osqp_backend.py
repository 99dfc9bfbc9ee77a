"""OSQP backend (ADMM with solution polishing) for the weighting problem.

OSQP solves  minimize (1/2) x^T P x + q^T x  s.t.  l <= C x <= u. The weighting problem
is written in that form in one of two ways:

- Dense Q (or no Q): x = w, P = (eta/c) Q + lam I, q = -p, and the rows of C are
  1^T (with l = u = b) and the identity (with l = 0, u = +inf).
- Factored Q = A^T H A (A of shape (r, n)): x = (w, y) with y = A w in R^r,
  P = blockdiag(lam I_n, (eta/c) H) (H = I_r when absent), q = (-p, 0), and C has the
  extra rows [A, -I_r] with l = u = 0. P and C then have O(n + r n) non-zeros and no
  n x n matrix is formed. This needs H positive semidefinite, because P must be.

The sum row 1^T w = b is kept unscaled: scaling it to (1/n) 1^T w = 1 made OSQP report
"primal infeasible" at n = 10^6 (osqp 1.1.3). Tolerances are in :mod:`idopt.tolerances`.
"""

from __future__ import annotations

import importlib.util
import logging
import time

import numpy as np
from scipy import linalg, sparse

from idopt.backends.base import Backend, build_solution, check_warm_start, clean_weights, require_single_target
from idopt.errors import InvalidInputError, SolverError
from idopt.problem import WeightingProblem
from idopt.solution import Solution
from idopt.status import Status
from idopt.tolerances import tolerance_for

logger = logging.getLogger(__name__)

# OSQP's status_val codes (osqp.SolverStatus in osqp >= 1.0) mapped to the package's
# statuses before the certificate is checked. Codes not listed map to SOLVER_ERROR.
# The feasible set {w >= 0, 1^T w = b} is never empty and is bounded, so an
# infeasibility report is a numerical failure; it is still passed on as INFEASIBLE.
_STATUS_BY_CODE = {
    1: Status.OPTIMAL,  # OSQP_SOLVED
    2: Status.INACCURATE,  # OSQP_SOLVED_INACCURATE
    3: Status.INFEASIBLE,  # OSQP_PRIMAL_INFEASIBLE
    4: Status.INFEASIBLE,  # OSQP_PRIMAL_INFEASIBLE_INACCURATE
    5: Status.SOLVER_ERROR,  # OSQP_DUAL_INFEASIBLE: impossible for a bounded feasible set
    6: Status.SOLVER_ERROR,  # OSQP_DUAL_INFEASIBLE_INACCURATE
    7: Status.ITERATION_LIMIT,  # OSQP_MAX_ITER_REACHED
    8: Status.TIME_LIMIT,  # OSQP_TIME_LIMIT_REACHED
    9: Status.SOLVER_ERROR,  # OSQP_NON_CVX
    10: Status.SOLVER_ERROR,  # OSQP_SIGINT
    11: Status.SOLVER_ERROR,  # OSQP_UNSOLVED
}

# info.status_polish: 1 means the polished point was accepted; 0 (not run) and negative
# values (failed) leave the ADMM iterate, which is then only as accurate as eps.
_POLISH_SUCCESS = 1

DEFAULT_MAX_ITER = 200_000


def _import_osqp():
    if importlib.util.find_spec("osqp") is None:
        raise ImportError("the OSQP backend needs the osqp package: pip install 'idopt[qp]'")
    import osqp

    return osqp


def map_osqp_status(code: int) -> Status:
    """Return the package status of an OSQP ``info.status_val``; unknown codes give SOLVER_ERROR."""
    return _STATUS_BY_CODE.get(int(code), Status.SOLVER_ERROR)


def _check_middle_psd(H: np.ndarray) -> None:
    values = linalg.eigvalsh(H)
    scale = max(float(np.max(np.abs(values))), 1e-300)
    if values[0] < -1e-12 * scale:
        raise InvalidInputError(
            f"method 'osqp' with a factored Q = A^T H A needs H positive semidefinite (the lifted "
            f"form puts (eta/c) H in the QP's P matrix), but the smallest eigenvalue of H is "
            f"{values[0]:.6g}. Use method='active_set' or pass the dense Q = A^T H A"
        )


def qp_matrices(problem: WeightingProblem) -> tuple[sparse.csc_matrix, sparse.csc_matrix, np.ndarray, np.ndarray]:
    """Build OSQP's P (upper triangle), C, l and u for ``problem``; see the module docstring.

    Returns
    -------
    (P, C, l, u)
        P of shape (n, n) or (n + r, n + r) (factored Q), C with n + 1 (+ r) rows.
    """
    n = problem.n
    lam = problem.lam
    sum_row = sparse.csr_matrix(np.ones((1, n)))
    identity = sparse.identity(n, format="csr")

    if problem.has_quadratic and problem.A is not None:
        A = problem.A
        r = A.shape[0]
        if problem.H is not None:
            _check_middle_psd(problem.H)
            middle = sparse.csr_matrix(problem.curvature * problem.H)
        else:
            middle = problem.curvature * sparse.identity(r, format="csr")
        P = sparse.block_diag([lam * identity, middle], format="csc")
        C = sparse.vstack(
            [
                sparse.hstack([sum_row, sparse.csr_matrix((1, r))]),
                sparse.hstack([identity, sparse.csr_matrix((n, r))]),
                sparse.hstack([sparse.csr_matrix(A), -sparse.identity(r, format="csr")]),
            ],
            format="csc",
        )
        lower = np.concatenate([[problem.budget], np.zeros(n), np.zeros(r)])
        upper = np.concatenate([[problem.budget], np.full(n, np.inf), np.zeros(r)])
    else:
        if problem.has_quadratic:
            P = sparse.csc_matrix(problem.dense_hessian())
        else:
            P = (lam * identity).tocsc()
        C = sparse.vstack([sum_row, identity], format="csc")
        lower = np.concatenate([[problem.budget], np.zeros(n)])
        upper = np.concatenate([[problem.budget], np.full(n, np.inf)])
    return sparse.triu(P, format="csc"), C, lower, upper


def _linear_term(problem: WeightingProblem, p: np.ndarray, size: int) -> np.ndarray:
    q = np.zeros(size)
    q[: problem.n] = -p
    return q


def _start_point(problem: WeightingProblem, w0: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return OSQP's primal and dual start (x0, y0) for the weights w0.

    OSQP's multipliers satisfy P x + q + C^T y = 0. With g = grad F(w0), nu its mean on
    the support of w0 and mu = g - nu, that gives y = -nu for the sum row, y = -mu for
    the bound rows and, in the lifted form, y = (eta/c) H A w0 for the rows A w - y = 0.
    Without the dual part a warm start saves no ADMM iterations.
    """
    grad = problem.gradient(w0)
    positive = w0 > 0
    nu = float(np.mean(grad[positive])) if positive.any() else float(np.min(grad))
    x0 = np.zeros(size)
    x0[: problem.n] = w0
    duals = [[-nu], -(grad - nu)]
    if size > problem.n:
        projected = problem.A @ w0
        x0[problem.n :] = projected
        middle = projected if problem.H is None else problem.H @ projected
        duals.append(problem.curvature * middle)
    return x0, np.concatenate(duals)


class OSQPBackend(Backend):
    """OSQP with tight tolerances and polishing; see the module docstring for the QP form.

    Options of :meth:`solve`
    ------------------------
    w0 : (n,) float array, optional
        Warm start for the weights (the lifted variable y starts at A w0).
    max_iter : int, default 200000
        ADMM iteration limit.
    time_limit : float, optional
        Wall-time limit in seconds (OSQP's time_limit); none by default.
    eps : float, optional
        eps_abs = eps_rel; default from :mod:`idopt.tolerances` (1e-9).
    polish : bool, default True
        Run OSQP's polishing step.
    verbose : bool, default False
        Let OSQP print its iteration log.
    """

    name = "osqp"
    supports_factored = True
    supports_warm_start = True
    exact = False
    requires = ("osqp",)
    options = frozenset({"w0", "max_iter", "time_limit", "eps", "polish", "verbose"})

    def _settings(self, options: dict) -> dict:
        eps = options.get("eps", tolerance_for(self.name).solver)
        settings = {
            "eps_abs": float(eps),
            "eps_rel": float(eps),
            "polishing": bool(options.get("polish", True)),
            "polish_refine_iter": 10,
            "max_iter": int(options.get("max_iter", DEFAULT_MAX_ITER)),
            "verbose": bool(options.get("verbose", False)),
            "warm_starting": True,
        }
        if options.get("time_limit") is not None:
            settings["time_limit"] = float(options["time_limit"])
        return settings

    def _setup(self, problem: WeightingProblem, p: np.ndarray, options: dict):
        osqp = _import_osqp()
        P, C, lower, upper = qp_matrices(problem)
        q = _linear_term(problem, p, P.shape[0])
        solver = osqp.OSQP()
        try:
            solver.setup(P, q, C, lower, upper, **self._settings(options))
        except osqp.OSQPException as error:
            raise SolverError(f"OSQP setup failed for n={problem.n}: {error}") from error
        return solver, P.shape[0]

    def _run(self, solver, column: WeightingProblem, started: float) -> Solution:
        osqp = _import_osqp()
        try:
            result = solver.solve(raise_error=False)
        except osqp.OSQPException as error:
            raise SolverError(f"OSQP failed for n={column.n}: {error}") from error
        info = result.info
        solver_status = map_osqp_status(info.status_val)
        polished = int(info.status_polish) == _POLISH_SUCCESS
        extras = {
            "osqp_status": str(info.status),
            "osqp_status_polish": int(info.status_polish),
            "polished": polished,
        }
        if solver_status is Status.OPTIMAL and not polished:
            logger.info("OSQP polishing did not succeed (status_polish=%s); using the ADMM iterate", info.status_polish)
        w = np.zeros(column.n)
        if solver_status.has_solution:
            w, cleaning = clean_weights(np.array(result.x[: column.n]), tolerance_for(self.name).support)
            extras.update(cleaning)
        return build_solution(
            column,
            w,
            solver_status=solver_status,
            certificate_tol=tolerance_for(self.name).certificate,
            iterations=info.iter,
            started=started,
            method="osqp:polished" if polished else "osqp",
            extras=extras,
            refine=not polished,
        )

    def solve(self, problem: WeightingProblem, **options) -> Solution:
        """Solve a single-target problem with OSQP; see the class docstring for the options.

        Returns
        -------
        Solution
            Status from OSQP's status mapped by :func:`map_osqp_status`, then set by the
            certificate (see :func:`idopt.backends.base.build_solution`). extras contains
            osqp_status, osqp_status_polish, polished and the weights set to zero.

        Raises
        ------
        SolverError
            If OSQP raises during setup or solve (chained).
        InvalidInputError
            For unknown options, a bad w0, or an indefinite H with a factored Q.
        """
        started = time.perf_counter()
        self.check_options(options)
        require_single_target(problem, self.name)
        w0 = check_warm_start(options.get("w0"), problem.n)
        solver, size = self._setup(problem, problem.p, options)
        if w0 is not None:
            x0, y0 = _start_point(problem, w0, size)
            solver.warm_start(x=x0, y=y0)
        return self._run(solver, problem, started)

    def solve_columns(self, problem: WeightingProblem, **options) -> tuple[Solution, ...]:
        """Solve every target column with one OSQP setup, changing only q between columns.

        Each column starts from the previous column's solution (OSQP's warm start), so
        the factorization of the KKT matrix is computed once.
        """
        self.check_options(options)
        if "w0" in options:
            raise InvalidInputError("w0 applies to a single target; solve the columns one by one to warm-start each")
        started = time.perf_counter()
        first = problem.column(0)
        solver, size = self._setup(problem, first.p, options)
        solutions = []
        for j in range(problem.num_targets):
            column = problem.column(j)
            if j > 0:
                solver.update(q=_linear_term(problem, column.p, size))
                started = time.perf_counter()
            solutions.append(self._run(solver, column, started))
        return tuple(solutions)
