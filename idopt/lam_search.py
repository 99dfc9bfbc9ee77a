"""Choice of the l2 weight lam that gives a requested support size k.

The support of the weighting problem's solution,

    minimize F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2  s.t.  w >= 0, 1^T w = b,

grows with lam in the first-order case (no Q): from the maximal scores at lam -> 0 to all
n samples as lam -> infinity. There the lam giving exactly k non-zeros is known in
closed form (:func:`idopt.first_order.lam_interval_for_support`). With a quadratic term
the support size is not guaranteed to be monotone in lam. There lam is found by
bisection on log(lam - lam_min), with one solve per trial. lam_min is the smallest lam
for which (eta/c) Q + lam I is positive definite (0 for a PSD Q).

Ties: when several samples enter the support at the same lam (equal scores in the
first-order case), no lam gives exactly k non-zeros. The search then returns the
closest support size it can reach, the larger one when two are equally close, with
``exact = False`` and a warning.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy import linalg

from idopt.errors import InaccurateSolutionWarning, InvalidInputError, TieWarning
from idopt.first_order import lam_interval_for_support, solve_exact_k
from idopt.problem import WeightingProblem, factored_min_eigenvalue
from idopt.solution import Solution
from idopt.solve import METHODS, apply_failure_policy, solve
from idopt.validation import check_budget, check_k, check_scores

logger = logging.getLogger(__name__)

DEFAULT_MAX_EVALUATIONS = 80
# Bisection stops when the bracket [lo, hi] on lam - lam_min has log(hi / lo) below this.
LOG_BRACKET_TOL = 1e-10
# Factor by which the bracket is widened while looking for a support size on each side of k.
EXPANSION = 10.0


class SupportSizeWarning(UserWarning):
    """The lam search with a quadratic term could not reach exactly k non-zero weights."""


@dataclass(frozen=True)
class LamSearchResult:
    """Outcome of :func:`lam_for_support`.

    Attributes
    ----------
    lam : float
        The l2 weight chosen, >= 0.
    solution : Solution
        The solution at ``lam``.
    k : int
        The requested support size.
    support_size : int
        The support size of ``solution``; equals k when ``exact``.
    exact : bool
        Whether support_size == k.
    reason : str
        Why the search stopped, one of:
        "exact" (support_size == k),
        "tie" (first order: equal scores at the k-th place),
        "jump" (the support size skips k within the bisection's resolution),
        "unreachable" (even the smallest valid lam gives more than k non-zeros),
        "evaluation_limit" (max_evaluations solves were done).
    lam_interval : (float, float) or None
        First order only: the interval (low, high] of lam that gives ``support_size``
        non-zeros.
    evaluations : int
        Solves performed (1 in the first-order case).
    history : tuple of (float, int)
        Every (lam, support size) evaluated, in order.
    monotone : bool
        Whether the support sizes in ``history`` never decrease as lam increases.
    """

    lam: float
    solution: Solution
    k: int
    support_size: int
    exact: bool
    reason: str
    lam_interval: tuple[float, float] | None
    evaluations: int
    history: tuple[tuple[float, int], ...]
    monotone: bool


def _column_problem(problem_or_p, budget, target) -> WeightingProblem:
    if isinstance(problem_or_p, WeightingProblem):
        if budget is not None:
            raise InvalidInputError(
                "budget must be None when a WeightingProblem is given; the problem's budget "
                f"({problem_or_p.budget}) is used"
            )
        problem = problem_or_p
        if problem.p.ndim == 2 and target is None:
            if problem.num_targets > 1:
                raise InvalidInputError(
                    f"p has {problem.num_targets} target columns (shape {problem.p.shape}); pass target=j "
                    "to search lam for one of them"
                )
            target = 0
        return problem if target is None else problem.column(target)
    scores = check_scores(problem_or_p, "p", ndim=1)
    return WeightingProblem.create(scores, 1.0, budget=check_budget(budget, scores.shape[0]))


def _kth_largest(p: np.ndarray, k: int) -> float:
    n = p.shape[0]
    return float(np.partition(p, n - k)[n - k])


def _first_order(column: WeightingProblem, k: int) -> LamSearchResult:
    """Exact first-order choice; see the module docstring for ties."""
    p, b = column.p, column.budget
    low, high = lam_interval_for_support(p, k, b)
    reached, reason = k, "exact"
    if not high > low:
        kth = _kth_largest(p, k)
        below = int(np.count_nonzero(p > kth))
        above = int(np.count_nonzero(p >= kth))
        reached = above if below == 0 or above - k <= k - below else below
        reason = "tie"
        warnings.warn(
            f"lam_for_support: {above - below} samples share the k-th largest score {kth!r}, so no lam "
            f"gives exactly k={k} non-zero weights; returning the closest reachable support size {reached} "
            f"(reachable sizes around k: {below if below else 'none'} and {above})",
            TieWarning,
            stacklevel=3,
        )
        low, high = lam_interval_for_support(p, reached, b)
    solution = solve_exact_k(p, reached, b)
    return LamSearchResult(
        lam=solution.lam,
        solution=solution,
        k=k,
        support_size=solution.support_size,
        exact=reached == k,
        reason=reason,
        lam_interval=(low, high),
        evaluations=1,
        history=((solution.lam, solution.support_size),),
        monotone=True,
    )


def smallest_valid_lam(problem: WeightingProblem) -> float:
    """Return lam_min = max(-(eta/c) * lambda_min(Q), 0): (eta/c) Q + lam I is PD for lam > lam_min.

    Uses an r x r eigenvalue problem for a factored Q (see
    :func:`idopt.problem.factored_min_eigenvalue`).
    """
    if not problem.has_quadratic:
        return 0.0
    if problem.Q is not None:
        smallest = float(linalg.eigvalsh(problem.Q, subset_by_index=[0, 0])[0])
    else:
        smallest = factored_min_eigenvalue(problem.A, problem.H)
    return max(-problem.curvature * smallest, 0.0)


class _Trials:
    """Solves at trial values of lam, with warm starts and a record of the support sizes."""

    def __init__(self, column: WeightingProblem, method: str, options: dict, max_evaluations: int):
        self.column = column
        self.method = method
        self.options = options
        self.max_evaluations = max_evaluations
        self.solutions: dict[float, Solution] = {}
        self.history: list[tuple[float, int]] = []
        self.warm_start = method in ("auto", "osqp", "active_set") and "w0" not in options

    @property
    def exhausted(self) -> bool:
        return len(self.history) >= self.max_evaluations

    def size(self, lam: float) -> int:
        options = dict(self.options)
        if self.warm_start and self.solutions:
            nearest = min(self.solutions, key=lambda known: abs(math.log(known) - math.log(lam)))
            options["w0"] = self.solutions[nearest].w
        with warnings.catch_warnings():
            # The final result goes through the failure policy again, so trial warnings are muted.
            warnings.simplefilter("ignore", InaccurateSolutionWarning)
            solution = solve(replace(self.column, lam=lam), self.method, **options)
        self.solutions[lam] = solution
        self.history.append((lam, solution.support_size))
        logger.debug("lam_for_support: lam=%.6g support=%s status=%s", lam, solution.support_size, solution.status.value)
        return solution.support_size

    def closest(self, k: int) -> float:
        """Return the evaluated lam whose support size is nearest to k (the larger size on a tie)."""
        return min(self.solutions, key=lambda lam: (abs(self.solutions[lam].support_size - k), -self.solutions[lam].support_size))


def _start_lam(column: WeightingProblem, k: int, lam_min: float) -> float:
    low, high = lam_interval_for_support(column.p, k, column.budget)
    if math.isfinite(high) and high > 0:
        start = 0.5 * (low + high)
    elif low > 0:
        start = 2.0 * low
    else:
        start = max(float(np.max(np.abs(column.p))), 1.0) / column.budget
    return lam_min + start


def _search(trials: _Trials, k: int, lam_min: float, start: float) -> str:
    """Bracket k and bisect on log(lam - lam_min); return the reason the search stopped."""
    shift = start - lam_min
    size = trials.size(start)
    if size == k:
        return "exact"
    lo = hi = None
    while not trials.exhausted:
        if size < k:
            lo = shift
            if hi is not None:
                break
            shift *= EXPANSION
        else:
            hi = shift
            if lo is not None:
                break
            shift /= EXPANSION
            if shift < 1e-15 * max(lam_min, start):
                return "unreachable"
        size = trials.size(lam_min + shift)
        if size == k:
            return "exact"
    else:
        return "evaluation_limit"

    while math.log(hi / lo) > LOG_BRACKET_TOL:
        if trials.exhausted:
            return "evaluation_limit"
        middle = math.sqrt(lo * hi)
        size = trials.size(lam_min + middle)
        if size == k:
            return "exact"
        if size < k:
            lo = middle
        else:
            hi = middle
    return "jump"


def lam_for_support(
    problem_or_p,
    k: int,
    *,
    budget=None,
    target: int | None = None,
    method: str = "auto",
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    **options,
) -> LamSearchResult:
    """Find lam such that the solution has exactly k non-zero weights.

    First order (a score vector p, or a problem without a quadratic term): exact. The
    support is the top k of p for lam in (low, high] with, for p sorted descending and
    S_k = p_(1) + ... + p_(k),

        low = (S_k - k p_(k)) / b,   high = (S_k - k p_(k+1)) / b,

    and lam is the midpoint (see :func:`idopt.first_order.solve_exact_k`).

    With a quadratic term: bisection on log(lam - lam_min). The search starts from the
    first-order midpoint and multiplies or divides lam - lam_min by 10 until one trial has
    fewer and one more than k non-zeros (or exactly k). Then it tries the geometric mean
    of the bracket. It stops when a trial has exactly k, when the bracket is narrower than
    a factor exp(1e-10), or after ``max_evaluations`` solves. Each trial warm-starts from the
    nearest earlier solution when the method accepts ``w0``. Bisection assumes the
    support size changes monotonically between the bracket ends; when it does not, the
    search can miss a k that exists elsewhere, and ``monotone`` in the result says
    whether a reversal was seen.

    Ties and misses: if no lam reaches k (equal scores at the k-th place in the first
    order; several samples entering together, a non-monotone path or the evaluation
    limit otherwise), the result is the closest support size found, the larger one when
    two are equally close, with ``exact = False``, ``reason`` saying why, and a
    TieWarning (first order) or SupportSizeWarning (quadratic term).

    Parameters
    ----------
    problem_or_p : WeightingProblem or array_like of shape (n,)
        The problem (its lam is ignored) or first-order scores p.
    k : int
        Requested number of non-zero weights, 1 <= k <= n.
    budget : float, optional
        Total weight b > 0 for a score vector (default n); must be None with a problem.
    target : int, optional
        Column of p to use when p has several columns.
    method : str, default "auto"
        Solver method for the trials with a quadratic term, see :func:`idopt.solve.solve`.
    max_evaluations : int, default 80
        Largest number of solves with a quadratic term.
    **options
        Passed to :func:`idopt.solve.solve` for each trial.

    Returns
    -------
    LamSearchResult
        lam, the solution at lam, the support size reached and how the search went.

    Raises
    ------
    InvalidInputError
        For invalid p, k, budget, target, method or max_evaluations.
    """
    column = _column_problem(problem_or_p, budget, target)
    k = check_k(k, column.n)
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise InvalidInputError(f"max_evaluations must be an int >= 1 (solves); got {max_evaluations!r}")
    if not isinstance(method, str) or method not in ("auto", *METHODS):
        raise InvalidInputError(f"method must be one of 'auto', {', '.join(map(repr, METHODS))}; got {method!r}")
    if not column.has_quadratic:
        return _first_order(column, k)

    lam_min = smallest_valid_lam(column)
    trials = _Trials(column, method, options, max_evaluations)
    reason = _search(trials, k, lam_min, _start_lam(column, k, lam_min))
    lam = trials.closest(k)
    solution = apply_failure_policy(trials.solutions[lam], stacklevel=2)
    ordered = sorted(trials.history)
    monotone = all(a[1] <= b[1] for a, b in zip(ordered, ordered[1:]))
    exact = solution.support_size == k
    if exact:
        reason = "exact"
    else:
        warnings.warn(
            f"lam_for_support: no trial lam gave exactly k={k} non-zero weights ({reason}; "
            f"{len(trials.history)} solves, support sizes seen: {sorted({s for _, s in trials.history})}); "
            f"returning lam={lam:.6g} with {solution.support_size} non-zeros",
            SupportSizeWarning,
            stacklevel=2,
        )
    return LamSearchResult(
        lam=lam,
        solution=solution,
        k=k,
        support_size=solution.support_size,
        exact=exact,
        reason=reason,
        lam_interval=None,
        evaluations=len(trials.history),
        history=tuple(trials.history),
        monotone=monotone,
    )


__all__ = ["LamSearchResult", "SupportSizeWarning", "lam_for_support", "smallest_valid_lam"]
