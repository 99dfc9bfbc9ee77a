"""Tests of top-k ordering and multi-target selection."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from idopt import TieWarning, select, solve_exact_k, top_k_indices


def reference_top_k(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def reference_round_robin(p, k):
    """Slow reference: each turn scans the target's full descending order from the start."""
    n, m = p.shape
    orders = [reference_top_k(p[:, t].tolist(), n) for t in range(m)]
    picked, owners = [], []
    while len(picked) < k:
        target = len(picked) % m
        index = next(i for i in orders[target] if i not in picked)
        picked.append(index)
        owners.append(target)
    return picked, owners


# Small integers force many ties, which exercises the lower-index rule.
tied_scores = st.integers(1, 30).flatmap(
    lambda n: arrays(np.float64, n, elements=st.integers(-3, 3).map(float))
)


@settings(max_examples=200, deadline=None)
@given(scores=tied_scores, data=st.data())
def test_top_k_matches_reference(scores, data):
    """Property: top_k_indices equals sorting by (-score, index) and taking k."""
    k = data.draw(st.integers(1, scores.shape[0]))
    assert top_k_indices(scores, k).tolist() == reference_top_k(scores.tolist(), k)


def score_matrices(max_n=25, max_m=4):
    return st.tuples(st.integers(1, max_n), st.integers(1, max_m)).flatmap(
        lambda shape: arrays(np.float64, shape, elements=st.integers(-5, 5).map(float))
    )


@settings(max_examples=150, deadline=None)
@given(p=score_matrices(), data=st.data())
def test_round_robin_properties(p, data):
    """Property: round-robin picks are distinct, balanced, in each picker's top k, match a
    naive reference, and carry the picker's exact-k weight."""
    n, m = p.shape
    k = data.draw(st.integers(1, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TieWarning)
        selection = select(p, k, aggregate="round_robin")
        solutions = [solve_exact_k(p[:, t], k) for t in range(m)]

    indices = selection.indices.tolist()
    owners = selection.picked_by.tolist()
    assert len(indices) == k
    assert len(set(indices)) == k
    counts = np.bincount(selection.picked_by, minlength=m)
    assert counts.max() - counts.min() <= 1
    for index, target in zip(indices, owners):
        assert index in reference_top_k(p[:, target].tolist(), k)
    assert (indices, owners) == reference_round_robin(p, k)
    expected_weights = [solutions[t].w[i] for i, t in zip(indices, owners)]
    assert selection.weights.tolist() == expected_weights
    assert np.all(selection.weights > 0)
    assert selection.scores.tolist() == [p[i, t] for i, t in zip(indices, owners)]
    assert selection.lam.tolist() == [s.lam for s in solutions]


@settings(max_examples=100, deadline=None)
@given(p=score_matrices(), data=st.data())
def test_mean_matches_exact_k(p, data):
    """Property: "mean" returns the exact-k solution of the row means, in score order."""
    n = p.shape[0]
    k = data.draw(st.integers(1, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TieWarning)
        selection = select(p, k, aggregate="mean")
        expected = solve_exact_k(p.mean(axis=1), k)
    assert selection.indices.tolist() == reference_top_k(p.mean(axis=1).tolist(), k)
    assert selection.weights.tolist() == expected.w[selection.indices].tolist()
    assert selection.picked_by.tolist() == [-1] * k
    assert selection.lam.tolist() == [expected.lam]


def test_select_vector_same_for_both():
    rng = np.random.default_rng(4)
    p = rng.standard_normal(40)
    by_turns = select(p, 9, aggregate="round_robin")
    by_mean = select(p, 9, aggregate="mean")
    assert by_turns.indices.tolist() == by_mean.indices.tolist()
    np.testing.assert_array_equal(by_turns.weights, by_mean.weights)
    assert by_mean.weights.sum() == pytest.approx(40.0, rel=1e-14)


def test_round_robin_turn_order():
    # Both targets prefer sample 0; target 0 gets it, target 1 takes its next best.
    p = np.array([[9.0, 9.0], [1.0, 8.0], [7.0, 2.0], [0.0, 0.0]])
    selection = select(p, 3)
    assert selection.indices.tolist() == [0, 1, 2]
    assert selection.picked_by.tolist() == [0, 1, 0]
    assert selection.k == 3


def test_round_robin_tie_names_target():
    p = np.array([[3.0, 5.0], [1.0, 4.0], [1.0, 1.0]])
    with pytest.warns(TieWarning, match="target 0"):
        selection = select(p, 2)
    assert selection.ties_at_boundary.tolist() == [1, 0]
