import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.certificate import kkt_certificate


def naive_certificate(w, grad, budget, grad_scale, support_tol):
    """The definition written out with full-length temporaries, as the reference."""
    w_max = w.max()
    support = w > support_tol * w_max if w_max > 0 else np.zeros(w.shape, dtype=bool)
    nu = grad[support].mean() if support.any() else grad.min()
    mu = grad - nu
    stationarity = np.abs(mu[support]).max() / grad_scale if support.any() else 0.0
    dual = max(0.0, -mu[~support].min()) / grad_scale if (~support).any() else 0.0
    complementarity = (np.abs(mu) * np.maximum(w, 0)).max() / (grad_scale * w_max) if w_max > 0 else 0.0
    primal = max(abs(w.sum() - budget), max(0.0, -w.min())) / budget
    return stationarity, dual, complementarity, primal, nu


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 40),
    zero_share=st.floats(0.0, 1.0),
    negative=st.booleans(),
    support_tol=st.sampled_from([0.0, 1e-6, 0.3]),
)
def test_certificate_equals_definition(seed, n, zero_share, negative, support_tol):
    """Property: the index-based certificate equals the definition computed with full arrays."""
    rng = np.random.default_rng(seed)
    w = rng.random(n) * (rng.random(n) >= zero_share)
    if negative:
        w[rng.integers(n)] = -1e-3
    grad = rng.normal(size=n)
    budget = float(max(w.sum(), 1.0))
    got = kkt_certificate(w, grad, budget, grad_scale=2.0, support_tol=support_tol)
    stationarity, dual, complementarity, primal, nu = naive_certificate(w, grad, budget, 2.0, support_tol)
    assert got.stationarity == pytest.approx(stationarity, abs=1e-15)
    assert got.dual_feasibility == pytest.approx(dual, abs=1e-15)
    assert got.complementarity == pytest.approx(complementarity, abs=1e-15)
    assert got.primal_feasibility == pytest.approx(primal, abs=1e-15)
    assert got.nu == pytest.approx(nu, abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 40),
    zero_share=st.floats(0.0, 1.0),
    negative=st.booleans(),
    lam=st.floats(1e-3, 10.0),
)
def test_first_order_certificate_equals_generic(seed, n, zero_share, negative, lam):
    """Property: the first-order fast path equals kkt_certificate on grad = lam w - p, and F(w)."""
    from idopt.first_order import _certify

    rng = np.random.default_rng(seed)
    w = rng.random(n) * (rng.random(n) >= zero_share)
    if negative:
        w[rng.integers(n)] = -1e-3
    p = rng.normal(size=n)
    budget = float(max(w.sum(), 1.0))
    objective, got = _certify(w, p, lam, budget)
    scale = max(np.abs(p).max(), lam * w.max())
    expected = kkt_certificate(w, lam * w - p, budget, grad_scale=scale if scale > 0 else None)
    for field in ("stationarity", "dual_feasibility", "complementarity", "primal_feasibility", "nu"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-12, abs=1e-15), field
    assert got.support_size == expected.support_size
    assert objective == pytest.approx(-p @ w + 0.5 * lam * w @ w, rel=1e-12, abs=1e-15)
