"""Time the primal-dual active-set solver against CVXPY with Clarabel and OSQP.

Instances come from random gradients: G (d x n) with unit-scale columns, p = G^T g for a
random target gradient g, H = B B^T / d (PSD) and Q = G^T H G, so Q has rank
r = min(d, n). The dense cases pass Q as an n x n matrix; the factored cases pass A = G
and H. eta = 10 and lam = 0.1 (with c = b = n) make the quadratic term move the weights
by about 10 times the first-order weights' scale (see the "max |w - w_first|" column).

Both reference solvers get the same problem written with the factor F = L^T G, H = L L^T:
minimize -p^T w + (eta/2c) ||F w||^2 + (lam/2)||w||^2, so their cost grows with n r and
not n^2. They run only where n r <= --max-reference-size.

Columns: median wall time of each solver, the active-set variant that refactors M_FF at
every step (dense only, timed in alternation with the default), the relative objective gap (F_ref - F_as) / |F_as| (positive:
the active set is lower), and the max constraint violation
max(|1^T w - b| / b, max(-w_i, 0)) of each solver's w.

Run: ``.venv/bin/python benchmarks/bench_active_set.py`` from the repository root (about
2 minutes on a shared 2-core CPU machine, over 3 under heavy load). The numbers depend on the machine and its
load; they are measurements, not bounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cvxpy as cp
import numpy as np
from scipy import linalg

from idopt.active_set import solve_active_set
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from timing import median_seconds

DENSE_CASES = [(200, 64), (200, 200), (2000, 64), (2000, 2000), (5000, 64), (5000, 5000)]
FACTORED_CASES = [(2000, 64), (20000, 64), (100000, 64)]


def build_instance(n: int, d: int, dense: bool, eta: float, lam: float, seed: int):
    """Return (problem, factor F with Q = F^T F) for one random instance."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((d, n)) / np.sqrt(d)
    p = G.T @ rng.standard_normal(d)
    B = rng.standard_normal((d, d))
    H = B @ B.T / d
    factor = linalg.cholesky(H + 1e-12 * np.trace(H) / d * np.eye(d), lower=True).T @ G
    if dense:
        Q = factor.T @ factor
        Q = 0.5 * (Q + Q.T)
        return WeightingProblem.create(p, lam, eta=eta, Q=Q), factor
    return WeightingProblem.create(p, lam, eta=eta, A=G, H=H), factor


def solve_reference(problem: WeightingProblem, factor: np.ndarray, solver: str) -> np.ndarray:
    """Solve the problem with CVXPY and ``solver`` at tight tolerances; return w."""
    w = cp.Variable(problem.n)
    objective = (
        -problem.p @ w
        + 0.5 * problem.curvature * cp.sum_squares(factor @ w)
        + 0.5 * problem.lam * cp.sum_squares(w)
    )
    constraints = [w >= 0, cp.sum(w) == problem.budget]
    if solver == "CLARABEL":
        options = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    else:
        options = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iter": 200000, "polish": True}
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=solver, **options)
    return np.asarray(w.value, dtype=np.float64)


def interleaved_medians(functions, repeats: int) -> list[float]:
    """Time the functions in turn, ``repeats`` rounds after one untimed round; return medians.

    Alternating the calls exposes each variant to the same load on a shared machine, so
    their ratio is steadier than that of back-to-back medians.
    """
    for function in functions:
        function()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for slot, function in zip(times, functions):
            started = time.perf_counter()
            function()
            slot.append(time.perf_counter() - started)
    return [statistics.median(slot) for slot in times]


def violation(w: np.ndarray, budget: float) -> float:
    return max(abs(float(np.sum(w)) - budget) / budget, float(max(0.0, -np.min(w))))


def bench_case(kind, n, d, args) -> str:
    dense = kind == "dense"
    problem, factor = build_instance(n, d, dense, args.eta, args.lam, seed=n + d)
    solution = solve_active_set(problem)
    refactor_s = "-"
    if dense:
        active_s, refactor_time = interleaved_medians(
            [lambda: solve_active_set(problem), lambda: solve_active_set(problem, dense_update="refactor")],
            args.repeats,
        )
        refactor_s = f"{refactor_time:.3f}"
    else:
        active_s = median_seconds(lambda: solve_active_set(problem), args.repeats)
    first = solve_first_order(problem.p, problem.lam)
    moved = float(np.max(np.abs(solution.w - first.w)))
    cells = [
        kind, str(n), str(min(n, d)), solution.status.value, str(solution.iterations),
        str(solution.support_size), f"{moved:.3g}", f"{solution.certificate.max_residual:.1e}",
        f"{active_s:.3f}", refactor_s, f"{violation(solution.w, problem.budget):.1e}",
    ]
    for solver in ("CLARABEL", "OSQP"):
        if n * min(n, d) > args.max_reference_size:
            cells += ["skipped", "-", "-"]
            continue
        started = time.perf_counter()
        w = solve_reference(problem, factor, solver)
        elapsed = time.perf_counter() - started
        reference = problem.objective(w)
        gap = (reference - solution.objective) / abs(solution.objective)
        cells += [f"{elapsed:.2f}", f"{gap:.1e}", f"{violation(w, problem.budget):.1e}"]
    return "| " + " | ".join(cells) + " |"


def bench_dense_updates(args) -> list[str]:
    """Compare bordering the base factor ("auto") with refactoring at every step, large supports."""
    lines = [
        f"### dense Q, Cholesky reuse vs refactoring, eta = {args.eta}, lam = 1, interleaved "
        f"medians of {args.update_repeats}",
        "",
        "| n | r | support | solves | refactorizations (auto) | auto (s) | refactor (s) | refactor / auto |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (2000, 3000):
        problem, _ = build_instance(n, n, True, args.eta, 1.0, seed=7 * n)
        solution = solve_active_set(problem)
        auto_s, refactor_s = interleaved_medians(
            [lambda: solve_active_set(problem), lambda: solve_active_set(problem, dense_update="refactor")],
            args.update_repeats,
        )
        lines.append(
            f"| {n} | {n} | {solution.support_size} | {solution.iterations} | "
            f"{solution.extras['refactorizations']} | {auto_s:.3f} | {refactor_s:.3f} | {refactor_s / auto_s:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the active set per case")
    parser.add_argument("--update-repeats", type=int, default=3, help="timed rounds of the Cholesky reuse table")
    parser.add_argument("--eta", type=float, default=10.0, help="learning rate eta (c = n)")
    parser.add_argument("--lam", type=float, default=0.1, help="l2 weight lam")
    parser.add_argument(
        "--max-reference-size", type=int, default=2_000_000,
        help="run CVXPY only where n * r is at most this (its time grows with n r)",
    )
    args = parser.parse_args()

    print(f"### active set vs CVXPY, eta = {args.eta}, lam = {args.lam}, b = c = n, "
          f"median of {args.repeats} (references: one run)\n")
    print("| Q | n | r | status | solves | support | max \\|w - w_first\\| | KKT residual | "
          "active set (s) | refactor (s) | violation | Clarabel (s) | gap | violation | "
          "OSQP (s) | gap | violation |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, d in DENSE_CASES:
        print(bench_case("dense", n, d, args), flush=True)
    for n, d in FACTORED_CASES:
        print(bench_case("factored", n, d, args), flush=True)
    print()
    print("\n".join(bench_dense_updates(args)))


if __name__ == "__main__":
    main()
