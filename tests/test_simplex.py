"""Tests of the Euclidean projection onto the scaled simplex."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from idopt.simplex import (
    _candidates_sampled,
    project_simplex,
    simplex_support,
    simplex_threshold,
)

EXPLICIT_METHODS = ("sort", "michelot", "condat", "sampled")


def reference_threshold(v, budget):
    """Slow reference: try every support size j and keep the one satisfying the KKT test.

    With u sorted descending and tau_j = (u_1 + ... + u_j - b) / j, the projection has
    support size j exactly when u_j > tau_j and (j = n or u_{j+1} <= tau_j).
    """
    u = sorted(v.tolist(), reverse=True)
    for j in range(1, len(u) + 1):
        tau = (math.fsum(u[:j]) - budget) / j
        if u[j - 1] > tau and (j == len(u) or u[j] <= tau):
            return tau
    raise AssertionError("no support size satisfies the KKT test")


def bisection_threshold(v, budget):
    """Slow reference for large n: bisect f(tau) = sum max(v - tau, 0) - b, which decreases.

    The bracket [max(v) - b, max(v)] contains tau because the largest entry gets at most b.
    """
    low, high = float(np.max(v)) - budget, float(np.max(v))
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if np.sum(np.maximum(v - middle, 0.0)) > budget:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def weight_tolerance(v, budget):
    # tau is a pairwise sum of at most n terms of size <= max|v| + b divided by |A|, so its
    # rounding error is a few ulps of that scale; 1e-12 relative leaves room for n <= 10^5.
    return 1e-12 * (float(np.max(np.abs(v))) + budget)


vectors = arrays(
    np.float64,
    st.integers(1, 60),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)
budgets = st.floats(1e-3, 1e3)


@settings(max_examples=200, deadline=None)
@given(v=vectors, budget=budgets)
def test_methods_match_reference(v, budget):
    """Property: every method returns max(v - tau, 0) with the reference tau, sum b."""
    expected_w = np.maximum(v - reference_threshold(v, budget), 0.0)
    tol = weight_tolerance(v, budget)
    for method in EXPLICIT_METHODS + ("auto",):
        w, tau = project_simplex(v, budget, method=method)
        assert np.max(np.abs(w - expected_w)) <= tol, method
        assert np.all(w >= 0), method
        assert abs(np.sum(w) - budget) <= v.shape[0] * tol, method
        assert np.array_equal(w, np.maximum(v - tau, 0.0)), method


@settings(max_examples=100, deadline=None)
@given(v=vectors, budget=budgets)
def test_methods_agree(v, budget):
    """Property: the three methods return weights within 1e-12 relative of each other."""
    results = [project_simplex(v, budget, method=m)[0] for m in EXPLICIT_METHODS]
    tol = weight_tolerance(v, budget)
    for w in results[1:]:
        assert np.max(np.abs(w - results[0])) <= tol


@pytest.mark.parametrize("budget", [1.0, 1e3, 1e5, 1e6, 1e7])
def test_methods_agree_large_n(budget):
    # n = 10^5 spans several Condat blocks of 2^14 entries and several Michelot rounds.
    rng = np.random.default_rng(7)
    v = rng.standard_normal(100_000)
    reference = bisection_threshold(v, budget)
    for method in EXPLICIT_METHODS:
        tau, used, _ = simplex_threshold(v, budget, method)
        assert used == method
        assert abs(tau - reference) <= weight_tolerance(v, budget), method


def test_auto_picks_by_size():
    rng = np.random.default_rng(3)
    v = rng.standard_normal(50_000)
    _, few_positive, _ = simplex_threshold(v, 1.0, "auto")
    _, most_positive, _ = simplex_threshold(v, 10.0 * v.shape[0], "auto")
    _, small_n, _ = simplex_threshold(v[:100], 1.0, "auto")
    assert few_positive == "sampled"
    assert most_positive == "sampled"
    assert small_n == "sort"


def test_sampled_fallback_on_misleading_sample():
    # Every 16th entry (the strided sample) steps down from 1 by 0.001; all others sit at
    # 0.7. The sample's projection keeps about 100 entries, so its candidate set is
    # {v > 1 - 0.212}, but the true support also contains every entry at 0.7. "sampled" must
    # notice that tau lies below the cut and finish on all of v.
    n = 1 << 16
    v = np.full(n, 0.7)
    v[::16] = 1.0 - 0.001 * np.arange(n // 16)
    budget = 80.0
    index, _, _, _ = _candidates_sampled(v, budget)
    assert index is None
    reference = bisection_threshold(v, budget)
    for method in EXPLICIT_METHODS:
        tau, _, _ = simplex_threshold(v, budget, method)
        assert abs(tau - reference) <= weight_tolerance(v, budget), method


@pytest.mark.parametrize("budget", [1.0, 1e3, 1e5])
def test_support_matches_threshold(budget):
    # The support returned with tau is exactly {v > tau}, in index order, with its values.
    rng = np.random.default_rng(9)
    v = rng.standard_normal(50_000)
    taus = set()
    for method in EXPLICIT_METHODS:
        found = simplex_support(v, budget, method)
        assert found.tau == simplex_threshold(v, budget, method)[0]
        assert np.array_equal(found.index, np.flatnonzero(v > found.tau)), method
        assert np.array_equal(found.values, v[found.index]), method
        taus.add(found.tau)
    # The same support gives the same bits, whichever method found it.
    assert len(taus) == 1


def test_project_constant_vector():
    v = np.full(5, 3.0)
    for method in EXPLICIT_METHODS:
        w, tau = project_simplex(v, 2.0, method=method)
        np.testing.assert_allclose(w, 0.4, rtol=1e-15)
        assert tau == pytest.approx(2.6, rel=1e-15)


def test_project_single_entry():
    for method in EXPLICIT_METHODS:
        w, tau = project_simplex(np.array([-4.0]), 2.5, method=method)
        assert w.tolist() == [2.5]
        assert tau == -6.5


def test_project_input_unchanged():
    v = np.array([0.3, -1.0, 2.0, 0.5])
    before = v.copy()
    for method in EXPLICIT_METHODS:
        project_simplex(v, 1.0, method=method)
    assert np.array_equal(v, before)


def test_project_float32_input():
    v32 = np.array([0.5, 0.25, -1.0], dtype=np.float32)
    w, _ = project_simplex(v32, 1.0)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, [0.625, 0.375, 0.0], rtol=1e-15)


@pytest.mark.slow
def test_project_ten_million():
    # Ten million entries must finish in memory-bandwidth time with every method.
    rng = np.random.default_rng(11)
    v = rng.standard_normal(10_000_000)
    taus = [simplex_threshold(v, 1000.0, m)[0] for m in EXPLICIT_METHODS]
    assert max(taus) - min(taus) <= weight_tolerance(v, 1000.0)
