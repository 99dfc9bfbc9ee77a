"""Time the package's solvers against general QP solvers, first and second order.

Every table row is one method on one instance, all timed in one run of this script.
Columns:

- runs, median s: a method whose first call takes under --fast-seconds is timed again
  --repeats times, and its first call is an untimed warm-up. A slower method is timed
  once, and that first call is the reported time. The package's methods run in this
  process, their repeats interleaved in a new random order each round, so that all of
  them see the same load. Every
  general solver (OSQP, CVXPY) runs in its own forked child process per instance, with
  its repeats back to back. NOTE: the children exist because Clarabel 0.11.1 hung in a
  forked child once the parent process had run it, so the parent never runs OSQP or
  CVXPY, and a child can be stopped at the cap.
- ratio: median time over the median time of the package's method (first order:
  solve_first_order with method "auto"; second order: the active set).
- gap: (F(w) - F_ref) / |F_ref|. First order: F_ref is the objective of the closed form
  with method "auto". Second order: F_ref is the lowest objective among the methods run
  on that instance.
- KKT: the largest relative KKT residual of w, recomputed by idopt.backends.base.certify.
- min w and |1^T w - b| / b: the constraint violations of w.

Instances come from random gradients. G (d, n) has i.i.d. N(0, 1/d) entries, so each
column (one sample's gradient) has norm about 1, and p = G^T g for a target gradient
g ~ N(0, I_d). The budget and the pool size are b = c = n.

- lam: the mean of max(p - q, 0) with q the 90% quantile of p, which makes the
  first-order solution keep about 10% of the samples (--support-fraction).
- Second order: H = B B^T / d with B (d, d) standard normal, Q = G^T H G of rank r = d.
  eta is set so that (eta/c) * lambda_max(Q) = --curvature-ratio * lam (default 10),
  so along the top eigenvector of Q the quadratic term is 10 times the l2 term. The
  "moved" column, max |w - w_first| / max w_first with w_first the solution without Q,
  shows how far the quadratic term moves the weights.
- Dense Q (section 2): all three methods get the n x n matrix through
  idopt.solve.solve, so OSQP gets the dense Hessian and CVXPY its Cholesky factor.
- Factored Q (section 3): A = G and H are passed, OSQP gets the lifted form with
  y = A w, CVXPY gets ||L^T A w||^2 with H = L L^T.

A child whose first call runs past --reference-cap seconds (default 60, quick 20) is
stopped. A method stopped this way, or whose call raised, is skipped at every larger n. A method is also skipped without
a try when its last run of at least 1 s, scaled by (n / n_last)^k, predicts more than 3
times the cap (k = 1 for first order and factored Q, 3 for dense Q). The cells of a
stopped or skipped run name the rule that applied.

BLAS runs on one thread: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS are
set to 1 before numpy is imported, unless they are already set in the environment.

Run from the repository root: ``.venv/bin/python benchmarks/bench_solvers.py`` (full,
under 10 minutes on a 2-core machine) or with ``--quick`` (about 2 minutes: fewer
sizes and repeats). The numbers depend on the machine and its load.
"""

from __future__ import annotations

import os

# Must run before numpy loads its BLAS library, which reads these once.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import multiprocessing
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy
from scipy.sparse.linalg import LinearOperator, eigsh

from idopt.backends.base import certify
from idopt.errors import InaccurateSolutionWarning, SolverError
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.simplex import project_simplex
from idopt.solve import solve

# Columns of G generated at a time, so that n = 10^7 never needs the whole (d, n) matrix.
CHUNK_COLUMNS = 1 << 20

# Gradient dimension of the first-order instances (p = G^T g).
FIRST_ORDER_DIM = 16


@dataclass
class Row:
    """One measured method on one instance."""

    method: str
    runs: int = 0
    median_s: float = float("nan")
    objective: float = float("nan")
    kkt: float = float("nan")
    min_w: float = float("nan")
    sum_error: float = float("nan")
    skipped: str = ""


@dataclass
class Candidate:
    """A method to time: a name and a call that returns its weights."""

    name: str
    call: Callable[[], np.ndarray]
    growth: float = 1.0  # exponent k of the skip rule; 0 means never skipped


def first_order_scores(n: int, seed: int) -> np.ndarray:
    """Return p = G^T g for G (16, n) with N(0, 1/16) entries, built in column chunks."""
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(FIRST_ORDER_DIM)
    p = np.empty(n)
    for start in range(0, n, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, n)
        block = rng.standard_normal((FIRST_ORDER_DIM, stop - start)) / np.sqrt(FIRST_ORDER_DIM)
        p[start:stop] = block.T @ target
    return p


def lam_for_support(p: np.ndarray, fraction: float) -> float:
    """Return lam that gives a first-order support of about ``fraction`` * n (b = n).

    With b = n the first-order weights are max(p - tau, 0) / lam and sum to n, so
    lam = mean(max(p - tau, 0)). Taking tau as the (1 - fraction) quantile of p keeps the
    samples above it.
    """
    threshold = float(np.quantile(p, 1.0 - fraction))
    return float(np.mean(np.maximum(p - threshold, 0.0)))


def largest_eigenvalue(problem: WeightingProblem) -> float:
    """Return lambda_max(Q) by Lanczos (scipy eigsh) on the product Q v, Q never formed."""
    operator = LinearOperator((problem.n, problem.n), matvec=problem.quad_matvec, dtype=np.float64)
    value = eigsh(operator, k=1, which="LA", return_eigenvectors=False, tol=1e-6)
    return float(value[0])


def second_order_instance(n: int, r: int, dense: bool, args, seed: int) -> WeightingProblem:
    """Build the random-gradient instance of the module docstring, eta scaled to lambda_max(Q)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((r, n)) / np.sqrt(r)
    p = G.T @ rng.standard_normal(r)
    B = rng.standard_normal((r, r))
    H = B @ B.T / r
    lam = lam_for_support(p, args.support_fraction)
    # eta = 1 first, to measure lambda_max(Q) with the problem's own products.
    if dense:
        Q = G.T @ (H @ G)
        Q = 0.5 * (Q + Q.T)
        unit = WeightingProblem.create(p, lam, eta=1.0, Q=Q, check_psd=False)
    else:
        unit = WeightingProblem.create(p, lam, eta=1.0, A=G, H=H, check_psd=False)
    eta = args.curvature_ratio * lam * n / largest_eigenvalue(unit)
    if dense:
        return WeightingProblem.create(p, lam, eta=eta, Q=unit.Q)
    return WeightingProblem.create(p, lam, eta=eta, A=G, H=H)


def evaluate(problem: WeightingProblem, w: np.ndarray, row: Row) -> None:
    objective, certificate = certify(problem, w)
    row.objective = objective
    row.kkt = certificate.max_residual
    row.min_w = float(np.min(w))
    row.sum_error = abs(float(np.sum(w)) - problem.budget) / problem.budget


def timed_call(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    w = call()
    return time.perf_counter() - started, w


def timed_calls_in_child(call: Callable[[], np.ndarray], args) -> tuple[float, np.ndarray, list[float]] | str:
    """Time ``call`` in a forked child process.

    Returns (first call's seconds, its weights, the times of the repeats), or a string
    that says why there is no result: the first call ran past the cap, or it raised. A
    first call under args.fast_seconds is followed by args.repeats timed calls in the
    same child. The child inherits the problem through fork (Linux and macOS only) and
    sends back the results through a pipe. A child still running at the cap is killed.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            first_s, w = timed_call(call)
        except (MemoryError, SolverError) as error:  # reported in the table, the benchmark goes on
            sender.send(f"failed: {type(error).__name__}: {str(error)[:100]}")
            sender.close()
            return
        sender.send((first_s, w))
        repeats = args.repeats if first_s < args.fast_seconds else 0
        sender.send([timed_call(call)[0] for _ in range(repeats)])
        sender.close()

    process = context.Process(target=child)
    process.start()
    sender.close()
    try:
        if not receiver.poll(args.reference_cap):
            process.kill()
            return f"stopped: ran past {args.reference_cap:.0f} s"
        first = receiver.recv()
        if isinstance(first, str):
            return first
        first_s, w = first
        # The repeats are fast calls, but cap the wait in case the child stalls.
        if not receiver.poll(args.reference_cap):
            process.kill()
            return first_s, w, []
        return first_s, w, receiver.recv()
    except EOFError:
        raise RuntimeError(f"the timed child process exited with code {process.exitcode} without a result") from None
    finally:
        process.join()
        receiver.close()


class SkipRule:
    """Rule that decides which general-solver runs to attempt, from the runs at smaller n.

    A method that ran past the cap or failed at some n is skipped at every larger n. A method whose
    last run took at least MIN_PREDICTION_S seconds is skipped when that time, scaled by
    (n / n_last)^k, exceeds PREDICTION_FACTOR times the cap. Faster runs are dominated by
    fixed costs and predict nothing.
    """

    MIN_PREDICTION_S = 1.0
    PREDICTION_FACTOR = 3.0

    def __init__(self, cap_s: float):
        self.cap_s = cap_s
        self.last: dict[str, tuple[int, float]] = {}
        self.stopped: dict[str, tuple[int, str]] = {}

    def reason(self, key: str, n: int, growth: float) -> str:
        if key in self.stopped:
            previous_n, reason = self.stopped[key]
            return f"skipped after n = {previous_n}: {reason}"
        if key not in self.last:
            return ""
        previous_n, previous_s = self.last[key]
        predicted = previous_s * (n / previous_n) ** growth
        if predicted <= self.PREDICTION_FACTOR * self.cap_s:
            return ""
        return f"skipped: {previous_s:.1f} s at n = {previous_n} predicts {predicted:.0f} s"

    def record(self, key: str, n: int, seconds: float | None, reason: str = "") -> None:
        if seconds is None:
            self.stopped[key] = (n, reason)
        elif seconds >= self.MIN_PREDICTION_S:
            self.last[key] = (n, seconds)


def measure(problem, candidates: list[Candidate], args, skips: SkipRule, section: str) -> list[Row]:
    """Time every candidate on ``problem``; see the module docstring for the protocol."""
    rows = []
    fast = []
    for candidate in candidates:
        row = Row(candidate.name)
        rows.append(row)
        if candidate.growth:
            measure_in_child(problem, candidate, row, args, skips, f"{section}:{candidate.name}")
            continue
        first_s, w = timed_call(candidate.call)
        evaluate(problem, w, row)
        if first_s < args.fast_seconds:
            fast.append((row, candidate, []))
        else:
            row.runs = 1
            row.median_s = first_s
    # A new random order in each round varies which method runs after which. With a
    # rotated fixed order, closed form (auto) always ran right after the sort projection,
    # and its median at n = 10^7 was 0.51 s against 0.33 s for condat, which it calls.
    # The random order gave 0.36 s.
    order_rng = random.Random(0)
    for _ in range(args.repeats):
        for _, candidate, times in order_rng.sample(fast, len(fast)):
            times.append(timed_call(candidate.call)[0])
    for row, _, times in fast:
        row.runs = len(times)
        row.median_s = statistics.median(times)
    return rows


def measure_in_child(problem, candidate: Candidate, row: Row, args, skips: SkipRule, key: str) -> None:
    """Time a general solver in a child process, or fill in why it was skipped."""
    row.skipped = skips.reason(key, problem.n, candidate.growth)
    if row.skipped:
        return
    outcome = timed_calls_in_child(candidate.call, args)
    if isinstance(outcome, str):
        skips.record(key, problem.n, None, outcome)
        row.skipped = outcome
        return
    skips.record(key, problem.n, outcome[0])
    first_s, w, times = outcome
    evaluate(problem, w, row)
    times = times or [first_s]
    row.runs = len(times)
    row.median_s = statistics.median(times)


def format_time(seconds: float) -> str:
    return f"{seconds:.4f}" if seconds < 1 else f"{seconds:.2f}"


def row_cells(row: Row, base: Row, reference: float) -> list[str]:
    if row.skipped:
        return [row.method, row.skipped, "-", "-", "-", "-", "-", "-"]
    gap = (row.objective - reference) / abs(reference)
    return [
        row.method,
        str(row.runs),
        format_time(row.median_s),
        f"{row.median_s / base.median_s:.1f}",
        f"{gap:.1e}",
        f"{row.kkt:.1e}",
        f"{row.min_w:.1e}",
        f"{row.sum_error:.1e}",
    ]


METRIC_HEADER = "method | runs | median s | ratio | gap | KKT | min w | \\|1^T w - b\\| / b"


def first_order_candidates(problem: WeightingProblem, osqp_max_n: int) -> list[Candidate]:
    p, lam, budget = problem.p, problem.lam, problem.budget
    candidates = [
        Candidate("closed form (auto)", lambda: solve_first_order(p, lam, budget).w, growth=0),
        Candidate("closed form (michelot)", lambda: solve_first_order(p, lam, budget, method="michelot").w, growth=0),
        Candidate("closed form (condat)", lambda: solve_first_order(p, lam, budget, method="condat").w, growth=0),
        Candidate("sort projection", lambda: project_simplex(p / lam, budget, method="sort")[0], growth=0),
    ]
    if problem.n <= osqp_max_n:
        candidates.append(Candidate("OSQP", lambda: solve(problem, method="osqp").w, growth=1.0))
    return candidates


def bench_first_order(args, skips: SkipRule, results: dict) -> list[str]:
    lines = [
        f"### First order, b = c = n, lam for a support of about {args.support_fraction:.0%}",
        "",
        f"| n | support | {METRIC_HEADER} |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n" + "\n".join(lines), flush=True)
    for n in args.first_order_sizes:
        p = first_order_scores(n, seed=n)
        problem = WeightingProblem.create(p, lam_for_support(p, args.support_fraction))
        candidates = first_order_candidates(problem, args.osqp_first_order_max_n)
        rows = measure(problem, candidates, args, skips, "first")
        base = rows[0]
        support = int(np.count_nonzero(solve_first_order(problem.p, problem.lam).w))
        for row in rows:
            lines.append("| " + " | ".join([str(n), str(support), *row_cells(row, base, base.objective)]) + " |")
            print(lines[-1], flush=True)
        results[("first", n)] = rows
    return lines


def second_order_candidates(problem: WeightingProblem, growth: float) -> list[Candidate]:
    return [
        Candidate("active set", lambda: solve(problem, method="active_set").w, growth=0),
        Candidate("OSQP", lambda: solve(problem, method="osqp").w, growth=growth),
        Candidate("CVXPY/Clarabel", lambda: solve(problem, method="cvxpy").w, growth=growth),
    ]


def bench_second_order(args, skips: SkipRule, results: dict, dense: bool) -> list[str]:
    kind = "dense" if dense else "factored"
    cases = args.dense_cases if dense else args.factored_cases
    title = "Dense Q = G^T H G, all methods get the n x n matrix" if dense else (
        "Factored Q = A^T H A, OSQP on the lifted form"
    )
    lines = [
        f"### {title}; b = c = n, (eta/c) lambda_max(Q) = {args.curvature_ratio:g} lam",
        "",
        f"| n | r | support | moved | {METRIC_HEADER} |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n" + "\n".join(lines), flush=True)
    for n, r in cases:
        problem = second_order_instance(n, r, dense, args, seed=n + r)
        rows = measure(problem, second_order_candidates(problem, 3.0 if dense else 1.0), args, skips, kind)
        base = rows[0]
        solved = [row.objective for row in rows if not row.skipped]
        reference = min(solved)
        active = solve(problem, method="active_set").w
        first = solve_first_order(problem.p, problem.lam, problem.budget).w
        moved = float(np.max(np.abs(active - first)) / np.max(first))
        prefix = [str(n), str(r), str(int(np.count_nonzero(active))), f"{moved:.2f}"]
        for row in rows:
            lines.append("| " + " | ".join([*prefix, *row_cells(row, base, reference)]) + " |")
            print(lines[-1], flush=True)
        results[(kind, n, r)] = rows
    return lines


def best_general(rows: list[Row]) -> Row | None:
    ran = [row for row in rows[1:] if not row.skipped]
    return min(ran, key=lambda row: row.median_s) if ran else None


def speedup_goal(label: str, rows: list[Row] | None, factor: float) -> str:
    if rows is None:
        return f"- {label}: not measured in this run"
    base = rows[0]
    best = best_general(rows)
    if best is None:
        reasons = "; ".join(f"{row.method} {row.skipped}" for row in rows[1:])
        return f"- {label}: every general solver skipped ({reasons}); {base.method} {format_time(base.median_s)} s"
    ratio = best.median_s / base.median_s
    verdict = "met" if ratio >= factor else "NOT met"
    return (
        f"- {label}: {verdict}, {ratio:.1f}x (goal {factor:g}x): {base.method} "
        f"{format_time(base.median_s)} s, best general solver {best.method} {format_time(best.median_s)} s"
    )


def first_order_goals(results: dict) -> list[str]:
    lines = []
    rows = results.get(("first", 10**6))
    if rows is None:
        lines.append("- n = 10^6 first order: not measured in this run")
    else:
        by_name = {row.method: row for row in rows}
        base = by_name["closed form (auto)"]
        sort = by_name["sort projection"]
        ratio = sort.median_s / base.median_s
        lines.append(f"- n = 10^6, closed form >= 5x faster than the sort projection: "
                     f"{'met' if ratio >= 5 else 'NOT met'}, {ratio:.1f}x")
        osqp = by_name.get("OSQP")
        if osqp is None or osqp.skipped:
            lines.append("- n = 10^6, closed form >= 300x faster than OSQP: OSQP not run at 10^6")
        else:
            ratio = osqp.median_s / base.median_s
            lines.append(f"- n = 10^6, closed form >= 300x faster than OSQP: "
                         f"{'met' if ratio >= 300 else 'NOT met'}, {ratio:.0f}x")
        exact = [row for row in rows if row.method.startswith("closed form") or row.method == "sort projection"]
        worst = max(max(abs(row.objective - base.objective) / abs(base.objective), row.kkt, row.sum_error,
                        max(-row.min_w, 0.0)) for row in exact)
        lines.append(f"- n = 10^6, exact to rounding: largest gap, KKT residual or violation of the "
                     f"closed forms and the sort projection is {worst:.1e}")
    rows = results.get(("first", 10**7))
    if rows is None:
        lines.append("- n = 10^7 in <= 0.2 s: not measured in this run")
    else:
        seconds = rows[0].median_s
        lines.append(f"- n = 10^7 in <= 0.2 s: {'met' if seconds <= 0.2 else 'NOT met'}, "
                     f"closed form (auto) {seconds:.3f} s")
    return lines


def goals(results: dict) -> list[str]:
    lines = ["### Goals", "", *first_order_goals(results)]
    for n in (2000, 5000):
        for r in (64, n):
            lines.append(speedup_goal(f"dense n = {n}, r = {r}, >= 2x faster than the best general solver",
                                      results.get(("dense", n, r)), 2.0))
    lines.append(speedup_goal("factored n = 20000, r = 64, >= 8x faster than the best general solver",
                              results.get(("factored", 20000, 64)), 8.0))
    return lines


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (about 2 minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each fast method (default 7, quick 3)")
    parser.add_argument("--fast-seconds", type=float, default=2.0,
                        help="methods whose first call takes less than this many seconds are repeated")
    parser.add_argument("--reference-cap", type=float, default=None,
                        help="seconds after which a general solver's run is stopped (default 60, quick 20)")
    parser.add_argument("--support-fraction", type=float, default=0.1,
                        help="fraction of samples in the first-order support, which sets lam")
    parser.add_argument("--curvature-ratio", type=float, default=10.0,
                        help="(eta/c) lambda_max(Q) / lam, which sets eta")
    args = parser.parse_args()
    if args.quick:
        args.repeats = args.repeats or 3
        args.reference_cap = args.reference_cap or 20.0
        args.first_order_sizes = [10**3, 10**4, 10**5, 10**6, 10**7]
        args.osqp_first_order_max_n = 10**5
        args.dense_cases = [(200, 64), (200, 200), (2000, 64), (2000, 2000)]
        args.factored_cases = [(2000, 64), (20000, 64), (100000, 64)]
    else:
        args.repeats = args.repeats or 7
        args.reference_cap = args.reference_cap or 60.0
        args.first_order_sizes = [10**3, 10**4, 10**5, 10**6, 10**7]
        args.osqp_first_order_max_n = 10**6
        args.dense_cases = [(200, 64), (200, 200), (2000, 64), (2000, 2000), (5000, 64), (5000, 5000)]
        args.factored_cases = [(2000, 64), (20000, 64), (100000, 64), (1000000, 64)]
    return args


def environment_line() -> str:
    import cvxpy
    import osqp

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load} at start; Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, osqp "
        f"{osqp.__version__}, cvxpy {cvxpy.__version__}; OPENBLAS_NUM_THREADS={threads}"
    )


def main() -> None:
    args = parse_arguments()
    # An iterative solver that stops slightly above its certificate tolerance still returns
    # its weights. The KKT column shows the residual, so the warning is not needed here.
    warnings.simplefilter("ignore", InaccurateSolutionWarning)
    started = time.perf_counter()
    print(environment_line())
    print(f"repeats {args.repeats}, fast below {args.fast_seconds} s, reference cap {args.reference_cap} s\n")
    skips = SkipRule(args.reference_cap)
    results: dict = {}
    bench_first_order(args, skips, results)
    bench_second_order(args, skips, results, dense=True)
    bench_second_order(args, skips, results, dense=False)
    print()
    print("\n".join(goals(results)))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {load} at the end")


if __name__ == "__main__":
    main()
