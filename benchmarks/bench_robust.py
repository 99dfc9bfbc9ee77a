"""Benchmark of robust weights (idopt.robust) on the seeded linear regression example.

Three parts, all measured in one run of this script:

1. Validation MSE on the target after gradient descent with uniform, first-order and
   robust weights (rho grid including 1e-4), for several data seeds (idopt.robust_example).
2. SLSQP against a grid over the simplex for n = 2 and 3 (objective gap).
3. SLSQP against the CVXPY second-order cone program for eta = 0 without the rho^2 term.

Usage: python benchmarks/bench_robust.py [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from idopt.robust import LinearSquaredLoss, RobustProblem, grid_minimum, solve_robust
from idopt.robust_example import ExampleConfig, plot_example, run_example


def example_table(seeds: int, out: str | None) -> None:
    finals: dict[str, list[float]] = {}
    shares: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in range(seeds):
        start = time.perf_counter()
        result = run_example(ExampleConfig(seed=seed))
        print(f"seed {seed}: {time.perf_counter() - start:.1f} s, eta = {result.eta:.4g}, lam = {result.lam:.4g}")
        if out is not None and seed == 0:
            print(f"  wrote {plot_example(result, f'{out}/robust_example_seed0.png')}")
        for name, curve in result.curves.items():
            finals.setdefault(name, []).append(float(curve[-1]))
            shares.setdefault(name, []).append(result.matching_share(name))
            seconds.setdefault(name, []).append(result.solve_seconds.get(name, float("nan")))
    print(f"\n| weights | val MSE after 100 steps, mean over {seeds} seeds | min | max | share on matching | solve s |")
    print("|---|---|---|---|---|---|")
    for name in finals:
        values = np.array(finals[name])
        print(f"| {name} | {values.mean():.4f} | {values.min():.4f} | {values.max():.4f} | "
              f"{np.mean(shares[name]):.3f} | {np.nanmean(seconds[name]) if name.startswith('robust') else float('nan'):.2f} |")


def random_model(seed: int, n: int, d: int = 3, m: int = 4) -> LinearSquaredLoss:
    rng = np.random.default_rng(seed)
    return LinearSquaredLoss.create(rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=(m, d)),
                                    rng.normal(size=m), rng.normal(size=d))


def grid_table(instances: int) -> None:
    print("\n| n | grid points per edge | instances | max (R_slsqp - R_grid) / abs(R_grid) | min (same) |")
    print("|---|---|---|---|---|")
    for n, points in ((2, 4001), (3, 401)):
        gaps = []
        for seed in range(instances):
            problem = RobustProblem.create(random_model(seed, n), eta=0.03, rho=0.5, lam=0.1)
            solution = solve_robust(problem, starts=4, seed=seed)
            _, grid_value = grid_minimum(problem, points)
            gaps.append((solution.objective - grid_value) / abs(grid_value))
        print(f"| {n} | {points} | {instances} | {max(gaps):.2e} | {min(gaps):.2e} |")


def socp_table(instances: int) -> None:
    print("\n| n | instances | max abs(R_slsqp - R_socp) / abs(R_socp) | median SLSQP s | median SOCP s |")
    print("|---|---|---|---|---|")
    for n in (30, 120):
        gaps, slsqp_s, socp_s = [], [], []
        for seed in range(instances):
            problem = RobustProblem.create(random_model(100 + seed, n, d=8, m=20), eta=0.0, rho=0.3, lam=1.0,
                                           curvature_term=False)
            cone = solve_robust(problem, "socp")
            local = solve_robust(problem, starts=2, seed=seed)
            gaps.append(abs(local.objective - cone.objective) / abs(cone.objective))
            slsqp_s.append(local.wall_time_s)
            socp_s.append(cone.wall_time_s)
        print(f"| {n} | {instances} | {max(gaps):.2e} | {np.median(slsqp_s):.2f} | {np.median(socp_s):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="data seeds of the example")
    parser.add_argument("--instances", type=int, default=5, help="random instances per solver comparison")
    parser.add_argument("--out", help="folder for the seed-0 PNG")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    example_table(args.seeds, args.out)
    grid_table(args.instances)
    socp_table(args.instances)


if __name__ == "__main__":
    main()
