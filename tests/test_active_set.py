"""Tests of the primal-dual active-set solver for the second-order weighting problem."""

import itertools

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import idopt.active_set as active_set
from idopt import InvalidInputError, Status, solve_first_order
from idopt.active_set import solve_active_set
from idopt.problem import WeightingProblem


def brute_force(problem, p=None):
    """Exact reference for n <= 8: the optimum of a strictly convex problem solves the
    equality-constrained KKT system on its own support and is feasible there, so solve
    that system for every non-empty support, keep the solutions with w >= 0 and return the
    one with the lowest objective."""
    scores = problem.p if p is None else p
    n = problem.n
    hessian = problem.dense_hessian()
    best_w, best_value = None, np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            index = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = hessian[np.ix_(index, index)]
            kkt[:size, size] = -1.0
            kkt[size, :size] = 1.0
            rhs = np.concatenate([scores[index], [problem.budget]])
            solution = np.linalg.solve(kkt, rhs)
            if np.min(solution[:size]) < -1e-12 * problem.budget:
                continue
            w = np.zeros(n)
            w[index] = np.maximum(solution[:size], 0.0)
            value = problem.objective(w, scores)
            if value < best_value:
                best_w, best_value = w, value
    return best_w, best_value


def clarabel_reference(problem):
    """Reference for larger n: CVXPY with Clarabel at tolerances 1e-12."""
    w = cp.Variable(problem.n)
    hessian = problem.dense_hessian()
    objective = -problem.p @ w + 0.5 * cp.quad_form(w, cp.psd_wrap(hessian))
    constraints = [w >= 0, cp.sum(w) == problem.budget]
    cp.Problem(cp.Minimize(objective), constraints).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return np.asarray(w.value)


def gradient_instance(n, d, seed, eta=10.0, lam=0.1, budget=None, form="dense", with_h=True):
    """Random-gradient instance: G (d x n), p = G^T g, Q = G^T H G with H PSD."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((d, n)) / np.sqrt(d)
    p = G.T @ rng.standard_normal(d)
    B = rng.standard_normal((d, d))
    H = B @ B.T / d if with_h else None
    if form == "dense":
        Q = G.T @ (G if H is None else H @ G)
        return WeightingProblem.create(p, lam, eta=eta, budget=budget, Q=0.5 * (Q + Q.T))
    return WeightingProblem.create(p, lam, eta=eta, budget=budget, A=G, H=H)


def assert_feasible(solution, budget):
    assert np.min(solution.w) >= 0.0
    # Rescaling the final block leaves only the rounding of the sum, a few ulps of b.
    assert abs(np.sum(solution.w) - budget) <= 1e-12 * budget


def assert_matches(solution, problem, reference_w):
    reference_value = problem.objective(reference_w)
    scale = max(abs(reference_value), np.max(np.abs(problem.p)) * problem.budget * 1e-3)
    assert solution.objective <= reference_value + 1e-8 * scale
    assert abs(solution.objective - reference_value) <= 1e-8 * scale
    assert np.max(np.abs(solution.w - reference_w)) <= 1e-6 * problem.budget


@pytest.mark.parametrize("form", ["dense", "factored"])
@pytest.mark.parametrize("seed", range(4))
def test_small_matches_brute_force(form, seed):
    problem = gradient_instance(7, 3, seed, form=form)
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, problem.budget)
    assert_matches(solution, problem, reference_w)


@pytest.mark.parametrize(
    "n, d, form, with_h",
    [(40, 8, "dense", True), (60, 60, "dense", True), (50, 5, "factored", True), (50, 10, "factored", False)],
)
def test_matches_clarabel(n, d, form, with_h):
    problem = gradient_instance(n, d, seed=n + d, form=form, with_h=with_h)
    solution = solve_active_set(problem)
    reference_w = clarabel_reference(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, problem.budget)
    # The 1e-8 bounds leave room for Clarabel's own error, which its 1e-12 tolerances keep
    # far smaller on these well-conditioned instances (smallest Hessian eigenvalue 0.1).
    assert_matches(solution, problem, reference_w)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    rank=st.integers(1, 4),
    log_eta=st.floats(-2.0, 2.0),
    log_lam=st.floats(-2.0, 1.0),
    log_budget=st.floats(-3.0, 2.0),
    form=st.sampled_from(["dense", "factored", "factored_no_h"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_brute_force(n, rank, log_eta, log_lam, log_budget, form, seed):
    """Property: for every size, rank, eta, lam and budget the solver finds the brute-force optimum."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rank, n))
    H = None
    if form != "factored_no_h":
        B = rng.standard_normal((rank, rank))
        H = B @ B.T
    p = rng.standard_normal(n)
    budget = 10.0**log_budget
    options = dict(eta=10.0**log_eta, budget=budget)
    if form == "dense":
        Q = A.T @ (A if H is None else H @ A)
        problem = WeightingProblem.create(p, 10.0**log_lam, Q=0.5 * (Q + Q.T), **options)
    else:
        problem = WeightingProblem.create(p, 10.0**log_lam, A=A, H=H, **options)
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, budget)
    assert_matches(solution, problem, reference_w)


@pytest.mark.parametrize("seed", range(3))
def test_factored_equals_dense(seed):
    dense = gradient_instance(300, 16, seed, form="dense")
    factored = gradient_instance(300, 16, seed, form="factored")
    dense_solution = solve_active_set(dense)
    factored_solution = solve_active_set(factored)
    assert dense_solution.method == "active_set:dense"
    assert factored_solution.method == "active_set:factored"
    # Both solve the same strictly convex problem to certificate accuracy. The Hessian's
    # smallest eigenvalue is lam = 0.1, so their weights differ by rounding only.
    assert np.max(np.abs(dense_solution.w - factored_solution.w)) <= 1e-8 * dense.budget
    assert abs(dense_solution.objective - factored_solution.objective) <= 1e-10 * abs(dense_solution.objective)


def test_refactor_equals_update():
    problem = gradient_instance(400, 400, seed=3, lam=1.0)
    updated = solve_active_set(problem)
    refactored = solve_active_set(problem, dense_update="refactor")
    assert updated.extras["schur_updates"] >= 1
    assert refactored.extras["schur_updates"] == 0
    assert np.max(np.abs(updated.w - refactored.w)) <= 1e-9 * problem.budget


@pytest.mark.parametrize("lam", [0.05, 1.0, 30.0])
def test_no_q_reproduces_first_order(lam):
    rng = np.random.default_rng(11)
    p = rng.standard_normal(500)
    closed = solve_first_order(p, lam, 50.0)
    for problem in (
        WeightingProblem.create(p, lam, budget=50.0),
        WeightingProblem.create(p, lam, eta=0.0, budget=50.0, Q=np.eye(500)),
    ):
        solution = solve_active_set(problem)
        assert solution.method == "active_set:diagonal"
        assert solution.status is Status.OPTIMAL
        # The diagonal-Newton start is the closed form for M = lam I: one confirming solve.
        assert solution.iterations == 1
        assert np.max(np.abs(solution.w - closed.w)) <= 1e-12 * 50.0


def test_linear_program_uses_closed_form():
    p = np.array([0.3, 1.0, -2.0, 1.0])
    solution = solve_active_set(WeightingProblem.create(p, 0.0, budget=2.0))
    assert solution.method == "active_set:lp:argmax"
    np.testing.assert_array_equal(solution.w, [0.0, 1.0, 0.0, 1.0])


def test_lam_zero_dense_positive_definite():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 6))
    problem = WeightingProblem.create(rng.standard_normal(6), 0.0, eta=6.0, Q=X.T @ X + 0.1 * np.eye(6))
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.status is Status.OPTIMAL
    assert_matches(solution, problem, reference_w)


def test_lam_zero_factored_expands():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((8, 5))
    problem = WeightingProblem.create(rng.standard_normal(5), 0.0, eta=5.0, A=A)
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.method == "active_set:dense_expanded"
    assert_matches(solution, problem, reference_w)


@pytest.mark.parametrize("form", ["dense", "factored"])
def test_repeated_scores(form):
    rng = np.random.default_rng(7)
    n = 200
    p = np.repeat(rng.standard_normal(5), n // 5)
    A = rng.standard_normal((3, n)) / 3.0
    if form == "dense":
        problem = WeightingProblem.create(p, 0.1, eta=float(n), Q=A.T @ A)
    else:
        problem = WeightingProblem.create(p, 0.1, eta=float(n), A=A)
    solution = solve_active_set(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, problem.budget)


@pytest.mark.parametrize("form", ["dense", "factored"])
def test_rank_one_q(form):
    rng = np.random.default_rng(8)
    n = 300
    a = rng.standard_normal(n)
    p = rng.standard_normal(n)
    if form == "dense":
        problem = WeightingProblem.create(p, 0.01, eta=float(n), Q=np.outer(a, a))
    else:
        problem = WeightingProblem.create(p, 0.01, eta=float(n), A=a[None, :])
    solution = solve_active_set(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, problem.budget)


@pytest.mark.parametrize("form", ["dense", "factored"])
def test_tiny_budget(form):
    problem = gradient_instance(8, 3, seed=9, budget=1e-9 * 8, form=form)
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert_feasible(solution, problem.budget)
    assert np.max(np.abs(solution.w - reference_w)) <= 1e-6 * problem.budget


def test_single_sample():
    problem = WeightingProblem.create(np.array([2.0]), 0.5, eta=1.0, Q=np.array([[3.0]]), budget=4.0)
    solution = solve_active_set(problem)
    assert solution.status is Status.OPTIMAL
    np.testing.assert_array_equal(solution.w, [4.0])


def test_iteration_limit_status():
    problem = gradient_instance(300, 16, seed=1, eta=50.0)
    full = solve_active_set(problem)
    assert full.iterations > 1
    limited = solve_active_set(problem, max_iter=1)
    assert limited.status is Status.ITERATION_LIMIT
    assert "max_iter=1" in limited.extras["reason"]
    assert limited.iterations == 1
    assert_feasible(limited, problem.budget)


def test_primal_fallback_after_cycling(monkeypatch):
    problem = gradient_instance(60, 6, seed=2, eta=50.0)
    reference = solve_active_set(problem)

    def cycling_phase(state, free, threshold):
        # Report a cycle at once, from the uniform point, to exercise the fallback.
        return "cycling", np.full(problem.n, problem.budget / problem.n), 0.0, free

    monkeypatch.setattr(active_set, "_primal_dual_phase", cycling_phase)
    solution = solve_active_set(problem)
    assert solution.extras["cycling_detected"]
    assert solution.extras["phase"] == "primal"
    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < 1e-9
    assert np.max(np.abs(solution.w - reference.w)) <= 1e-8 * problem.budget


def test_fallback_iteration_limit(monkeypatch):
    problem = gradient_instance(60, 6, seed=2, eta=50.0)
    monkeypatch.setattr(
        active_set, "_primal_dual_phase",
        lambda state, free, threshold: ("cycling", np.full(problem.n, problem.budget / problem.n), 0.0, free),
    )
    solution = solve_active_set(problem, max_iter=3)
    assert solution.status is Status.ITERATION_LIMIT
    assert "cycled" in solution.extras["reason"]
    assert_feasible(solution, problem.budget)


def test_warm_start_confirms_optimum():
    problem = gradient_instance(500, 32, seed=4, eta=30.0)
    cold = solve_active_set(problem)
    warm = solve_active_set(problem, w0=cold.w)
    assert warm.status is Status.OPTIMAL
    assert warm.iterations == 1
    assert np.max(np.abs(warm.w - cold.w)) <= 1e-10 * problem.budget


def test_target_column():
    rng = np.random.default_rng(12)
    A = rng.standard_normal((3, 7))
    P = rng.standard_normal((7, 2))
    problem = WeightingProblem.create(P, 0.2, eta=7.0, A=A)
    for target in range(2):
        solution = solve_active_set(problem, target=target)
        reference_w, _ = brute_force(problem, P[:, target])
        assert np.max(np.abs(solution.w - reference_w)) <= 1e-6 * problem.budget


def test_not_positive_definite_is_solver_error():
    rng = np.random.default_rng(13)
    A = rng.standard_normal((2, 20))
    problem = WeightingProblem.create(rng.standard_normal(20), 0.0, eta=1.0, Q=A.T @ A, check_psd=False)
    solution = solve_active_set(problem)
    assert solution.status is Status.SOLVER_ERROR
    assert "factorization failed" in solution.extras["reason"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": 1}, "target index 1 is out of range"),
        ({"target": 1.0}, "target must be an integer"),
        ({"w0": np.ones(4)}, r"w0 must have shape \(n,\) = \(5,\)"),
        ({"w0": np.array([6.0, -1.0, 0.0, 0.0, 0.0])}, "minimum is -1"),
        ({"w0": np.ones(5) * 2.0}, "sum\\(w0\\) = 10"),
        ({"w0": np.array([1.0, np.nan, 1.0, 1.0, 1.0])}, "w0 must be finite"),
        ({"w0": np.ones(5, dtype=int)}, "w0 must have a real floating dtype"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"tol": 0.0}, "tol must be a finite number > 0"),
        ({"dense_update": "rank_one"}, "dense_update must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    problem = WeightingProblem.create(np.arange(5.0), 1.0, eta=1.0, Q=np.eye(5))
    with pytest.raises(InvalidInputError, match=message):
        solve_active_set(problem, **kwargs)


def test_rejects_non_problem():
    with pytest.raises(InvalidInputError, match="problem must be a WeightingProblem"):
        solve_active_set(np.ones(3))


def test_indefinite_middle_factor():
    rng = np.random.default_rng(14)
    A = rng.standard_normal((3, 7))
    H = np.diag([2.0, -0.5, 1.0])
    # Q = A^T H A is indefinite with smallest eigenvalue >= -0.5 ||A||_2^2. With eta/c = 1,
    # lam = ||A||_2^2 keeps the Hessian (eta/c) Q + lam I positive definite.
    lam = float(np.linalg.norm(A, 2) ** 2)
    problem = WeightingProblem.create(rng.standard_normal(7), lam, eta=7.0, A=A, H=H)
    solution = solve_active_set(problem)
    reference_w, _ = brute_force(problem)
    assert solution.status is Status.OPTIMAL
    assert_matches(solution, problem, reference_w)
