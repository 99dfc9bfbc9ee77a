"""Tests of idopt.robust: the perturbation identity, the trust-region maximum and the solvers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from idopt.errors import InvalidInputError
from idopt.robust import (
    LinearSquaredLoss,
    RobustProblem,
    grid_minimum,
    identity_sides,
    maximize_trust_region,
    one_step_value,
    perturbation_curvature,
    perturbation_gradient,
    solve_robust,
    weighting_objective,
)
from idopt.solve import solve

EPS = np.finfo(float).eps


def random_model(seed: int, n: int = 6, d: int = 3, m: int = 4) -> LinearSquaredLoss:
    rng = np.random.default_rng(seed)
    return LinearSquaredLoss.create(
        rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=(m, d)), rng.normal(size=m), rng.normal(size=d)
    )


def absolute_scale(model: LinearSquaredLoss, w, eta, delta) -> float:
    """Magnitude of every term of the identity, recomputed with absolute values.

    Rounding errors of a sum of products are bounded by (number of terms) * eps times the
    same sum taken over absolute values, so this is the scale that the tolerance multiplies.
    """
    xs, xt = np.abs(model.x_source), np.abs(model.x_target)
    scales = []
    for theta in (np.abs(model.theta), np.abs(model.theta) + np.abs(delta)):
        g_source = xs.T * (2.0 * (xs @ theta + np.abs(model.y_source)))
        g_target = xt.T @ (2.0 * (xt @ theta + np.abs(model.y_target)))
        h_target = 2.0 * xt.T @ xt
        g_w = g_source @ np.abs(w)
        scales.append(float(g_target @ g_w) + 0.5 * eta * float(g_w @ h_target @ g_w))
    h_w = 2.0 * xs.T @ (np.abs(w)[:, None] * xs)
    h_target = 2.0 * xt.T @ xt
    g_target = xt.T @ (2.0 * (xt @ np.abs(model.theta) + np.abs(model.y_target)))
    g_w = (xs.T * (2.0 * (xs @ np.abs(model.theta) + np.abs(model.y_source)))) @ np.abs(w)
    a_abs = h_w @ g_target + h_target @ g_w + eta * h_w @ h_target @ g_w
    b_abs = h_target @ h_w + 0.5 * eta * h_w @ h_target @ h_w
    scales.append(float(a_abs @ np.abs(delta)) + float(np.abs(delta) @ b_abs @ np.abs(delta)))
    return sum(scales)


@st.composite
def identity_cases(draw):
    n = draw(st.integers(1, 6))
    d = draw(st.integers(1, 5))
    m = draw(st.integers(1, 5))
    values = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
    x_source = draw(hnp.arrays(np.float64, (n, d), elements=values))
    y_source = draw(hnp.arrays(np.float64, (n,), elements=values))
    x_target = draw(hnp.arrays(np.float64, (m, d), elements=values))
    y_target = draw(hnp.arrays(np.float64, (m,), elements=values))
    theta = draw(hnp.arrays(np.float64, (d,), elements=values))
    delta = draw(hnp.arrays(np.float64, (d,), elements=values))
    w = draw(hnp.arrays(np.float64, (n,), elements=values))
    eta = draw(st.floats(0.0, 2.0))
    model = LinearSquaredLoss.create(x_source, y_source, x_target, y_target, theta)
    return model, w, eta, delta


@settings(max_examples=200, deadline=None)
@given(identity_cases())
def test_identity_is_exact(case):
    """Property: f(w; theta + delta) = f(w; theta) + a_w^T delta + delta^T B_w delta for any w, theta, delta, eta >= 0."""
    model, w, eta, delta = case
    left, right = identity_sides(model, w, eta, delta)
    # Both sides are sums of at most ~(n + m + d)^2 products, so rounding stays below
    # that count times eps times the absolute scale, so 100 (n + m + d) eps is generous.
    tolerance = 100 * (model.n + model.x_target.shape[0] + model.d) * EPS * absolute_scale(model, w, eta, delta)
    assert abs(left - right) <= tolerance + 1e-300


def test_curvature_not_symmetric_but_form_matches():
    model = random_model(3)
    w = np.linspace(0.5, 1.5, model.n)
    B = perturbation_curvature(model, w, 0.1)
    assert np.max(np.abs(B - B.T)) > 1e-3 * np.max(np.abs(B))
    delta = np.array([0.3, -0.2, 0.5])
    assert delta @ B @ delta == pytest.approx(delta @ (0.5 * (B + B.T)) @ delta, rel=1e-12)


def test_objective_is_exact_step_change():
    """f(w) = (L_T(theta - eta G_S w) - L_T(theta)) / eta, exact for a quadratic loss."""
    model = random_model(4)
    w = np.linspace(0.2, 1.8, model.n)
    eta = 0.05
    stepped = model.theta - eta * (model.source_gradients @ w)
    expected = (model.target_loss(stepped) - model.target_loss()) / eta
    # Cancellation in the difference of losses costs about eps * L_T / eta in absolute terms.
    tolerance = 1e3 * EPS * (model.target_loss(stepped) + model.target_loss()) / eta
    assert weighting_objective(model, w, eta) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("eta", [0.0, 0.05])
@pytest.mark.parametrize("curvature_term", [True, False])
def test_gradient_matches_finite_differences(eta, curvature_term):
    model = random_model(5, n=7, d=4, m=5)
    problem = RobustProblem.create(model, eta=eta, rho=0.3, lam=0.1, curvature_term=curvature_term)
    w = np.random.default_rng(6).uniform(0.1, 2.0, model.n)
    gradient = problem.gradient(w)
    step = 1e-5
    numeric = np.array([
        (problem.objective(w + step * e) - problem.objective(w - step * e)) / (2 * step) for e in np.eye(model.n)
    ])
    # Central differences err by h^2 |R'''| / 6 plus eps |R| / h; with h = 1e-5 and R, its
    # derivatives of similar size, both are below 1e-9 relative, so 1e-6 leaves a wide margin.
    assert np.max(np.abs(gradient - numeric)) <= 1e-6 * np.max(np.abs(gradient))


@st.composite
def trust_region_cases(draw):
    d = draw(st.integers(1, 5))
    values = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
    a = draw(hnp.arrays(np.float64, (d,), elements=values))
    B = draw(hnp.arrays(np.float64, (d, d), elements=values))
    rho = draw(st.floats(1e-3, 10.0))
    return a, B, rho


@settings(max_examples=200, deadline=None)
@given(trust_region_cases())
def test_trust_region_optimality_conditions(case):
    """Property: the maximiser satisfies (mu I - 2S) delta = a, mu >= max(0, 2 s_max), ||delta|| <= rho, mu (rho - ||delta||) = 0.

    These conditions are necessary and sufficient for a global maximum of the
    trust-region subproblem, so they certify the exact value.
    """
    a, B, rho = case
    result = maximize_trust_region(a, B, rho)
    S = 0.5 * (B + B.T)
    s_max = float(np.linalg.eigvalsh(S)[-1])
    scale = max(np.abs(S).max() * rho + np.abs(a).max(), result.multiplier * rho, 1e-300)
    # The residuals come from rounding in d-term sums and the secular root, far below 1e-8 of the scale.
    residual = (result.multiplier * np.eye(len(a)) - 2 * S) @ result.delta - a
    assert np.max(np.abs(residual)) <= 1e-8 * scale
    assert result.multiplier >= max(0.0, 2 * s_max) - 1e-9 * max(abs(s_max), 1.0)
    assert np.linalg.norm(result.delta) <= rho * (1 + 1e-12)
    assert result.multiplier * (rho - np.linalg.norm(result.delta)) <= 1e-8 * scale * rho


@settings(max_examples=200, deadline=None)
@given(trust_region_cases())
def test_one_step_below_exact_maximum(case):
    """Property: the one-step value rho ||a|| + rho^2 a^T B a / ||a||^2 never exceeds the exact maximum."""
    a, B, rho = case
    exact = maximize_trust_region(a, B, rho).value
    step = one_step_value(a, B, rho)
    # The one-step point is feasible, and the exact value carries rounding of order eps * scale.
    scale = rho * np.linalg.norm(a) + rho**2 * np.abs(B).sum()
    # Subnormal inputs (found by hypothesis) underflow 1e-10 * scale to 0, hence the floor.
    assert step <= exact + max(1e-10 * scale, np.finfo(float).tiny)


def test_trust_region_hard_case():
    # a is orthogonal to the top eigenvector e_3, and delta(mu = 6) = (1/4, 1/2, 0) has norm < 1.
    a = np.array([1.0, 1.0, 0.0])
    result = maximize_trust_region(a, np.diag([1.0, 2.0, 3.0]), 1.0)
    assert result.hard_case
    assert result.multiplier == pytest.approx(6.0)
    assert result.value == pytest.approx(0.75 + 1 / 16 + 2 / 4 + 3 * (1 - 5 / 16), rel=1e-12)
    assert np.linalg.norm(result.delta) == pytest.approx(1.0, rel=1e-12)


def test_trust_region_interior_maximum():
    result = maximize_trust_region(np.array([1.0, 0.0]), -np.eye(2), 2.0)
    assert result.multiplier == 0.0
    np.testing.assert_allclose(result.delta, [0.5, 0.0], atol=1e-15)
    assert result.value == pytest.approx(0.25, rel=1e-14)


def test_one_step_gap_shrinks_with_rho():
    model = random_model(7, n=8, d=4, m=6)
    w = np.linspace(0.5, 1.5, model.n)
    a = perturbation_gradient(model, w, 0.02)
    B = perturbation_curvature(model, w, 0.02)
    norm_s = np.linalg.norm(0.5 * (B + B.T), 2)
    norm_a = np.linalg.norm(a)
    largest = norm_a / (2 * norm_s)
    gaps = []
    for rho in largest * np.array([1.0, 0.1, 0.01, 0.001]):
        exact = maximize_trust_region(a, B, rho).value
        step = one_step_value(a, B, rho)
        gap = exact - step
        # For rho <= ||a|| / (2 ||S||), writing delta = r (cos t a_hat + sin t u) gives
        # gap <= max_s (-2 r ||a|| s^2 + 4 r^2 ||S|| s) <= 2 rho^3 ||S||^2 / ||a||.
        assert gap <= 2 * rho**3 * norm_s**2 / norm_a * (1 + 1e-9) + 1e-12 * abs(exact)
        assert gap >= -1e-12 * abs(exact)
        gaps.append(gap / abs(exact))
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))


def test_one_step_equals_maximum_without_curvature():
    a = np.array([0.3, -1.2, 0.7])
    exact = maximize_trust_region(a, np.zeros((3, 3)), 0.5).value
    assert exact == pytest.approx(0.5 * np.linalg.norm(a), rel=1e-14)
    assert one_step_value(a, np.zeros((3, 3)), 0.5) == pytest.approx(exact, rel=1e-14)


def test_one_step_equals_maximum_when_curvature_vanishes():
    # Two copies of one input with w = (1, -1) give H_w = 0, so B_w = 0 while a_w = -H_T g_w != 0.
    rng = np.random.default_rng(8)
    # Dyadic entries make every product in H_w exact, so the cancellation is exact too.
    x = np.array([0.5, -1.25, 2.0])
    model = LinearSquaredLoss.create(
        np.vstack([x, x]), np.array([1.0, -2.0]), rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3)
    )
    w = np.array([1.0, -1.0])
    a = perturbation_gradient(model, w, 0.3)
    B = perturbation_curvature(model, w, 0.3)
    assert np.max(np.abs(B)) == 0.0
    assert np.linalg.norm(a) > 1.0
    exact = maximize_trust_region(a, B, 0.2).value
    assert one_step_value(a, B, 0.2) == pytest.approx(exact, rel=1e-14)


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_rho_zero_matches_plain_solver(eta):
    model = random_model(9, n=25, d=4, m=8)
    lam = 2.0
    problem = RobustProblem.create(model, eta=eta, rho=0.0, lam=lam)
    robust = solve_robust(problem, starts=3)
    plain = problem.plain_problem()
    reference = solve(plain)
    assert problem.objective(reference.w) == pytest.approx(plain.objective(reference.w), rel=1e-12)
    gap = robust.objective - problem.objective(reference.w)
    scale = abs(robust.objective)
    # Both solvers stop at relative accuracy far below 1e-8 on this small problem.
    assert abs(gap) <= 1e-8 * scale
    # R is lam-strongly convex on the feasible set, so ||w - w*||^2 <= 2 (R(w) - R*) / lam;
    # the gap above bounds R(w) - R* for both points.
    assert np.linalg.norm(robust.w - reference.w) <= 2 * np.sqrt(2 * 1e-8 * scale / lam)


@pytest.mark.parametrize("n, points", [(2, 4001), (3, 401)])
@pytest.mark.parametrize("eta, curvature_term", [(0.03, True), (0.0, False), (0.0, True)])
def test_slsqp_matches_grid(n, points, eta, curvature_term):
    model = random_model(10 + n, n=n, d=3, m=4)
    problem = RobustProblem.create(model, eta=eta, rho=0.5, lam=0.1, curvature_term=curvature_term)
    solution = solve_robust(problem, starts=4)
    grid_w, grid_value = grid_minimum(problem, points)
    spacing = problem.budget / (points - 1)
    # Every feasible point lies within one spacing of a grid point, so the true minimum is
    # at least grid_value - L * spacing with L the largest gradient norm near the minimiser.
    lipschitz = np.linalg.norm(problem.gradient(grid_w)) + np.linalg.norm(problem.gradient(solution.w))
    assert solution.objective <= grid_value + 1e-10 * abs(grid_value)
    assert solution.objective >= grid_value - lipschitz * spacing
    assert np.all(solution.w >= 0)
    assert solution.w.sum() == pytest.approx(problem.budget, rel=1e-12)


@pytest.mark.parametrize("n", [3, 30])
def test_socp_matches_slsqp(n):
    model = random_model(20 + n, n=n, d=4, m=5)
    problem = RobustProblem.create(model, eta=0.0, rho=0.4, lam=0.5, curvature_term=False)
    cone = solve_robust(problem, "socp")
    local = solve_robust(problem, starts=3)
    # The problem is convex, so both reach the same minimum; Clarabel's default relative
    # accuracy is about 1e-8.
    assert cone.objective == pytest.approx(local.objective, rel=1e-6)
    assert np.all(cone.w >= 0)
    assert cone.w.sum() == pytest.approx(problem.budget, rel=1e-12)


def test_robust_example_command(tmp_path):
    from idopt.cli import main

    status = main(["robust-example", "--out", str(tmp_path), "--rho", "1e-4", "--steps", "5", "--starts", "1"])
    assert status == 0
    assert (tmp_path / "robust_example.png").stat().st_size > 0
    weights = np.load(tmp_path / "weights.npz")
    assert weights["robust_rho=0.0001"].sum() == pytest.approx(120.0, rel=1e-10)


def _good_arrays():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 2)), rng.normal(size=4), rng.normal(size=(3, 2)), rng.normal(size=3), np.zeros(2)]


@pytest.mark.parametrize(
    "index, value, match",
    [
        (0, np.ones((4, 2), dtype=int), "x_source must have a real floating dtype"),
        (0, np.zeros((0, 2)), "x_source has no rows"),
        (1, np.ones(5), r"y_source must have shape \(4,\)"),
        (2, np.ones((3, 3)), "x_target must have 2 columns"),
        (3, np.array([1.0, np.nan, 0.0]), "y_target must be finite"),
        (4, np.zeros(3), r"theta must have shape \(2,\)"),
    ],
)
def test_model_rejects_bad_arrays(index, value, match):
    arrays = _good_arrays()
    arrays[index] = value
    with pytest.raises(InvalidInputError, match=match):
        LinearSquaredLoss.create(*arrays)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"eta": -1.0, "rho": 0.1}, "eta must be finite and >= 0"),
        ({"eta": 0.1, "rho": float("nan")}, "rho must be finite and >= 0"),
        ({"eta": 0.1, "rho": "big"}, "rho must be a real number"),
        ({"eta": 0.1, "rho": 0.1, "lam": -2.0}, "lam must be finite and >= 0"),
        ({"eta": 0.1, "rho": 0.1, "budget": 0.0}, "budget must be finite and > 0"),
        ({"eta": 0.1, "rho": 0.1, "curvature_term": 1}, "curvature_term must be True or False"),
    ],
)
def test_problem_rejects_bad_settings(options, match):
    model = LinearSquaredLoss.create(*_good_arrays())
    with pytest.raises(InvalidInputError, match=match):
        RobustProblem.create(model, **options)


def test_functions_reject_bad_inputs():
    model = LinearSquaredLoss.create(*_good_arrays())
    with pytest.raises(InvalidInputError, match=r"w must have shape \(4,\)"):
        weighting_objective(model, np.ones(3), 0.1)
    with pytest.raises(InvalidInputError, match=r"delta must have shape \(2,\)"):
        identity_sides(model, np.ones(4), 0.1, np.ones(5))
    with pytest.raises(InvalidInputError, match=r"B must have shape \(d, d\) = \(2, 2\)"):
        maximize_trust_region(np.ones(2), np.ones((3, 3)), 1.0)
    with pytest.raises(InvalidInputError, match="rho must be finite and >= 0"):
        maximize_trust_region(np.ones(2), np.eye(2), -1.0)
    with pytest.raises(InvalidInputError, match="model must be a LinearSquaredLoss"):
        RobustProblem.create("data", eta=0.1, rho=0.1)


def test_solver_rejects_bad_requests():
    model = LinearSquaredLoss.create(*_good_arrays())
    problem = RobustProblem.create(model, eta=0.1, rho=0.1, lam=1.0)
    with pytest.raises(InvalidInputError, match="method must be 'slsqp' or 'socp'"):
        solve_robust(problem, "newton")
    with pytest.raises(InvalidInputError, match="method 'socp' needs the convex case"):
        solve_robust(problem, "socp")
    with pytest.raises(InvalidInputError, match="starts must be an integer >= 1"):
        solve_robust(problem, starts=0)
    with pytest.raises(InvalidInputError, match="grid_minimum supports n = 2 or 3"):
        grid_minimum(problem, 10)


def test_trust_region_subnormal_matrix():
    """A subnormal B with a = 0 is the zero problem, not 0/0 (found by hypothesis)."""
    B = np.full((2, 2), 5e-324)
    result = maximize_trust_region(np.zeros(2), B, 0.25)
    assert np.all(np.isfinite(result.delta))
    assert np.linalg.norm(result.delta) <= 0.25 + 1e-15
