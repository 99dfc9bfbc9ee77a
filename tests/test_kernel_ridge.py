import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.errors import InvalidInputError
from idopt.kernel_ridge import KernelRidge, choose_landmarks, median_bandwidth, rbf_kernel, squared_distances


def _points(seed, n=40, dim=6):
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_rbf_kernel_matches_definition():
    x, y = _points(0, 5), _points(1, 4)
    h = 1.7
    expected = np.array([[np.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for b in y] for a in x])
    np.testing.assert_allclose(rbf_kernel(x, y, h), expected, rtol=1e-12)


def test_median_bandwidth_is_median_distance():
    x = _points(2, 9)
    distances = [np.linalg.norm(x[i] - x[j]) for i in range(9) for j in range(i + 1, 9)]
    assert median_bandwidth(x) == pytest.approx(np.median(distances), rel=1e-10)


def test_median_bandwidth_of_identical_points():
    assert median_bandwidth(np.ones((4, 3))) == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), damping=st.sampled_from([1e-2, 1e-4, 1e-6]))
def test_landmarks_equal_pool_reproduces_scores(seed, damping):
    """Property: with every sample a landmark, P_hat = K (K + delta I)^-1 P differs from P by at most
    delta/(lambda_min(K) + delta) * ||P|| in the 2-norm, which vanishes as delta -> 0."""
    x = _points(seed, n=25)
    scores = np.random.default_rng(seed + 1).normal(size=(25, 3))
    ridge = KernelRidge.fit(x, scores, damping=damping)
    predicted = ridge.predict(x)
    gram = rbf_kernel(x, x, ridge.bandwidth)
    lam_min = max(np.linalg.eigvalsh(gram)[0], 0.0)
    bound = damping / (lam_min + damping) * np.linalg.norm(scores, 2)
    assert np.linalg.norm(predicted - scores, 2) <= bound * (1 + 1e-6) + 1e-9


def test_prediction_is_linear_in_landmark_scores():
    """predict() equals weights(E) @ P_L, and doubling P_L doubles the prediction."""
    x = _points(3, 30)
    landmarks = choose_landmarks(30, 10, seed=1)
    scores = np.random.default_rng(4).normal(size=(10, 2))
    ridge = KernelRidge.fit(x[landmarks], scores)
    coefficients = ridge.weights(x)
    np.testing.assert_allclose(ridge.predict(x), coefficients @ scores, rtol=1e-9, atol=1e-12)
    double = KernelRidge.fit(x[landmarks], 2 * scores, bandwidth=ridge.bandwidth)
    np.testing.assert_allclose(double.predict(x), 2 * ridge.predict(x), rtol=1e-9, atol=1e-12)


def test_predict_in_chunks_equals_whole():
    x = _points(5, 50)
    ridge = KernelRidge.fit(x[:12], np.arange(12.0))
    np.testing.assert_allclose(ridge.predict(x, chunk_rows=7), ridge.predict(x), rtol=1e-12)


def test_squared_distances_nonnegative():
    x = _points(6, 10) * 1e6
    assert (squared_distances(x, x) >= 0).all()


def test_choose_landmarks_seeded_and_distinct():
    first = choose_landmarks(100, 20, seed=7)
    assert len(set(first.tolist())) == 20
    assert np.array_equal(first, choose_landmarks(100, 20, seed=7))
    assert not np.array_equal(first, choose_landmarks(100, 20, seed=8))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: choose_landmarks(10, 11), "num_landmarks=11"),
        (lambda: choose_landmarks(0, 1), "empty"),
        (lambda: KernelRidge.fit(np.ones((3, 2)), np.ones(4)), "landmark_scores"),
        (lambda: KernelRidge.fit(np.array([[np.nan, 1.0]]), np.ones(1)), "NaN"),
        (lambda: KernelRidge.fit(np.ones((3, 2), dtype=int), np.ones(3)), "floating"),
        (lambda: KernelRidge.fit(np.ones((3, 2)), np.ones(3), damping=0), "damping"),
        (lambda: rbf_kernel(np.ones((1, 2)), np.ones((1, 2)), -1.0), "bandwidth"),
        (lambda: KernelRidge.fit(np.eye(3), np.ones(3)).predict(np.ones((2, 4))), "features"),
    ],
)
def test_bad_input_rejected(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()
