"""Tests of lam_for_support: exact first-order choice, bisection with a quadratic term, ties."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.errors import InvalidInputError, TieWarning
from idopt.first_order import lam_interval_for_support
from idopt.lam_search import SupportSizeWarning, lam_for_support, smallest_valid_lam
from idopt.problem import WeightingProblem
from idopt.solve import solve


def distinct_scores(max_n=30):
    # Distinct multiples of 0.37 keep every gap between sorted scores >= 0.37, so no ties.
    return st.lists(st.integers(-500, 500), min_size=1, max_size=max_n, unique=True).map(
        lambda values: 0.37 * np.array(values, dtype=np.float64)
    )


@settings(max_examples=40, deadline=None)
@given(p=distinct_scores(), data=st.data())
def test_first_order_exact_k(p, data):
    """Property: on tie-free scores the returned lam gives exactly k non-zeros, inside the interval."""
    k = data.draw(st.integers(1, p.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = lam_for_support(p, k)
    low, high = lam_interval_for_support(p, k)
    assert result.exact
    assert result.support_size == k
    assert low < result.lam <= high
    # An independent solve at that lam confirms the support size.
    assert solve(WeightingProblem.create(p, result.lam)).support_size == k


def test_first_order_tie_returns_closest():
    p = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0])
    with pytest.warns(TieWarning, match="k=3"):
        result = lam_for_support(p, 3)
    # Reachable sizes around k = 3 are 1 (above the tie) and 4 (the whole tie group); 4 is closer.
    assert not result.exact
    assert result.reason == "tie"
    assert result.support_size == 4
    assert solve(WeightingProblem.create(p, result.lam)).support_size == 4


def test_first_order_tie_equal_distance_takes_larger():
    p = np.array([3.0, 2.0, 2.0, 1.0])
    with pytest.warns(TieWarning):
        result = lam_for_support(p, 2)
    assert result.support_size == 3


def test_first_order_tie_at_top():
    p = np.array([2.0, 2.0, 1.0])
    with pytest.warns(TieWarning):
        result = lam_for_support(p, 1)
    assert result.support_size == 2


def quadratic_problem(seed, n=25):
    # A diagonally dominant Q keeps the support size monotone in lam in practice, and the
    # random scores are tie-free with probability 1.
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(n, n)) / np.sqrt(n)
    Q = root @ root.T + np.diag(rng.uniform(0.5, 2.0, size=n))
    return WeightingProblem.create(rng.normal(size=n), 1.0, eta=float(n), Q=Q)


@pytest.mark.parametrize("method", ["auto", "osqp"])
@pytest.mark.parametrize("seed", range(3))
def test_quadratic_exact_k(seed, method):
    problem = quadratic_problem(seed)
    # Sizes between the smallest reachable one (lam -> 0) and n, observed on a lam grid.
    sizes = {solve(WeightingProblem.create(problem.p, lam, eta=problem.eta, Q=problem.Q), "osqp").support_size
             for lam in np.geomspace(1e-4, 1e3, 15)}
    for k in sorted(sizes)[:: max(1, len(sizes) // 4)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = lam_for_support(problem, k, method=method)
        assert result.exact, (k, result.history)
        assert result.support_size == k
        check = solve(WeightingProblem.create(problem.p, result.lam, eta=problem.eta, Q=problem.Q), "osqp")
        assert check.support_size == k


def test_quadratic_unreachable_warns():
    # Q = A^T A with rank 5 and a large eta: even as lam -> 0 the support keeps several samples.
    rng = np.random.default_rng(0)
    n = 40
    problem = WeightingProblem.create(rng.normal(size=n), 0.5, eta=5.0, A=rng.normal(size=(5, n)),
                                      H=np.eye(5))
    with pytest.warns(SupportSizeWarning, match="k=1"):
        result = lam_for_support(problem, 1)
    assert not result.exact
    assert result.reason == "unreachable"
    assert result.support_size == min(size for _, size in result.history)


def test_smallest_valid_lam_indefinite_q():
    Q = np.diag([2.0, -1.0, 0.5])
    problem = WeightingProblem.create(np.zeros(3), 5.0, eta=3.0, c=1.0, Q=Q)
    # (eta/c) Q + lam I is positive definite exactly for lam > 3 * 1.
    assert smallest_valid_lam(problem) == pytest.approx(3.0)


def test_bad_arguments():
    problem = WeightingProblem.create(np.random.default_rng(0).normal(size=(6, 2)), 1.0)
    with pytest.raises(InvalidInputError, match="target"):
        lam_for_support(problem, 2)
    with pytest.raises(InvalidInputError, match="budget"):
        lam_for_support(problem, 2, target=0, budget=3.0)
    with pytest.raises(InvalidInputError, match="k"):
        lam_for_support(problem, 7, target=1)
    with pytest.raises(InvalidInputError, match="max_evaluations"):
        lam_for_support(problem, 2, target=1, max_evaluations=0)
