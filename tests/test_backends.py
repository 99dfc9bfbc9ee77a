"""Tests of the OSQP and CVXPY backends against the closed form and a brute-force reference."""

import numpy as np
import osqp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.backends.base import clean_weights, refine_on_support
from idopt.backends.cvxpy_backend import CVXPYBackend, map_cvxpy_status
from idopt.backends.osqp_backend import OSQPBackend, map_osqp_status, qp_matrices
from idopt.errors import InvalidInputError, SolverError
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.status import Status
from tests.reference_qp import brute_force_weights

BACKENDS = [OSQPBackend, CVXPYBackend]

# Required agreement between backends. The backends' weights come from an exact solve on
# the support (OSQP polishing, or refine_on_support for Clarabel). Their errors are rounding
# errors amplified by the condition number of the Hessian block, observed at about 1e-12,
# far inside 1e-6 for w and 1e-8 for the objective.
W_ATOL = 1e-6
OBJECTIVE_RTOL = 1e-8
CERTIFICATE_TOL = 1e-8


def random_factored(seed, n, r, lam, eta, with_h=True):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n)
    A = rng.normal(size=(r, n))
    H = None
    if with_h:
        root = rng.normal(size=(r, r))
        H = root @ root.T
    return WeightingProblem.create(p, lam, eta=eta, A=A, H=H)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
def test_first_order_matches_closed_form(backend, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    lam = float(10 ** rng.uniform(-2, 1))
    p = rng.normal(size=n)
    reference = solve_first_order(p, lam)

    solution = backend().solve(WeightingProblem.create(p, lam))

    assert solution.status is Status.OPTIMAL
    assert solution.certificate.max_residual < CERTIFICATE_TOL
    np.testing.assert_allclose(solution.w, reference.w, rtol=0, atol=W_ATOL)
    assert solution.objective == pytest.approx(reference.objective, rel=OBJECTIVE_RTOL, abs=1e-12)
    assert solution.support_size == reference.support_size


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_program(backend):
    p = np.array([0.5, 2.0, -1.0, 1.5])
    solution = backend().solve(WeightingProblem.create(p, 0.0, budget=3.0))
    np.testing.assert_allclose(solution.w, [0.0, 3.0, 0.0, 0.0], atol=W_ATOL)
    assert solution.status is Status.OPTIMAL


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(2, 7),
    r=st.integers(1, 4),
    lam=st.floats(0.05, 5.0),
    eta=st.floats(0.1, 50.0),
    dense=st.booleans(),
)
def test_qp_matches_brute_force(seed, n, r, lam, eta, dense):
    """Property: OSQP and CVXPY solutions equal the best support found by enumeration."""
    factored = random_factored(seed, n, r, lam, eta)
    problem = factored
    if dense:
        problem = WeightingProblem.create(factored.p, lam, eta=eta, Q=factored.A.T @ factored.H @ factored.A)
    reference = brute_force_weights(problem)
    reference_objective = problem.objective(reference)

    for backend in BACKENDS:
        solution = backend().solve(problem)
        assert solution.status is Status.OPTIMAL, backend.name
        assert solution.certificate.max_residual < CERTIFICATE_TOL, backend.name
        np.testing.assert_allclose(solution.w, reference, rtol=0, atol=W_ATOL, err_msg=backend.name)
        assert solution.objective == pytest.approx(reference_objective, rel=OBJECTIVE_RTOL, abs=1e-10)


@pytest.mark.parametrize("with_h", [True, False])
def test_lifted_matches_dense(with_h):
    factored = random_factored(3, 60, 5, 0.2, 20.0, with_h=with_h)
    Q = factored.A.T @ (factored.H if with_h else np.eye(5)) @ factored.A
    dense = WeightingProblem.create(factored.p, 0.2, eta=20.0, Q=Q)

    lifted_solution = OSQPBackend().solve(factored)
    dense_solution = OSQPBackend().solve(dense)

    np.testing.assert_allclose(lifted_solution.w, dense_solution.w, rtol=0, atol=W_ATOL)
    assert lifted_solution.objective == pytest.approx(dense_solution.objective, rel=OBJECTIVE_RTOL)
    assert lifted_solution.certificate.max_residual < CERTIFICATE_TOL


def test_lifted_form_is_sparse():
    n, r = 500, 4
    P, C, lower, upper = qp_matrices(random_factored(0, n, r, 0.5, 1.0))
    # x = (w, y): P has lam on n diagonal entries plus the r x r upper triangle of H.
    assert P.shape == (n + r, n + r)
    assert P.nnz == n + r * (r + 1) // 2
    # C rows: the sum row (n), the identity (n), and [A, -I] (r n + r).
    assert C.shape == (1 + n + r, n + r)
    assert C.nnz == n + n + r * n + r
    assert lower[0] == upper[0] == n


def test_sum_row_unscaled():
    _, C, lower, _ = qp_matrices(WeightingProblem.create(np.arange(4.0), 1.0, budget=7.0))
    np.testing.assert_array_equal(C[0].toarray(), np.ones((1, 4)))
    assert lower[0] == 7.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_indefinite_h_rejected(backend):
    rng = np.random.default_rng(1)
    n = 5
    A = rng.normal(size=(n, n))
    H = np.diag([1.0, 1.0, 1.0, 1.0, -0.01])
    problem = WeightingProblem.create(rng.normal(size=n), 10.0, eta=1.0, A=A, H=H)
    with pytest.raises(InvalidInputError, match="H"):
        backend().solve(problem)


def test_status_tables_fall_back_to_error():
    assert map_osqp_status(1) is Status.OPTIMAL
    assert map_osqp_status(7) is Status.ITERATION_LIMIT
    assert map_osqp_status(3) is Status.INFEASIBLE
    assert map_osqp_status(12345) is Status.SOLVER_ERROR
    assert map_cvxpy_status("optimal_inaccurate") is Status.INACCURATE
    assert map_cvxpy_status("user_limit") is Status.ITERATION_LIMIT
    assert map_cvxpy_status("something new") is Status.SOLVER_ERROR


def test_osqp_iteration_limit():
    problem = random_factored(2, 40, 3, 0.1, 30.0)
    solution = OSQPBackend().solve(problem, max_iter=1, polish=False)
    assert solution.status is Status.ITERATION_LIMIT
    assert solution.extras["osqp_status"] == "maximum iterations reached"


def test_osqp_warm_start_reduces_iterations():
    problem = random_factored(4, 80, 5, 0.1, 30.0)
    cold = OSQPBackend().solve(problem)
    warm = OSQPBackend().solve(problem, w0=cold.w)
    assert warm.status is Status.OPTIMAL
    assert warm.iterations < cold.iterations


def test_osqp_error_is_chained(monkeypatch):
    def failing_setup(self, *args, **kwargs):
        raise osqp.OSQPException(osqp.SolverError.OSQP_NONCVX_ERROR)

    monkeypatch.setattr(osqp.OSQP, "setup", failing_setup)
    with pytest.raises(SolverError) as caught:
        OSQPBackend().solve(WeightingProblem.create(np.arange(3.0), 1.0))
    assert isinstance(caught.value.__cause__, osqp.OSQPException)


def test_unknown_cvxpy_solver_lists_installed():
    import cvxpy

    with pytest.raises(InvalidInputError) as caught:
        CVXPYBackend().solve(WeightingProblem.create(np.arange(3.0), 1.0), solver="NO_SUCH_SOLVER")
    for name in cvxpy.installed_solvers():
        assert name in str(caught.value)


def test_cvxpy_other_solver_by_name():
    problem = WeightingProblem.create(np.random.default_rng(5).normal(size=20), 0.5)
    solution = CVXPYBackend().solve(problem, solver="scs")
    assert solution.method == "cvxpy:scs"
    # SCS stops at about 1e-4 accuracy; the status must follow the certificate either way.
    assert (solution.status is Status.OPTIMAL) == solution.certificate.passes(1e-8)


def test_unknown_option_rejected():
    problem = WeightingProblem.create(np.arange(3.0), 1.0)
    with pytest.raises(InvalidInputError, match="rho"):
        OSQPBackend().solve(problem, rho=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_columns_match_single_solves(backend):
    rng = np.random.default_rng(6)
    n = 30
    problem = WeightingProblem.create(rng.normal(size=(n, 3)), 0.3, eta=5.0, A=rng.normal(size=(4, n)))
    together = backend().solve_columns(problem)
    assert len(together) == 3
    for j, solution in enumerate(together):
        alone = backend().solve(problem.column(j))
        np.testing.assert_allclose(solution.w, alone.w, rtol=0, atol=W_ATOL)
        assert solution.status is Status.OPTIMAL


def test_clean_weights():
    w, info = clean_weights(np.array([1.0, 1e-12, -1e-15, 0.5]), 1e-10)
    np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 0.5])
    assert info["zeroed"] == 2
    assert info["zeroed_mass"] == pytest.approx(1e-12)


def test_refine_recovers_exact_solution():
    problem = random_factored(7, 6, 3, 0.4, 10.0)
    exact = brute_force_weights(problem)
    noisy = exact + 1e-7 * (exact > 0)
    refined = refine_on_support(problem, noisy)
    np.testing.assert_allclose(refined, exact, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_osqp_large_pool_feasible():
    # 1^T w = b must hold to rounding at large n: OSQP's tolerance is relative to |A x| ~ n.
    n = 200_000
    p = np.random.default_rng(8).normal(size=n)
    solution = OSQPBackend().solve(WeightingProblem.create(p, 1e-3))
    reference = solve_first_order(p, 1e-3)
    assert solution.certificate.primal_feasibility < 1e-12
    np.testing.assert_allclose(solution.w, reference.w, rtol=0, atol=W_ATOL)
