import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.errors import InvalidInputError
from idopt.problem import WeightingProblem, factored_min_eigenvalue


def _rng(seed=0):
    return np.random.default_rng(seed)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), r=st.integers(1, 8), n=st.integers(1, 10), indefinite=st.booleans())
def test_factored_min_eigenvalue_matches_dense(seed, r, n, indefinite):
    """Property: the r x r computation equals the smallest eigenvalue of the dense A^T H A."""
    rng = _rng(seed)
    A = rng.normal(size=(r, n))
    H = rng.normal(size=(r, r))
    H = H + H.T if indefinite else H @ H.T
    dense = np.linalg.eigvalsh(A.T @ H @ A)[0]
    assert factored_min_eigenvalue(A, H) == pytest.approx(dense, abs=1e-9 * max(1.0, np.abs(A.T @ H @ A).max()))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 12), r=st.integers(1, 5))
def test_factored_matches_dense_problem(seed, n, r):
    """Property: objective, gradient and Hessian agree between Q = A^T H A and the dense form."""
    rng = _rng(seed)
    p, A = rng.normal(size=n), rng.normal(size=(r, n))
    H = rng.normal(size=(r, r))
    H = H @ H.T
    factored = WeightingProblem.create(p, 0.3, eta=0.7, A=A, H=H)
    dense = WeightingProblem.create(p, 0.3, eta=0.7, Q=A.T @ H @ A)
    w = rng.random(n)
    assert factored.objective(w) == pytest.approx(dense.objective(w), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(factored.gradient(w), dense.gradient(w), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(factored.dense_hessian(), dense.dense_hessian(), rtol=1e-10, atol=1e-12)


def test_objective_and_gradient_definition():
    rng = _rng(1)
    n = 6
    p = rng.normal(size=n)
    B = rng.normal(size=(n, n))
    Q = B @ B.T
    problem = WeightingProblem.create(p, 0.5, eta=0.2, Q=Q)
    w = rng.random(n)
    expected = -p @ w + 0.2 / (2 * n) * w @ Q @ w + 0.25 * w @ w
    assert problem.objective(w) == pytest.approx(expected, rel=1e-12)
    step = 1e-6
    numeric = [(problem.objective(w + step * e) - problem.objective(w - step * e)) / (2 * step) for e in np.eye(n)]
    np.testing.assert_allclose(problem.gradient(w), numeric, rtol=1e-7, atol=1e-8)


def test_defaults_follow_pool_size():
    problem = WeightingProblem.create(np.ones(5), 1.0)
    assert problem.c == 5
    assert problem.budget == 5
    assert problem.curvature == 0
    assert not problem.has_quadratic


def test_indefinite_q_allowed_when_hessian_positive():
    Q = np.diag([-1.0, 2.0])
    problem = WeightingProblem.create(np.zeros(2), 1.0, eta=1.0, Q=Q)
    assert problem.n == 2


def test_columns_of_multi_target():
    p = np.arange(6.0).reshape(3, 2)
    problem = WeightingProblem.create(p, 1.0)
    assert problem.num_targets == 2
    np.testing.assert_array_equal(problem.column(1).p, [1.0, 3.0, 5.0])
    with pytest.raises(InvalidInputError, match="target index 2"):
        problem.column(2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(p=np.array([1, 2])), "p"),
        (dict(p=np.array([np.nan, 1.0])), "p"),
        (dict(p=np.zeros(0)), "n = 0"),
        (dict(p=np.ones(2), lam=-1.0), "lam"),
        (dict(p=np.ones(2), eta=-0.1), "eta"),
        (dict(p=np.ones(2), c=0.0), "c must be > 0"),
        (dict(p=np.ones(2), budget=0.0), "budget"),
        (dict(p=np.ones(2), Q=np.ones((3, 3))), r"Q must have shape \(n, n\)"),
        (dict(p=np.ones(2), Q=np.array([[1.0, 2.0], [0.0, 1.0]])), "symmetric"),
        (dict(p=np.ones(2), eta=1.0, Q=-np.eye(2), lam=0.1), "not positive definite"),
        (dict(p=np.ones(3), eta=1.0, A=np.ones((2, 3)), lam=0.0), "pass lam > 0"),
        (dict(p=np.ones(2), A=np.ones((1, 3))), "A must have shape"),
        (dict(p=np.ones(2), A=np.ones((1, 2)), H=np.ones((2, 2))), "H must have shape"),
        (dict(p=np.ones(2), Q=np.eye(2), A=np.ones((1, 2))), "not both"),
        (dict(p=np.ones(2), H=np.eye(1)), "without A"),
        (dict(p=np.ones(2), Q=np.eye(2).astype(object)), "Q"),
    ],
)
def test_bad_input_rejected(kwargs, message):
    kwargs = dict(kwargs)
    p = kwargs.pop("p")
    lam = kwargs.pop("lam", 1.0)
    with pytest.raises(InvalidInputError, match=message):
        WeightingProblem.create(p, lam, **kwargs)
