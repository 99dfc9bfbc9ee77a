"""Cross-method property tests of idopt.solve, mostly on the second-order problem.

Not repeated here because other files cover them: the Lipschitz bound and the large-lam
limit of the first-order problem (tests/test_first_order.py), and agreement of every
method with brute-force enumeration for n <= 8 at b = n (tests/test_solve.py,
tests/test_backends.py, tests/test_active_set.py). The agreement tests below draw n
beyond enumeration, a budget b != n and several target columns, so OSQP and CVXPY go
through their one-setup path for all columns (solve_columns).
"""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.problem import WeightingProblem
from idopt.solve import METHODS, solve

QP_METHODS = [name for name in ("active_set", "osqp", "cvxpy") if METHODS[name].available()]
FIRST_ORDER_METHODS = ["closed_form", *QP_METHODS]

# Agreement required between methods. Every method ends with an exact solve on its
# support (closed form, active set, OSQP polishing, refine_on_support for CVXPY), so their
# differences are rounding errors, about 1e-12 relative in tests/test_backends.py.
W_ATOL_PER_BUDGET = 1e-6
OBJECTIVE_RTOL = 1e-8
CERTIFICATE_TOL = 1e-8

# Rounding in the certificate itself: the gradient -p + (eta/c) Q w + lam w is evaluated
# with a relative error of a few n ulps of its largest term, below 1e-12 for n <= 40.
ROUNDING = 1e-12


@dataclass(frozen=True)
class Instance:
    """Parameters of a random second-order instance; arrays are drawn from ``seed``."""

    seed: int
    n: int
    rank: int
    targets: int
    eta: float
    lam: float
    budget_ratio: float
    dense: bool
    with_h: bool

    def build(self, lam: float | None = None) -> WeightingProblem:
        """Return the problem: p (n, targets) normal, Q = A^T H A of rank <= ``rank``, b = ratio * n."""
        rng = np.random.default_rng(self.seed)
        shape = self.n if self.targets == 1 else (self.n, self.targets)
        p = rng.normal(size=shape)
        A = rng.normal(size=(self.rank, self.n)) / np.sqrt(self.rank)
        H = None
        if self.with_h:
            root = rng.normal(size=(self.rank, self.rank))
            H = root @ root.T / self.rank
        options = {"eta": self.eta, "budget": self.budget_ratio * self.n}
        lam = self.lam if lam is None else lam
        if self.dense:
            Q = A.T @ (A if H is None else H @ A)
            return WeightingProblem.create(p, lam, Q=0.5 * (Q + Q.T), **options)
        return WeightingProblem.create(p, lam, A=A, H=H, **options)


@st.composite
def instances(draw, max_n=30, targets=1):
    n = draw(st.integers(2, max_n))
    return Instance(
        seed=draw(st.integers(0, 2**32 - 1)),
        n=n,
        rank=draw(st.integers(1, n)),
        targets=draw(st.integers(1, targets)),
        eta=10.0 ** draw(st.floats(-1.0, 2.0)),
        lam=10.0 ** draw(st.floats(-2.0, 1.0)),
        budget_ratio=10.0 ** draw(st.floats(-1.0, 1.0)),
        dense=draw(st.booleans()),
        with_h=draw(st.booleans()),
    )


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def weight_error_bound(solution, problem: WeightingProblem) -> float:
    """Bound ||w - w*|| for a computed w from its KKT certificate.

    A point whose relative KKT residuals are at most eps is the exact minimizer of a
    nearby problem. There each p_i moves by at most eps * g, with g the certificate's
    gradient scale, and b moves by at most eps * b. By the Lipschitz bound of the weights
    in p (modulus 1/lam), that minimizer is at most sqrt(n) * eps * (g / lam + b) from w*.
    """
    certificate = solution.certificate
    eps = certificate.max_residual + ROUNDING
    return np.sqrt(problem.n) * eps * (certificate.grad_scale / problem.lam + problem.budget)


@settings(max_examples=40, deadline=None)
@given(instance=instances(), scale=st.floats(1e-3, 10.0), method=st.sampled_from(["active_set", "auto"]))
def test_second_order_lipschitz_in_scores(instance, scale, method):
    """Property: ||w(p) - w(p')|| <= ||p - p'|| / lam for dense and factored Q.

    With M = (eta/c) Q + lam I >= lam I, the optimality conditions of w = w(p) and
    w' = w(p') are (M w - p)^T (v - w) >= 0 and (M w' - p')^T (v - w') >= 0 for every
    feasible v. Taking v = w' in the first and v = w in the second and adding gives
    lam ||w - w'||^2 <= (w - w')^T M (w - w') <= (p - p')^T (w - w') <= ||p - p'|| ||w - w'||.
    """
    problem = instance.build()
    direction = np.random.default_rng(instance.seed + 1).normal(size=instance.n)
    moved_scores = problem.p + scale * direction
    moved = WeightingProblem.create(
        moved_scores, problem.lam, eta=problem.eta, budget=problem.budget, Q=problem.Q, A=problem.A, H=problem.H
    )

    first = solve(problem, method)
    second = solve(moved, method)

    distance = np.linalg.norm(first.w - second.w)
    bound = np.linalg.norm(problem.p - moved_scores) / problem.lam
    slack = weight_error_bound(first, problem) + weight_error_bound(second, moved)
    assert distance <= bound + slack


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 40),
    targets=st.integers(1, 3),
    lam=st.floats(1e-2, 10.0),
    budget_ratio=st.floats(0.1, 10.0),
)
def test_first_order_methods_agree(seed, n, targets, lam, budget_ratio):
    """Property: closed_form, active_set, osqp and cvxpy return the same weights and
    objective on every column of a first-order problem with any budget, each certified
    below 1e-8."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n if targets == 1 else (n, targets))
    problem = WeightingProblem.create(p, lam, budget=budget_ratio * n)

    assert_methods_agree(problem, FIRST_ORDER_METHODS)


@settings(max_examples=25, deadline=None)
@given(instance=instances(max_n=40, targets=3))
def test_second_order_methods_agree(instance):
    """Property: active_set, osqp and cvxpy return the same weights and objective on
    every column of a second-order problem (dense or factored Q, with or without H, any
    budget), each certified below 1e-8."""
    assert_methods_agree(instance.build(), QP_METHODS)


def assert_methods_agree(problem: WeightingProblem, methods: list[str]) -> None:
    """Compare every method with the first one, column by column."""
    results = {method: as_tuple(solve(problem, method)) for method in methods}
    reference_method = methods[0]
    for column, reference in enumerate(results[reference_method]):
        # |p^T w| <= max|p| * b sets the objective's magnitude when F itself is near 0.
        objective_floor = OBJECTIVE_RTOL * reference.certificate.grad_scale * problem.budget
        for method in methods:
            solution = results[method][column]
            label = f"{method} vs {reference_method}, column {column}"
            assert solution.certificate.max_residual < CERTIFICATE_TOL, label
            np.testing.assert_allclose(
                solution.w, reference.w, rtol=0, atol=W_ATOL_PER_BUDGET * problem.budget, err_msg=label
            )
            expected = pytest.approx(reference.objective, rel=OBJECTIVE_RTOL, abs=objective_floor)
            assert solution.objective == expected, label


@settings(max_examples=30, deadline=None)
@given(instance=instances(max_n=25), log_lam=st.floats(0.0, 8.0), method=st.sampled_from(QP_METHODS))
def test_large_lam_tends_to_uniform(instance, log_lam, method):
    """Property: ||w - u|| <= ||P grad F(u)|| / lam with u = (b/n) 1, so w -> b/n as lam grows.

    Derivation: F is lam-strongly convex, so (grad F(w) - grad F(u))^T (w - u) >= lam ||w - u||^2.
    u is feasible, so optimality of w gives grad F(w)^T (u - w) >= 0. Together,
    lam ||w - u||^2 <= -grad F(u)^T (w - u). Both w and u sum to b, so w - u is orthogonal
    to 1 and grad F(u) can be replaced by its centered part P grad F(u), P = I - 11^T / n;
    Cauchy-Schwarz then gives the bound. The centering matters: grad F(u) contains lam u,
    whose norm divided by lam stays b / sqrt(n) however large lam is, while
    P grad F(u) = P(-p + (eta/c) Q u) does not depend on lam.
    """
    problem = instance.build(lam=instance.lam * 10.0**log_lam)
    uniform = np.full(problem.n, problem.budget / problem.n)
    gradient = problem.gradient(uniform)
    centered = gradient - np.mean(gradient)

    solution = solve(problem, method)

    distance = np.linalg.norm(solution.w - uniform)
    bound = np.linalg.norm(centered) / problem.lam
    slack = weight_error_bound(solution, problem)
    assert distance <= bound + slack
    if bound + slack < problem.budget / problem.n:
        # Every weight is within bound + slack < b/n of b/n, so none is zero.
        assert solution.support_size == problem.n
