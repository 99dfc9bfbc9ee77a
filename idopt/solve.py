"""One entry point for the weighting problem: method choice, fallback and failure policy.

:func:`solve` takes a :class:`~idopt.problem.WeightingProblem`

    minimize F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2  s.t.  w >= 0, 1^T w = b

and returns one :class:`~idopt.solution.Solution` per target column. Failure policy,
applied here and nowhere else (:func:`apply_failure_policy`):

- OPTIMAL, OPTIMAL_RESTRICTED: returned as they are.
- INACCURATE, ITERATION_LIMIT, TIME_LIMIT: returned with an InaccurateSolutionWarning.
- INFEASIBLE: returned with w = 0 and logged at WARNING level.
- SOLVER_ERROR: raises SolverError. Exceptions of a backend library are raised as
  SolverError chained to the original by the backends themselves.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import replace

from idopt.backends.base import Backend, certify, status_from_certificate
from idopt.backends.cvxpy_backend import CVXPYBackend
from idopt.backends.osqp_backend import OSQPBackend
from idopt.errors import InaccurateSolutionWarning, InvalidInputError, SolverError
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.solution import Solution
from idopt.status import Status
from idopt.tolerances import tolerance_for

logger = logging.getLogger(__name__)


class ClosedFormBackend(Backend):
    """The exact first-order solution (no quadratic term), see :func:`idopt.first_order.solve_first_order`.

    lam > 0: the projection of p / lam onto the scaled simplex. lam = 0: the linear
    program, solved by splitting b evenly over the maximal scores.
    """

    name = "closed_form"
    supports_factored = True
    supports_warm_start = False
    exact = True

    def solve(self, problem: WeightingProblem, **options) -> Solution:
        """Solve a single-target problem without a quadratic term (Q absent or eta = 0)."""
        self.check_options(options)
        if problem.has_quadratic:
            raise InvalidInputError(
                f"method 'closed_form' needs a problem without a quadratic term (eta = 0 or no Q), "
                f"got eta = {problem.eta} with {'a dense Q' if problem.Q is not None else 'a factored Q'}; "
                "use method='auto', 'active_set', 'osqp' or 'cvxpy'"
            )
        tol = tolerance_for(self.name).certificate
        with warnings.catch_warnings():
            # The failure policy in apply_failure_policy warns once for the whole solve.
            warnings.simplefilter("ignore", InaccurateSolutionWarning)
            return solve_first_order(problem.p, problem.lam, problem.budget, tol=tol)


class ActiveSetBackend(Backend):
    """The primal-dual active-set method of :func:`idopt.active_set.solve_active_set`.

    Options: w0 (a feasible start, shape (n,)), max_iter (linear solves), tol
    (certificate tolerance, default from :mod:`idopt.tolerances`).
    """

    name = "active_set"
    supports_factored = True
    supports_warm_start = True
    exact = True
    requires = ("idopt.active_set",)
    options = frozenset({"w0", "max_iter", "tol"})

    def solve(self, problem: WeightingProblem, **options) -> Solution:
        """Solve a single-target problem with the active-set method."""
        self.check_options(options)
        from idopt.active_set import solve_active_set

        tol = options.get("tol", tolerance_for(self.name).certificate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InaccurateSolutionWarning)
            return solve_active_set(problem, target=0, w0=options.get("w0"), max_iter=options.get("max_iter"), tol=tol)


METHODS: dict[str, type[Backend]] = {
    "closed_form": ClosedFormBackend,
    "active_set": ActiveSetBackend,
    "osqp": OSQPBackend,
    "cvxpy": CVXPYBackend,
}
"""Solver methods by name; "auto" in :func:`solve` chooses among them."""

# Order in which "auto" tries the methods for a problem with a quadratic term.
AUTO_ORDER = ("active_set", "osqp", "cvxpy")

# Statuses after which "auto" tries the next method instead of returning.
FALLBACK_STATUSES = frozenset({Status.ITERATION_LIMIT, Status.TIME_LIMIT, Status.INACCURATE, Status.SOLVER_ERROR})

_QP_INSTALL_HINT = "pip install 'idopt[qp]'"


def available_methods() -> tuple[str, ...]:
    """Return the names in :data:`METHODS` whose required modules are installed (checked with find_spec)."""
    return tuple(name for name, backend in METHODS.items() if backend.available())


def apply_failure_policy(solution: Solution, *, stacklevel: int = 3) -> Solution:
    """Apply the package's failure policy to one result (see the module docstring).

    Returns
    -------
    Solution
        The same object, unless it raises.

    Raises
    ------
    SolverError
        If the status is SOLVER_ERROR.
    """
    status = solution.status
    if status is Status.SOLVER_ERROR:
        reason = solution.extras.get("reason", "no reason reported")
        raise SolverError(f"{solution.method} failed: {reason}")
    if status is Status.INFEASIBLE:
        logger.warning("%s reported the problem as infeasible; no weights were returned", solution.method)
    elif status in (Status.INACCURATE, Status.ITERATION_LIMIT, Status.TIME_LIMIT):
        warnings.warn(
            f"{solution.method} returned status {status.value}: the largest relative KKT residual is "
            f"{solution.certificate.max_residual:.3e}, above the tolerance "
            f"{solution.extras.get('certificate_tol', float('nan')):.1e}. "
            f"{solution.extras.get('reason', '')}".rstrip(),
            InaccurateSolutionWarning,
            stacklevel=stacklevel,
        )
    return solution


def _check_method(method) -> str:
    choices = ("auto", *METHODS)
    if not isinstance(method, str) or method not in choices:
        raise InvalidInputError(f"method must be one of {', '.join(repr(c) for c in choices)}; got {method!r}")
    if method != "auto" and not METHODS[method].available():
        missing = ", ".join(METHODS[method].requires)
        raise ImportError(f"method {method!r} needs {missing}, which is not installed: {_QP_INSTALL_HINT}")
    return method


def _check_auto_options(options: dict, candidates: tuple[str, ...]) -> None:
    accepted = set().union(*(METHODS[name].options for name in candidates))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInputError(
            f"option(s) {', '.join(unknown)} are not accepted by any method that 'auto' may use "
            f"({', '.join(candidates)}); accepted: {', '.join(sorted(accepted)) or 'none'}"
        )


def _recertify(column: WeightingProblem, solution: Solution, tol: float, wall_time_s: float) -> Solution:
    """Recompute F(w) and the certificate from w and the problem, and set the status from them."""
    if not solution.status.has_solution:
        return replace(solution, wall_time_s=wall_time_s)
    objective, certificate = certify(column, solution.w)
    status = status_from_certificate(solution.status, certificate, tol)
    extras = dict(solution.extras)
    extras.setdefault("certificate_tol", tol)
    if status is not solution.status:
        extras["backend_status"] = solution.status.value
    return replace(
        solution,
        objective=objective,
        certificate=certificate,
        nu=certificate.nu,
        status=status,
        wall_time_s=wall_time_s,
        extras=extras,
    )


def _run_method(name: str, column: WeightingProblem, options: dict) -> Solution:
    backend = METHODS[name]()
    accepted = {key: value for key, value in options.items() if key in backend.options}
    return backend.solve(column, **accepted)


def _solve_auto(column: WeightingProblem, options: dict) -> Solution:
    """Try the methods of AUTO_ORDER in turn; see :func:`solve` for the rule."""
    tried: list[str] = []
    reasons: dict[str, str] = {}
    results: dict[str, Solution] = {}
    last_error: SolverError | None = None
    chosen: str | None = None
    for name in AUTO_ORDER:
        if not METHODS[name].available():
            logger.debug("auto: skipping %s, which is not installed", name)
            continue
        tried.append(name)
        try:
            solution = _run_method(name, column, options)
        except SolverError as error:
            last_error = error
            reasons[name] = f"raised SolverError: {error}"
        else:
            solution = _recertify(column, solution, tolerance_for(name).certificate, solution.wall_time_s)
            results[name] = solution
            if solution.status not in FALLBACK_STATUSES:
                chosen = name
                break
            reason = solution.extras.get("reason")
            reasons[name] = solution.status.value + (f": {reason}" if reason else "")
        logger.info("auto: %s did not solve the problem (%s); trying the next method", name, reasons[name])

    if not tried:
        raise ImportError(
            f"the problem has a quadratic term and none of {', '.join(AUTO_ORDER)} is installed: {_QP_INSTALL_HINT}"
        )
    if chosen is None:
        # Every method failed: return the usable result with the smallest residual, if any.
        usable = [name for name, solution in results.items() if solution.status.has_solution]
        if usable:
            chosen = min(usable, key=lambda name: results[name].certificate.max_residual)
        elif results:
            chosen = next(reversed(results))
        else:
            raise last_error
    solution = results[chosen]
    fallback_from = tuple(name for name in tried if name != chosen)
    if fallback_from:
        extras = dict(solution.extras)
        extras["fallback_from"] = fallback_from
        extras["fallback_reasons"] = reasons
        extras["methods_tried"] = tuple(tried)
        solution = replace(solution, extras=extras)
    return solution


def _solve_column(column: WeightingProblem, method: str, options: dict) -> Solution:
    started = time.perf_counter()
    if method == "auto" and not column.has_quadratic:
        method = "closed_form"
    if method == "auto":
        solution = _solve_auto(column, options)
    else:
        solution = _run_method(method, column, options)
        solution = _recertify(column, solution, tolerance_for(method).certificate, solution.wall_time_s)
    return replace(solution, wall_time_s=time.perf_counter() - started)


def solve(problem: WeightingProblem, method: str = "auto", *, target: int | None = None, **options):
    """Solve the weighting problem for one or every target column.

    Solves  minimize F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2
            s.t.     w >= 0,  1^T w = b
    for each column of p.

    Methods:

    - "closed_form": no quadratic term only (Q absent or eta = 0); exact projection for
      lam > 0, the linear program's even split over the maximal scores for lam = 0.
    - "active_set": primal-dual active set, exact up to rounding.
    - "osqp": OSQP with tight tolerances and polishing (factored Q in lifted form).
    - "cvxpy": CVXPY, Clarabel unless ``solver=`` names another installed solver.
    - "auto": "closed_form" without a quadratic term. Otherwise "active_set", then
      "osqp", then "cvxpy" (the installed ones, in that order): a method that returns
      ITERATION_LIMIT, TIME_LIMIT, INACCURATE or SOLVER_ERROR, or raises SolverError,
      hands over to the next one. If all fail, the usable result with the smallest KKT
      residual is returned (or the last SolverError raised). The other methods tried are
      in extras["fallback_from"] (a tuple), with reasons in extras["fallback_reasons"] and
      the order in extras["methods_tried"]; each hand-over is logged at INFO level.

    Every returned Solution carries a certificate recomputed here from w and the problem
    (see :func:`idopt.backends.base.certify`), and its status follows that certificate:
    OPTIMAL needs every relative residual <= the method's tolerance in
    :mod:`idopt.tolerances`. Then :func:`apply_failure_policy` runs on each result.

    Parameters
    ----------
    problem : WeightingProblem
        The problem; p of shape (n,) or (n, m).
    method : {"auto", "closed_form", "active_set", "osqp", "cvxpy"}
        See above.
    target : int, optional
        Solve only column ``target`` of p and return one Solution.
    **options
        Method options, e.g. w0 (warm start, (n,)), max_iter, time_limit (s), eps
        (OSQP), solver and solver_options (CVXPY). With "auto" each method receives the
        options it accepts; an option no candidate accepts is an error.

    Returns
    -------
    Solution or tuple of Solution
        One Solution when p is a vector or ``target`` is given, else a tuple with one
        Solution per column of p (a tuple of length 1 for p of shape (n, 1)).

    Raises
    ------
    InvalidInputError
        For an unknown method or option, an out-of-range target, or a problem the method
        cannot take (a quadratic term with "closed_form").
    ImportError
        If the method's package is not installed (the message names the extra to install).
    SolverError
        If the result's status is SOLVER_ERROR, or the backend raised.
    """
    if not isinstance(problem, WeightingProblem):
        raise InvalidInputError(
            f"problem must be an idopt.problem.WeightingProblem (build it with WeightingProblem.create); "
            f"got {type(problem).__name__}"
        )
    method = _check_method(method)
    if method == "auto":
        candidates = ("closed_form",) if not problem.has_quadratic else AUTO_ORDER
        _check_auto_options(options, candidates)
    else:
        METHODS[method].check_options(options)

    if target is not None:
        if isinstance(target, bool) or not isinstance(target, int):
            raise InvalidInputError(f"target must be an int column index of p; got {target!r}")
        column = problem.column(target)
        return apply_failure_policy(_solve_column(column, method, options))

    if problem.p.ndim == 1:
        return apply_failure_policy(_solve_column(problem, method, options))

    if method in ("osqp", "cvxpy") and "w0" not in options:
        # One setup or compilation for all columns.
        started = time.perf_counter()
        raw = METHODS[method]().solve_columns(problem, **options)
        tol = tolerance_for(method).certificate
        solutions = [_recertify(problem.column(j), s, tol, s.wall_time_s) for j, s in enumerate(raw)]
        logger.debug("%s: solved %s columns in %.3f s", method, len(solutions), time.perf_counter() - started)
    else:
        solutions = [_solve_column(problem.column(j), method, options) for j in range(problem.num_targets)]
    return tuple(apply_failure_policy(solution) for solution in solutions)


__all__ = [
    "AUTO_ORDER",
    "METHODS",
    "ActiveSetBackend",
    "ClosedFormBackend",
    "apply_failure_policy",
    "available_methods",
    "solve",
]
