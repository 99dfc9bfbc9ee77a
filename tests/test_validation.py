"""Every public entry point rejects bad input with InvalidInputError naming the argument."""

import numpy as np
import pytest

from idopt import (
    InvalidInputError,
    first_order_objective,
    kkt_certificate,
    lam_interval_for_support,
    project_simplex,
    select,
    solve_exact_k,
    solve_first_order,
    top_k_indices,
)

GOOD = np.array([0.5, -1.0, 2.0])

# (call, argument name expected in the message, a phrase expected in the message)
CASES = [
    (lambda: solve_first_order(np.array([1, 2, 3]), 1.0), "p", "int64"),
    (lambda: solve_first_order(np.array([True, False]), 1.0), "p", "boolean"),
    (lambda: solve_first_order(np.array([1.0, "a"], dtype=object), 1.0), "p", "object"),
    (lambda: solve_first_order(np.array([1 + 2j, 0j]), 1.0), "p", "complex"),
    (lambda: solve_first_order(np.array([0.0, np.nan, np.inf, 1.0]), 1.0), "p", "2 NaN or infinite"),
    (lambda: solve_first_order(np.array([0.0, np.nan]), 1.0), "p", "index 1"),
    (lambda: solve_first_order(np.ones((2, 2)), 1.0), "p", "shape (2, 2)"),
    (lambda: solve_first_order(np.array([]), 1.0), "p", "at least one sample"),
    (lambda: solve_first_order(GOOD, -0.5), "lam", "-0.5"),
    (lambda: solve_first_order(GOOD, float("nan")), "lam", "finite"),
    (lambda: solve_first_order(GOOD, float("inf")), "lam", "finite"),
    (lambda: solve_first_order(GOOD, "1"), "lam", "str"),
    (lambda: solve_first_order(GOOD, 1.0, budget=0.0), "budget", "> 0"),
    (lambda: solve_first_order(GOOD, 1.0, budget=-2.0), "budget", "-2.0"),
    (lambda: solve_first_order(GOOD, 1.0, budget=float("nan")), "budget", "finite"),
    (lambda: solve_first_order(GOOD, 1.0, method="newton"), "method", "'newton'"),
    (lambda: solve_exact_k(GOOD, 0), "k", "[1, 3]"),
    (lambda: solve_exact_k(GOOD, 4), "k", "got 4"),
    (lambda: solve_exact_k(GOOD, 1.5), "k", "float"),
    (lambda: solve_exact_k(GOOD, True), "k", "bool"),
    (lambda: lam_interval_for_support(GOOD, 5), "k", "got 5"),
    (lambda: lam_interval_for_support(GOOD, 1, budget=0), "budget", "> 0"),
    (lambda: project_simplex(GOOD, 0.0), "budget", "> 0"),
    (lambda: project_simplex(GOOD, 1.0, method="bisect"), "method", "'bisect'"),
    (lambda: project_simplex(np.array([1, 2]), 1.0), "v", "int64"),
    (lambda: top_k_indices(GOOD, 0), "k", "[1, 3]"),
    (lambda: top_k_indices(np.array([1.0, np.inf]), 1), "scores", "index 1"),
    (lambda: select(GOOD, 2, aggregate="max"), "aggregate", "'max'"),
    (lambda: select(np.ones((2, 2, 2)), 1), "p", "shape (2, 2, 2)"),
    (lambda: select(np.ones((0, 3)), 1), "p", "at least one sample"),
    (lambda: select(np.ones((3, 2)), 4), "k", "got 4"),
    (lambda: first_order_objective(np.ones(2), np.ones(3), 1.0), "p", "shape (2,)"),
    (lambda: first_order_objective(np.ones(3), GOOD, -1.0), "lam", "-1.0"),
    (lambda: kkt_certificate(np.ones(3), np.ones(2)), "grad", "shape (3,)"),
    (lambda: kkt_certificate(np.ones(3), np.ones(3), budget=-1.0), "budget", "-1.0"),
    (lambda: kkt_certificate(np.ones(3), np.ones(3), grad_scale=-1.0), "grad_scale", "-1.0"),
    (lambda: kkt_certificate(np.ones(3), np.ones(3), support_tol=1.0), "support_tol", "1.0"),
]


@pytest.mark.parametrize("call, argument, phrase", CASES)
def test_bad_input_rejected(call, argument, phrase):
    with pytest.raises(InvalidInputError) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(argument + " "), message
    assert phrase in message, message


def test_invalid_input_is_value_error():
    with pytest.raises(ValueError):
        solve_first_order(GOOD, -1.0)


def test_float32_accepted():
    solution = solve_first_order(GOOD.astype(np.float32), 1.0)
    assert solution.w.dtype == np.float64


def test_numpy_integer_k_accepted():
    solution = solve_exact_k(GOOD, np.int64(2))
    assert solution.support_size == 2


def test_overflowing_sum_is_finite():
    # The fast check sums the array; a sum that overflows must not be reported as NaN/inf.
    p = np.array([1e308, 1e308, -1.0])
    assert top_k_indices(p, 1).tolist() == [0]
