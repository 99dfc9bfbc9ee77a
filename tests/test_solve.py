"""Tests of idopt.solve: dispatch, agreement of the methods, fallback and failure policy."""

import logging
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.backends.cvxpy_backend import CVXPYBackend
from idopt.backends.osqp_backend import OSQPBackend
from idopt.errors import InaccurateSolutionWarning, InvalidInputError, SolverError
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.solve import METHODS, ActiveSetBackend, available_methods, solve
from idopt.status import Status
from tests.reference_qp import brute_force_weights

QP_METHODS = [name for name in ("active_set", "osqp", "cvxpy") if METHODS[name].available()]
needs_active_set = pytest.mark.skipif(not ActiveSetBackend.available(), reason="idopt.active_set is not present")

# Required agreement between methods. Every method ends with an exact solve on its support,
# so the observed differences are rounding errors of about 1e-12.
W_ATOL = 1e-6
OBJECTIVE_RTOL = 1e-8


def factored_problem(seed=0, n=30, r=4, lam=0.3, eta=10.0, m=None):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n if m is None else (n, m))
    root = rng.normal(size=(r, r))
    return WeightingProblem.create(p, lam, eta=eta, A=rng.normal(size=(r, n)), H=root @ root.T)


def failed_copy(solution, status, reason="forced by the test"):
    return replace(solution, status=status, extras={**solution.extras, "reason": reason})


def off_optimum(problem, status, mix=0.0):
    """Return a result with weights (1 - mix) * (b/n) + mix * optimum, which fail the certificate for mix < 1."""
    exact = OSQPBackend().solve(problem)
    uniform = np.full(problem.n, problem.budget / problem.n)
    return failed_copy(replace(exact, w=(1.0 - mix) * uniform + mix * exact.w), status)


def test_auto_without_q_uses_closed_form():
    p = np.random.default_rng(0).normal(size=25)
    solution = solve(WeightingProblem.create(p, 0.7))
    reference = solve_first_order(p, 0.7)
    assert solution.method.startswith("projection:")
    np.testing.assert_array_equal(solution.w, reference.w)
    assert solution.status is Status.OPTIMAL


def test_auto_linear_program():
    solution = solve(WeightingProblem.create(np.array([1.0, 3.0, 3.0, 2.0]), 0.0))
    assert solution.method == "lp:argmax"
    np.testing.assert_array_equal(solution.w, [0.0, 2.0, 2.0, 0.0])


def test_eta_zero_ignores_q():
    rng = np.random.default_rng(1)
    root = rng.normal(size=(6, 6))
    problem = WeightingProblem.create(rng.normal(size=6), 0.5, eta=0.0, Q=root @ root.T)
    assert solve(problem).method.startswith("projection:")


@pytest.mark.parametrize("method", ["closed_form", *QP_METHODS])
@pytest.mark.parametrize("seed", range(4))
def test_methods_match_closed_form(method, seed):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=int(rng.integers(2, 60)))
    lam = float(10 ** rng.uniform(-2, 1))
    reference = solve_first_order(p, lam)
    solution = solve(WeightingProblem.create(p, lam), method)
    np.testing.assert_allclose(solution.w, reference.w, rtol=0, atol=W_ATOL)
    assert solution.objective == pytest.approx(reference.objective, rel=OBJECTIVE_RTOL, abs=1e-12)
    assert solution.certificate.max_residual < 1e-8


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 7), lam=st.floats(0.05, 5.0), dense=st.booleans())
def test_methods_match_brute_force(seed, n, lam, dense):
    """Property: every QP method and "auto" return the enumeration optimum, certified below 1e-8."""
    problem = factored_problem(seed, n=n, r=3, lam=lam)
    if dense:
        problem = WeightingProblem.create(problem.p, lam, eta=problem.eta, Q=problem.dense_hessian() - lam * np.eye(n))
        problem = replace(problem, Q=problem.Q / problem.curvature)
    reference = brute_force_weights(problem)
    for method in ["auto", *QP_METHODS]:
        solution = solve(problem, method)
        np.testing.assert_allclose(solution.w, reference, rtol=0, atol=W_ATOL, err_msg=method)
        assert solution.objective == pytest.approx(problem.objective(reference), rel=OBJECTIVE_RTOL, abs=1e-10)
        assert solution.certificate.max_residual < 1e-8, method


def test_multi_target_shapes():
    problem = factored_problem(m=3)
    solutions = solve(problem, "osqp")
    assert isinstance(solutions, tuple)
    assert len(solutions) == 3
    single = solve(problem, "osqp", target=2)
    np.testing.assert_allclose(single.w, solutions[2].w, rtol=0, atol=W_ATOL)
    one_column = WeightingProblem.create(problem.p[:, :1], 0.3)
    assert len(solve(one_column)) == 1


def test_certificate_recomputed(monkeypatch):
    problem = factored_problem()
    honest = OSQPBackend().solve(problem)
    wrong = np.full(problem.n, problem.budget / problem.n)

    def lying_solve(self, column, **options):
        return replace(honest, w=wrong)

    monkeypatch.setattr(OSQPBackend, "solve", lying_solve)
    with pytest.warns(InaccurateSolutionWarning):
        solution = solve(problem, "osqp")
    assert solution.status is Status.INACCURATE
    assert solution.certificate.max_residual > 1e-3
    assert solution.objective == pytest.approx(problem.objective(wrong))


@pytest.mark.parametrize("status", [Status.INACCURATE, Status.ITERATION_LIMIT, Status.TIME_LIMIT])
def test_policy_warns_when_inaccurate(monkeypatch, status):
    problem = factored_problem()
    rough = OSQPBackend().solve(problem, max_iter=1, polish=False)
    monkeypatch.setattr(OSQPBackend, "solve", lambda self, column, **options: failed_copy(rough, status))
    with pytest.warns(InaccurateSolutionWarning, match=status.value):
        solution = solve(problem, "osqp")
    assert solution.status is status


def test_policy_raises_on_solver_error(monkeypatch):
    problem = factored_problem()
    broken = failed_copy(OSQPBackend().solve(problem), Status.SOLVER_ERROR, reason="factorization failed")
    monkeypatch.setattr(OSQPBackend, "solve", lambda self, column, **options: broken)
    with pytest.raises(SolverError, match="factorization failed"):
        solve(problem, "osqp")


def test_backend_exception_propagates(monkeypatch):
    def raising_solve(self, column, **options):
        raise SolverError("backend crashed") from RuntimeError("inner")

    monkeypatch.setattr(CVXPYBackend, "solve", raising_solve)
    with pytest.raises(SolverError, match="backend crashed") as caught:
        solve(factored_problem(), "cvxpy")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_policy_returns_infeasible(monkeypatch):
    problem = factored_problem()
    infeasible = failed_copy(OSQPBackend().solve(problem), Status.INFEASIBLE)
    monkeypatch.setattr(OSQPBackend, "solve", lambda self, column, **options: infeasible)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solution = solve(problem, "osqp")
    assert solution.status is Status.INFEASIBLE


def test_auto_falls_back_to_osqp(monkeypatch, caplog):
    problem = factored_problem()
    stuck = replace(off_optimum(problem, Status.ITERATION_LIMIT), extras={"reason": "free set cycled"})
    monkeypatch.setattr(ActiveSetBackend, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(ActiveSetBackend, "solve", lambda self, column, **options: stuck)
    with caplog.at_level(logging.INFO, logger="idopt.solve"):
        solution = solve(problem)
    assert solution.method.startswith("osqp")
    assert solution.status is Status.OPTIMAL
    assert solution.extras["fallback_from"] == ("active_set",)
    assert "free set cycled" in solution.extras["fallback_reasons"]["active_set"]
    assert any("active_set did not solve" in record.getMessage() for record in caplog.records)


def test_auto_falls_back_to_cvxpy(monkeypatch):
    problem = factored_problem()
    stuck = off_optimum(problem, Status.ITERATION_LIMIT)
    monkeypatch.setattr(ActiveSetBackend, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(ActiveSetBackend, "solve", lambda self, column, **options: stuck)

    def raising_solve(self, column, **options):
        raise SolverError("osqp crashed")

    monkeypatch.setattr(OSQPBackend, "solve", raising_solve)
    solution = solve(problem)
    assert solution.method.startswith("cvxpy")
    assert solution.extras["fallback_from"] == ("active_set", "osqp")


def test_auto_all_fail_returns_best(monkeypatch):
    problem = factored_problem()
    # Weights closer to the optimum have the smaller KKT residual, so mix=0.9 must win.
    results = {
        ActiveSetBackend: off_optimum(problem, Status.ITERATION_LIMIT, mix=0.0),
        OSQPBackend: off_optimum(problem, Status.ITERATION_LIMIT, mix=0.9),
        CVXPYBackend: off_optimum(problem, Status.INACCURATE, mix=0.5),
    }
    monkeypatch.setattr(ActiveSetBackend, "available", classmethod(lambda cls: True))
    for backend, result in results.items():
        monkeypatch.setattr(backend, "solve", lambda self, column, result=result, **options: result)
    with pytest.warns(InaccurateSolutionWarning):
        solution = solve(problem)
    np.testing.assert_array_equal(solution.w, results[OSQPBackend].w)
    assert solution.extras["fallback_from"] == ("active_set", "cvxpy")
    assert solution.extras["methods_tried"] == ("active_set", "osqp", "cvxpy")


@needs_active_set
def test_auto_prefers_active_set():
    solution = solve(factored_problem())
    assert solution.method.startswith("active_set")
    assert "fallback_from" not in solution.extras


def test_closed_form_rejects_q():
    with pytest.raises(InvalidInputError, match="closed_form"):
        solve(factored_problem(), "closed_form")


def test_bad_method_and_options():
    problem = factored_problem()
    with pytest.raises(InvalidInputError, match="method"):
        solve(problem, "newton")
    with pytest.raises(InvalidInputError, match="solver"):
        solve(problem, "osqp", solver="SCS")
    with pytest.raises(InvalidInputError, match="bogus"):
        solve(problem, bogus=1)
    with pytest.raises(InvalidInputError, match="target"):
        solve(problem, target=3)


def test_missing_backend_names_extra(monkeypatch):
    monkeypatch.setattr(CVXPYBackend, "requires", ("idopt_test_no_such_module",))
    assert "cvxpy" not in available_methods()
    with pytest.raises(ImportError, match=r"idopt\[qp\]"):
        solve(factored_problem(), "cvxpy")


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import idopt.solve, idopt.lam_search, idopt.backends.base"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
