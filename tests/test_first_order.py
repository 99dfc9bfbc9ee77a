"""Tests of the first-order weighting problem and its exact-k variant."""

import itertools
import warnings

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from idopt import (
    Status,
    TieWarning,
    first_order_objective,
    kkt_certificate,
    lam_interval_for_support,
    solve_exact_k,
    solve_first_order,
)

METHODS = ("sort", "michelot", "condat", "sampled")

scores = arrays(
    np.float64,
    st.integers(1, 40),
    elements=st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False),
)
lams = st.floats(1e-3, 1e3)


def distinct_scores(max_n=30):
    # Distinct multiples of 0.37 keep every gap p_(k) - p_(k+1) >= 0.37, far above rounding.
    return st.lists(st.integers(-500, 500), min_size=1, max_size=max_n, unique=True).map(
        lambda values: 0.37 * np.array(values, dtype=np.float64)
    )


def brute_force_solution(p, lam, budget):
    """Exact reference for small n: the optimum is the equality-constrained minimizer on
    its own support, so try every non-empty support A, keep those with all w_A >= 0, and
    return the one with the lowest objective."""
    n = p.shape[0]
    best_w, best_value = None, np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            index = list(support)
            w = np.zeros(n)
            w[index] = budget / size + (p[index] - p[index].mean()) / lam
            if np.min(w) < 0:
                continue
            value = -p @ w + 0.5 * lam * w @ w
            if value < best_value:
                best_w, best_value = w, value
    return best_w


def weight_tolerance(p, lam, budget):
    # The weights are b/|A| + (p_i - mean)/lam, each term exact to a few ulps of its size.
    return 1e-12 * (budget + float(np.max(np.abs(p))) / lam)


@settings(max_examples=100, deadline=None)
@given(p=scores, lam=lams, budget=st.floats(0.1, 100.0))
def test_solution_passes_kkt(p, lam, budget):
    """Property: every method returns weights whose KKT certificate is below 1e-10."""
    for method in METHODS:
        solution = solve_first_order(p, lam, budget, method=method)
        assert solution.status == Status.OPTIMAL
        assert solution.certificate.max_residual < 1e-10
        assert np.min(solution.w) >= 0
        assert solution.support_size == np.count_nonzero(solution.w)


@settings(max_examples=60, deadline=None)
@given(
    p=arrays(np.float64, st.integers(1, 8), elements=st.floats(-10.0, 10.0)),
    lam=st.floats(0.01, 100.0),
)
def test_solution_matches_brute_force(p, lam):
    """Property: the weights equal the best feasible support-restricted minimizer."""
    budget = float(p.shape[0])
    solution = solve_first_order(p, lam, budget)
    expected = brute_force_solution(p, lam, budget)
    assert np.max(np.abs(solution.w - expected)) <= weight_tolerance(p, lam, budget)


@pytest.mark.parametrize("seed", range(5))
def test_solution_matches_cvxpy(seed):
    rng = np.random.default_rng(seed)
    n = 12
    p = rng.standard_normal(n)
    lam = float(rng.uniform(0.1, 5.0))
    w = cp.Variable(n)
    problem = cp.Problem(
        cp.Minimize(-p @ w + 0.5 * lam * cp.sum_squares(w)), [w >= 0, cp.sum(w) == n]
    )
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    solution = solve_first_order(p, lam)
    # Clarabel stops at 1e-12 gap and feasibility; strong convexity (modulus lam) turns
    # that into a weight error of order sqrt(1e-12 * n / lam) < 1e-5.
    np.testing.assert_allclose(solution.w, w.value, atol=1e-5)
    # Our point is exactly feasible, so it can beat the reference only by its infeasibility.
    assert solution.objective <= problem.value + 1e-9 * n


@settings(max_examples=100, deadline=None)
@given(data=st.data(), lam=lams)
def test_weights_lipschitz_in_scores(data, lam):
    """Property: ||w(p) - w(p')|| <= ||p - p'|| / lam, since the projection is nonexpansive."""
    n = data.draw(st.integers(1, 30))
    elements = st.floats(-100.0, 100.0)
    p = data.draw(arrays(np.float64, n, elements=elements))
    q = data.draw(arrays(np.float64, n, elements=elements))
    w_p = solve_first_order(p, lam).w
    w_q = solve_first_order(q, lam).w
    slack = 2 * np.sqrt(n) * weight_tolerance(np.concatenate([p, q]), lam, float(n))
    assert np.linalg.norm(w_p - w_q) <= np.linalg.norm(p - q) / lam + slack


@settings(max_examples=100, deadline=None)
@given(p=scores, lam_values=st.lists(lams, min_size=2, max_size=8))
def test_support_grows_with_lam(p, lam_values):
    """Property: the supports are nested and their sizes never shrink as lam grows."""
    supports = [set(solve_first_order(p, lam).support.tolist()) for lam in sorted(lam_values)]
    for smaller, larger in zip(supports, supports[1:]):
        assert smaller <= larger


@settings(max_examples=100, deadline=None)
@given(p=distinct_scores())
def test_small_lam_concentrates(p):
    """Property: below the first breakpoint (p_(1) - p_(2)) / b all weight is on argmax."""
    n = p.shape[0]
    ordered = np.sort(p)[::-1]
    lam = 0.5 * (ordered[0] - ordered[1]) / n if n > 1 else 1e-9
    solution = solve_first_order(p, lam)
    assert solution.support_size == 1
    assert solution.w[np.argmax(p)] == pytest.approx(n, rel=1e-14)


@settings(max_examples=100, deadline=None)
@given(p=scores)
def test_large_lam_uniform(p):
    """Property: for lam >= n * spread every weight is within spread / lam of b / n."""
    n = p.shape[0]
    spread = float(np.max(p) - np.min(p))
    lam = max(1e6 * spread, 1.0)
    solution = solve_first_order(p, lam)
    # Full support gives w_i = b/n + (p_i - mean)/lam, so |w_i - b/n| <= spread / lam.
    assert np.max(np.abs(solution.w - 1.0)) <= spread / lam + 1e-14
    assert solution.support_size == n


def test_lp_ties_split_evenly():
    p = np.array([1.0, 3.0, -2.0, 3.0, 3.0])
    solution = solve_first_order(p, 0.0, budget=6.0)
    assert solution.w.tolist() == [0.0, 2.0, 0.0, 2.0, 2.0]
    assert solution.method == "lp:argmax"
    assert solution.nu == -3.0
    assert solution.objective == -18.0
    assert solution.status == Status.OPTIMAL


def test_objective_value():
    w = np.array([1.0, 2.0])
    p = np.array([0.5, -1.0])
    # -p^T w = 1.5 and (lam/2)||w||^2 = 0.5 * 3 * 5 = 7.5.
    assert first_order_objective(w, p, 3.0) == 9.0


def test_nu_gives_weights():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(50)
    solution = solve_first_order(p, 0.7, budget=4.0)
    expected = np.maximum(p + solution.nu, 0.0) / 0.7
    np.testing.assert_allclose(solution.w, expected, rtol=0, atol=1e-13)


@settings(max_examples=100, deadline=None)
@given(p=distinct_scores(), data=st.data())
def test_exact_k_support_size(p, data):
    """Property: on distinct scores, exact-k has k non-zeros, lam in its interval, and
    solve_first_order at that lam returns the same weights."""
    n = p.shape[0]
    k = data.draw(st.integers(1, n))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TieWarning)
        solution = solve_exact_k(p, k)
    assert solution.support_size == k
    assert solution.status == Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-10
    low, high = lam_interval_for_support(p, k)
    assert low < solution.lam <= high
    expected_top = np.argsort(-p, kind="stable")[:k]
    assert set(solution.support.tolist()) == set(expected_top.tolist())
    direct = solve_first_order(p, solution.lam)
    assert np.max(np.abs(direct.w - solution.w)) <= weight_tolerance(p, solution.lam, float(n))


@settings(max_examples=100, deadline=None)
@given(p=distinct_scores(max_n=20), data=st.data())
def test_interval_edges(p, data):
    """Property: inside (low, high] the support is exactly k; past the edges it changes."""
    n = p.shape[0]
    k = data.draw(st.integers(1, n))
    low, high = lam_interval_for_support(p, k)
    # At lam = high exactly, w_(k+1) is 0 only in exact arithmetic (rounding can leave
    # 1e-16), so the right edge is probed at a relative distance of 1e-9.
    inside = [0.5 * high, high * (1 - 1e-9)] if low == 0 else [low * (1 + 1e-9), high * (1 - 1e-9)]
    if np.isinf(high):
        inside = [low * (1 + 1e-9) + 1e-9, 2 * low + 1.0]
    for lam in inside:
        assert solve_first_order(p, lam).support_size == k
    if low > 0:
        assert solve_first_order(p, low * (1 - 1e-9)).support_size < k
    if np.isfinite(high):
        assert solve_first_order(p, high * (1 + 1e-9)).support_size > k


def test_exact_k_all_equal():
    solution = solve_exact_k(np.full(4, 2.5), 4, budget=2.0)
    assert solution.w.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert solution.lam == 1.0
    assert solution.certificate.max_residual == 0.0


def test_exact_k_tie_warns():
    p = np.array([3.0, 2.0, 5.0, 2.0, 2.0, 1.0])
    with pytest.warns(TieWarning, match="2 sample"):
        solution = solve_exact_k(p, 3)
    assert solution.status == Status.OPTIMAL_RESTRICTED
    assert solution.ties_at_boundary == 2
    assert solution.support.tolist() == [0, 1, 2]
    # Not optimal for the full problem: the left-out tied samples 3, 4 would gain weight.
    assert solution.certificate.dual_feasibility > 1e-3
    # Optimal for the problem restricted to the kept samples.
    kept = solution.support
    grad = -p + solution.lam * solution.w
    restricted = kkt_certificate(solution.w[kept], grad[kept], budget=6.0)
    assert restricted.max_residual < 1e-12


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_exact_k_tie_property(data):
    """Property: tied scores at the k-th place give k non-zeros on the lowest tied
    indices, a TieWarning and the count of tied samples left out."""
    values = data.draw(st.lists(st.integers(0, 4), min_size=2, max_size=15))
    p = np.array(values, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    k = data.draw(st.integers(1, p.shape[0] - 1))
    assume(p[order[k - 1]] == p[order[k]])
    with pytest.warns(TieWarning):
        solution = solve_exact_k(p, k)
    assert solution.support_size == k
    assert set(solution.support.tolist()) == set(order[:k].tolist())
    tied = p == p[order[k - 1]]
    assert solution.ties_at_boundary == np.count_nonzero(tied[order[k:]])


def large_scores(distribution, n, rng):
    if distribution == "normal":
        return rng.standard_normal(n)
    if distribution == "cauchy":
        return rng.standard_cauchy(n)
    if distribution == "sorted":
        return np.sort(rng.standard_normal(n))
    # Few distinct values: many ties at the threshold.
    return rng.integers(0, 5, n).astype(np.float64)


@pytest.mark.parametrize("distribution", ["normal", "cauchy", "sorted", "ties"])
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.6])
def test_large_n_methods_agree(distribution, fraction):
    # n = 20000 > 4096 runs "sampled" through its candidate set. lam is chosen for a
    # support of about `fraction` * n.
    rng = np.random.default_rng(5)
    n = 20_000
    p = large_scores(distribution, n, rng)
    cut = np.quantile(p, 1.0 - fraction)
    lam = max(float(np.mean(np.maximum(p - cut, 0.0))), 1e-3)
    solutions = [solve_first_order(p, lam, method=method) for method in ("auto",) + METHODS]
    reference = solutions[1].w  # sort
    for solution in solutions:
        assert solution.status == Status.OPTIMAL, solution.method
        assert solution.certificate.max_residual < 1e-10, solution.method
        assert np.min(solution.w) >= 0
        assert abs(np.sum(solution.w) - n) <= 1e-12 * n
        assert solution.support_size == np.count_nonzero(solution.w)
        assert np.max(np.abs(solution.w - reference)) <= weight_tolerance(p, lam, n), solution.method
    assert solutions[0].method == "projection:sampled"


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 40),
    lam=st.floats(1e-3, 10.0),
    shift=st.integers(-1, 1),
)
def test_certificate_with_given_support(seed, n, lam, shift):
    """Property: a given support changes no residual, and a wrong one is ignored."""
    from idopt.first_order import _certify

    rng = np.random.default_rng(seed)
    p = rng.normal(size=n)
    w = rng.random(n) * (rng.random(n) < 0.5)
    budget = float(max(w.sum(), 1.0))
    support = np.flatnonzero(w > 0)
    if shift:
        # A wrong guess: one index dropped or one zero-weight index added.
        candidates = support if shift < 0 else np.flatnonzero(w == 0)
        if candidates.size:
            picked = candidates[rng.integers(candidates.size)]
            if shift < 0:
                support = np.setdiff1d(support, [picked])
            else:
                support = np.union1d(support, [picked])
    expected_objective, expected = _certify(w, p, lam, budget)
    p_range = (float(p.min()), float(p.max()))
    objective, got = _certify(w, p, lam, budget, support=support, p_range=p_range)
    assert got == expected
    assert objective == expected_objective
