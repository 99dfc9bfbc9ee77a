"""Slow but obviously right reference solver for small weighting problems (tests only)."""

import itertools

import numpy as np


def brute_force_weights(problem):
    """Solve a single-target problem with n <= 10 by trying every support.

    For each non-empty support S the equality-constrained problem on S has the solution
    of the linear system [H_SS 1; 1^T 0] [w_S; -nu] = [p_S; b]. The optimum is the
    feasible candidate (w_S >= 0) with the lowest objective, because the true optimum
    is the stationary point on its own support and every candidate is feasible.
    """
    n = problem.n
    hessian = problem.dense_hessian()
    best, best_value = None, np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            index = np.array(support)
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = hessian[np.ix_(index, index)]
            system[:size, size] = 1.0
            system[size, :size] = 1.0
            rhs = np.concatenate([problem.p[index], [problem.budget]])
            try:
                solution = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                continue
            if np.any(solution[:size] < -1e-12):
                continue
            w = np.zeros(n)
            w[index] = np.maximum(solution[:size], 0.0)
            value = problem.objective(w)
            if best is None or value < best_value - 1e-13 * max(1.0, abs(best_value)):
                best, best_value = w, value
    return best
