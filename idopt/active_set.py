"""Primal-dual active-set solver for the second-order weighting problem.

For one target column p (n,) the problem is

    minimize_w  F(w) = -p^T w + (1/2) w^T M w    s.t.  w >= 0,  1^T w = b,
    M = (eta/c) Q + lam I,

with Q dense, factored (A^T H A or A^T A) or absent. Its KKT conditions are
M w - p - nu 1 - mu = 0, w >= 0, mu >= 0, w_i mu_i = 0.

Primal-dual active set (Hintermueller, Ito and Kunisch, SIAM J. Optim. 13(3), 2002): each
step guesses the free set F (the samples with w_i > 0), solves the equality-constrained
problem on F,

    [M_FF  1] [ w_F]   [p_F]
    [1^T   0] [-nu ] = [ b ],     w_i = 0 off F,

and computes the multipliers mu_i = (M w)_i - p_i - nu off F. The next free set is

    F_new = {i in F : w_i > 0}  union  {i not in F : mu_i < -delta},

which is the rule F_new = {i : w_i - mu_i / c_i > 0} of the semismooth Newton view, because
mu_i = 0 on F and w_i = 0 off F (so the constant c_i > 0 only matters for the first set).
delta = 1e-13 times the gradient scale keeps rounding noise in mu from re-adding a sample
whose true multiplier is 0. The method stops when F_new = F.

The first free set is one projected diagonal-Newton step from the start w0 (default b/n):
F_0 = {i : w0_i - (grad_i - nu_0) / M_ii > 0} with nu_0 chosen so that the projected point
sums to b. With no Q (M = lam I) this is the exact solution, so the method stops after
one confirming solve.

Convergence is proven for M-matrices, and other positive definite M can make the free
sets cycle. A repeated free set (other than the current one) therefore switches to a
primal active-set method. It starts from the clipped iterate, keeps w feasible, never
increases the objective and moves one sample in or out per step, so it terminates for a
strictly convex problem. The iteration limit counts the linear solves of both phases.

Linear algebra:

- factored Q = A^T H A: M_FF = lam I + (eta/c) A_F^T H A_F is solved with the Woodbury
  identity M_FF^-1 X = (X - A_F^T (lam I + (eta/c) H G_F)^-1 (eta/c) H A_F X) / lam, with
  the r x r Gram matrix G_F = A_F A_F^T updated by the samples that enter or leave F
  (O(k r^2) for k changes) and recomputed when the changes are large.
- dense Q: a Cholesky factor of M_GG for a base set G is kept. A new free set F with
  removed samples R = G \\ F and added samples D = F \\ G is solved by bordering: the
  added samples extend the factor with a Schur complement, and the removed ones become
  equality constraints w_R = 0 next to 1^T w = b. A cost model (flop counts of both
  routes) decides when refactoring M_FF is cheaper.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import time
import warnings

import numpy as np
from scipy import linalg

from idopt.certificate import kkt_certificate
from idopt.errors import InaccurateSolutionWarning, InvalidInputError
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.solution import Solution
from idopt.status import Status
from idopt.validation import as_float_array, check_finite

logger = logging.getLogger(__name__)

DEFAULT_MAX_ITER = 500
DENSE_UPDATES = ("auto", "refactor")

# A multiplier mu_i >= -MULTIPLIER_TOL * grad_scale counts as non-negative: rounding in
# mu = M w - p - nu is a few ulps of the largest term, far below this.
MULTIPLIER_TOL = 1e-13

# w0 must sum to b within this relative error before it is rescaled to sum to b exactly.
START_SUM_RTOL = 1e-8

# The Gram matrix of the factored system is recomputed from A_F when the number of samples
# added or removed since the last exact computation exceeds this fraction of |F|, which
# bounds the rounding that updates accumulate and keeps updates cheaper than recomputing.
GRAM_REFRESH_FRACTION = 0.5

# Cost of gathering one entry of Q into M_FF, in flops of a Cholesky factorization. An
# estimate from one measurement at n = 3000 (numpy fancy indexing and scipy's Cholesky
# with OpenBLAS on a 2-core CPU): about 4 ns per entry against about 18 ps per flop.
GATHER_FLOPS = 200.0

# Largest n for which a factored Q with lam = 0 is expanded to a dense n x n Hessian.
DENSE_EXPANSION_MAX_N = 8000


class _FactoredSystem:
    """Solves with M_FF = lam I + kappa A_F^T H A_F (A is None: M = lam I), never n x n."""

    def __init__(self, A, H, curvature: float, lam: float):
        self.A = A
        self.H = H
        self.kappa = curvature
        self.lam = lam
        self.n = None if A is None else A.shape[1]
        self.gram = None
        self.gram_mask = None
        self.changes_since_exact = 0
        self.gram_recomputations = 0
        self.gram_updates = 0

    def prepare(self, free_mask: np.ndarray, free_idx: np.ndarray) -> None:
        self.free_idx = free_idx
        if self.A is None:
            self.A_F = None
        else:
            self.A_F = self.A[:, free_idx]
            self._update_gram(free_mask, free_idx.shape[0])
            r = self.A.shape[0]
            if self.H is None:
                inner = self.kappa * self.gram
                inner.flat[:: r + 1] += self.lam
                self.inner = ("cho", linalg.cho_factor(inner, lower=True, check_finite=False))
            else:
                inner = self.kappa * (self.H @ self.gram)
                inner.flat[:: r + 1] += self.lam
                self.inner = ("lu", linalg.lu_factor(inner, check_finite=False))
        ones = np.ones(free_idx.shape[0])
        self.v = self._apply_inverse(ones)
        self.v_sum = float(np.sum(self.v))

    def _update_gram(self, free_mask, size):
        if self.gram is not None:
            changed = free_mask != self.gram_mask
            count = int(np.count_nonzero(changed))
            if self.changes_since_exact + count <= GRAM_REFRESH_FRACTION * size:
                added = np.flatnonzero(changed & free_mask)
                removed = np.flatnonzero(changed & self.gram_mask)
                if added.size:
                    A_added = self.A[:, added]
                    self.gram += A_added @ A_added.T
                if removed.size:
                    A_removed = self.A[:, removed]
                    self.gram -= A_removed @ A_removed.T
                self.gram_mask = free_mask.copy()
                self.changes_since_exact += count
                self.gram_updates += 1
                return
        self.gram = self.A_F @ self.A_F.T
        self.gram_mask = free_mask.copy()
        self.changes_since_exact = 0
        self.gram_recomputations += 1

    def _apply_inverse(self, x: np.ndarray) -> np.ndarray:
        """Return M_FF^-1 x by the Woodbury identity (see the module docstring)."""
        if self.A_F is None:
            return x / self.lam
        projected = self.A_F @ x
        kind, factor = self.inner
        if kind == "cho":
            inner_solution = linalg.cho_solve(factor, self.kappa * projected, check_finite=False)
        else:
            inner_solution = linalg.lu_solve(factor, self.kappa * (self.H @ projected), check_finite=False)
        return (x - self.A_F.T @ inner_solution) / self.lam

    def solve(self, q_F: np.ndarray, total: float) -> tuple[np.ndarray, float]:
        """Solve M_FF x - q_F - nu 1 = 0, 1^T x = total; return (x, nu)."""
        u = self._apply_inverse(q_F)
        u_sum = float(np.sum(u))
        nu = (total - u_sum) / self.v_sum
        # x = u + nu v, grouped so that the budget part b v / s is not the difference of
        # two large terms when b is small against the scale of u.
        x = (total / self.v_sum) * self.v + (u - (u_sum / self.v_sum) * self.v)
        return x, nu

    def hessian_matvec(self, w: np.ndarray, free_idx=None, w_F=None) -> np.ndarray:
        """Return M w in O(n r); pass free_idx and w_F = w[free_idx] when w is zero elsewhere."""
        result = self.lam * w
        if self.A is not None:
            inner = self.A @ w if free_idx is None else self.A[:, free_idx] @ w_F
            if self.H is not None:
                inner = self.H @ inner
            result += self.kappa * (self.A.T @ inner)
        return result

    def diagonal(self, n: int) -> np.ndarray:
        diag = np.full(n, self.lam)
        if self.A is not None:
            mixed = self.A if self.H is None else self.H @ self.A
            diag += self.kappa * np.einsum("ij,ij->j", self.A, mixed)
        return diag

    def stats(self) -> dict:
        return {"gram_recomputations": self.gram_recomputations, "gram_updates": self.gram_updates}


class _DenseSystem:
    """Solves with M_FF = kappa Q_FF + lam I from a Cholesky factor of a base block M_GG.

    For F = (G \\ R) + D the unknowns are ordered [G, D] and the bordered matrix
    K = M over G + D has the lower factor [[L, 0], [Z^T, L_S]] with Z = L^-1 M_GD and
    L_S L_S^T = M_DD - Z^T Z. The rows of R are kept with the constraint w_R = 0, so the
    solve is an equality-constrained one with constraint matrix C = [1_F, E_R].
    """

    def __init__(self, Q, curvature: float, lam: float, update: str):
        self.Q = Q
        self.kappa = curvature
        self.lam = lam
        self.update = update
        self.n = Q.shape[0]
        self.base = None
        self.base_position = np.full(self.n, -1, dtype=np.intp)
        self.L = None
        self.refactorizations = 0
        self.schur_updates = 0

    def _hessian_block(self, rows, cols, diagonal: bool) -> np.ndarray:
        if rows.shape[0] == self.n and diagonal:
            block = self.Q * self.kappa
        else:
            block = self.Q[np.ix_(rows, cols)]
            block *= self.kappa
        if diagonal:
            block.flat[:: rows.shape[0] + 1] += self.lam
        return block

    def _refactor(self, free_idx):
        block = self._hessian_block(free_idx, free_idx, diagonal=True)
        self.L = linalg.cholesky(block, lower=True, overwrite_a=True, check_finite=False)
        if self.base is not None:
            self.base_position[self.base] = -1
        self.base = free_idx.copy()
        self.base_position[self.base] = np.arange(free_idx.shape[0])
        self.refactorizations += 1

    def prepare(self, free_mask: np.ndarray, free_idx: np.ndarray) -> None:
        f = free_idx.shape[0]
        if self.base is None or self.update == "refactor":
            self._refactor(free_idx)
        else:
            g = self.base.shape[0]
            added_count = int(np.count_nonzero(self.base_position[free_idx] < 0))
            removed_count = g - (f - added_count)
            # Flops: Z = L^-1 M_GD, S = M_DD - Z^T Z, and K^-1 applied to the |R| + 3
            # right-hand sides of the constraints and two solves; gathers of Q entries.
            update_cost = g * g * (added_count + 2 * (removed_count + 3)) + g * added_count**2
            update_cost += GATHER_FLOPS * g * added_count
            refactor_cost = f**3 / 3 + 4 * f * f + GATHER_FLOPS * f * f
            if update_cost >= refactor_cost and (added_count or removed_count):
                self._refactor(free_idx)
        self._border(free_idx)

    def _border(self, free_idx):
        g = self.base.shape[0]
        position = self.base_position[free_idx]
        in_base = position >= 0
        added = free_idx[~in_base]
        a = added.shape[0]
        kept_in_base = np.zeros(g, dtype=bool)
        kept_in_base[position[in_base]] = True
        removed_positions = np.flatnonzero(~kept_in_base)

        self.Z = self.L_S = None
        if a:
            M_GD = self._hessian_block(self.base, added, diagonal=False)
            self.Z = linalg.solve_triangular(self.L, M_GD, lower=True, check_finite=False)
            schur = self._hessian_block(added, added, diagonal=True) - self.Z.T @ self.Z
            self.L_S = linalg.cholesky(schur, lower=True, overwrite_a=True, check_finite=False)
        if a or removed_positions.size:
            self.schur_updates += 1

        # Position of each free sample (ascending sample index) among the unknowns [G, D].
        order = np.empty(free_idx.shape[0], dtype=np.intp)
        order[in_base] = position[in_base]
        order[~in_base] = g + np.arange(a)
        self.order = order
        self.removed_positions = removed_positions
        constraints = np.zeros((g + a, removed_positions.shape[0] + 1))
        constraints[order, 0] = 1.0
        constraints[removed_positions, 1 + np.arange(removed_positions.shape[0])] = 1.0
        self.K_inv_C = self._solve_bordered(constraints)
        self.constraint_gram = linalg.cho_factor(self._constraint_product(self.K_inv_C), check_finite=False)

    def _constraint_product(self, x):
        """Return C^T x for C = [1_F, E_R]."""
        first = np.sum(x[self.order], axis=0, keepdims=True)
        return np.concatenate([first, x[self.removed_positions]], axis=0)

    def _solve_bordered(self, rhs):
        """Return K^-1 rhs with the factor [[L, 0], [Z^T, L_S]] of K."""
        g = self.base.shape[0]
        top = linalg.solve_triangular(self.L, rhs[:g], lower=True, check_finite=False)
        if self.L_S is None:
            return linalg.solve_triangular(self.L, top, lower=True, trans="T", check_finite=False)
        bottom = linalg.solve_triangular(self.L_S, rhs[g:] - self.Z.T @ top, lower=True, check_finite=False)
        bottom = linalg.solve_triangular(self.L_S, bottom, lower=True, trans="T", check_finite=False)
        top = linalg.solve_triangular(self.L, top - self.Z @ bottom, lower=True, trans="T", check_finite=False)
        return np.concatenate([top, bottom], axis=0)

    def solve(self, q_F: np.ndarray, total: float) -> tuple[np.ndarray, float]:
        """Solve M_FF x - q_F - nu 1 = 0, 1^T x = total; return (x, nu)."""
        rhs = np.zeros(self.K_inv_C.shape[0])
        rhs[self.order] = q_F
        u = self._solve_bordered(rhs)
        target = np.zeros(self.K_inv_C.shape[1])
        target[0] = total
        multipliers = linalg.cho_solve(self.constraint_gram, target - self._constraint_product(u), check_finite=False)
        x = u + self.K_inv_C @ multipliers
        return x[self.order], float(multipliers[0])

    def hessian_matvec(self, w: np.ndarray, free_idx=None, w_F=None) -> np.ndarray:
        """Return M w = kappa Q w + lam w (the full product: gathering Q[:, F] costs as much)."""
        result = self.Q @ w
        result *= self.kappa
        result += self.lam * w
        return result

    def diagonal(self, n: int) -> np.ndarray:
        return self.kappa * np.diag(self.Q) + self.lam

    def stats(self) -> dict:
        return {"refactorizations": self.refactorizations, "schur_updates": self.schur_updates}


def _check_arguments(problem, target, max_iter, tol, dense_update):
    if not isinstance(problem, WeightingProblem):
        raise InvalidInputError(
            f"problem must be a WeightingProblem (build it with WeightingProblem.create); "
            f"got {type(problem).__name__}"
        )
    if not isinstance(target, numbers.Integral) or isinstance(target, (bool, np.bool_)):
        raise InvalidInputError(f"target must be an integer column index of p; got {target!r}")
    if max_iter is None:
        max_iter = DEFAULT_MAX_ITER
    elif not isinstance(max_iter, numbers.Integral) or isinstance(max_iter, (bool, np.bool_)) or max_iter < 1:
        raise InvalidInputError(f"max_iter must be an integer >= 1 or None (meaning {DEFAULT_MAX_ITER}); got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (np.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"tol must be a finite number > 0 (a relative KKT residual); got {tol!r}")
    if dense_update not in DENSE_UPDATES:
        raise InvalidInputError(f"dense_update must be one of {DENSE_UPDATES}; got {dense_update!r}")
    return int(max_iter), float(tol)


def _check_start(w0, n: int, budget: float) -> np.ndarray:
    if w0 is None:
        return np.full(n, budget / n)
    start = as_float_array(w0, "w0", ndim=1)
    if start.shape != (n,):
        raise InvalidInputError(f"w0 must have shape (n,) = ({n},); got shape {start.shape}")
    check_finite(start, "w0")
    smallest = float(np.min(start))
    if smallest < 0:
        raise InvalidInputError(
            f"w0 must be feasible (w0 >= 0, sum(w0) = budget); its minimum is {smallest:.6g} "
            f"at index {int(np.argmin(start))}"
        )
    total = float(np.sum(start))
    if abs(total - budget) > START_SUM_RTOL * budget:
        raise InvalidInputError(
            f"w0 must be feasible (w0 >= 0, sum(w0) = budget = {budget:.17g}); got sum(w0) = "
            f"{total:.17g}. Rescale it with w0 * budget / w0.sum()"
        )
    return start * (budget / total)


def _diagonal_newton_free_set(start, grad, diagonal, budget) -> np.ndarray:
    """Return the support of the projected diagonal-Newton step from ``start``.

    Finds nu with sum_i max(a_i + nu / d_i, 0) = b, a_i = start_i - grad_i / d_i, by
    sorting the break points t_i = -a_i d_i: on (t_(k-1), t_(k)] the sum is linear in nu
    with the first k terms positive.
    """
    scale = float(np.max(diagonal))
    # A zero diagonal entry (possible only for a Hessian that is not positive definite)
    # is lifted to a tiny positive value so that the step stays defined.
    d = np.maximum(diagonal, 1e-300 if scale <= 0 else 1e-12 * scale)
    offsets = start - grad / d
    breaks = -offsets * d
    order = np.argsort(breaks, kind="stable")
    sorted_breaks = breaks[order]
    sum_offsets = np.concatenate([[0.0], np.cumsum(offsets[order])])[:-1]
    sum_inverse = np.concatenate([[0.0], np.cumsum(1.0 / d[order])])[:-1]
    values = sum_offsets + sorted_breaks * sum_inverse
    count = max(int(np.searchsorted(values, budget, side="left")), 1)
    free = np.zeros(start.shape[0], dtype=bool)
    free[order[:count]] = True
    return free


def _set_key(mask: np.ndarray) -> bytes:
    return np.packbits(mask).tobytes()


def _finish(system_name, w, nu, problem, p, status, iterations, started, tol, extras) -> Solution:
    w = np.maximum(w, 0.0)
    total = float(np.sum(w))
    if total > 0:
        w *= problem.budget / total
    grad = problem.gradient(w, p)
    certificate = kkt_certificate(w, grad, problem.budget, grad_scale=problem.gradient_scale(w, p))
    if status is Status.OPTIMAL and not certificate.passes(tol):
        status = Status.INACCURATE
        warnings.warn(
            f"active_set: the free set converged but the KKT certificate max residual "
            f"{certificate.max_residual:.3e} exceeds tol={tol:.1e}; M_FF may be ill-conditioned "
            f"(check lam against eta/c times the scale of Q), or use a QP backend.",
            InaccurateSolutionWarning,
            stacklevel=3,
        )
    support_size = int(np.count_nonzero(w > 0))
    logger.debug(
        "active_set:%s n=%s iterations=%s support=%s status=%s max_residual=%.3e",
        system_name, w.shape[0], iterations, support_size, status.value, certificate.max_residual,
    )
    return Solution(
        w=w,
        nu=float(nu),
        objective=problem.objective(w, p),
        status=status,
        iterations=iterations,
        wall_time_s=time.perf_counter() - started,
        method=f"active_set:{system_name}",
        certificate=certificate,
        lam=problem.lam,
        budget=problem.budget,
        support_size=support_size,
        extras=extras,
    )


class _Iteration:
    """State shared by the two phases: the system, the scores and the solve counter."""

    def __init__(self, system, p, budget, max_iter):
        self.system = system
        self.p = p
        self.budget = budget
        self.max_iter = max_iter
        self.solves = 0

    def solve_on(self, free_mask):
        """Solve the equality-constrained problem on F; return (w, w_F, free_idx, nu, grad)."""
        free_idx = np.flatnonzero(free_mask)
        self.system.prepare(free_mask, free_idx)
        w_F, nu = self.system.solve(self.p[free_idx], self.budget)
        self.solves += 1
        if not (np.all(np.isfinite(w_F)) and np.isfinite(nu)):
            raise linalg.LinAlgError(f"the solve on a free set of {free_idx.shape[0]} samples is not finite")
        w = np.zeros(self.p.shape[0])
        w[free_idx] = w_F
        grad = self.system.hessian_matvec(w, free_idx, w_F) - self.p
        return w, w_F, free_idx, nu, grad

    def refine(self, w, w_F, free_idx, nu, grad):
        """Refine the solve on F by one step of iterative refinement with the exact residual."""
        residual = nu - grad[free_idx]
        correction, nu_correction = self.system.solve(residual, self.budget - float(np.sum(w_F)))
        w_F = w_F + correction
        nu = nu + nu_correction
        w = np.zeros(self.p.shape[0])
        w[free_idx] = w_F
        grad = self.system.hessian_matvec(w, free_idx, w_F) - self.p
        return w, w_F, nu, grad


def _primal_dual_phase(state: _Iteration, free, threshold):
    """Run the primal-dual active-set steps; return (outcome, w, nu, free)."""
    seen = {_set_key(free)}
    w, nu = None, 0.0
    while state.solves < state.max_iter:
        w, w_F, free_idx, nu, grad = state.solve_on(free)
        multipliers = grad - nu
        new_free = (free & (w > 0)) | (~free & (multipliers < -threshold))
        changed = int(np.count_nonzero(new_free != free))
        logger.debug("active_set: solve %s |F|=%s changes=%s nu=%.6g", state.solves, free_idx.shape[0], changed, nu)
        if changed == 0:
            w, w_F, nu, grad = state.refine(w, w_F, free_idx, nu, grad)
            return "converged", w, nu, free
        key = _set_key(new_free)
        if key in seen:
            return "cycling", w, nu, new_free
        seen.add(key)
        free = new_free
    return "iteration_limit", w, nu, free


def _primal_phase(state: _Iteration, w, threshold):
    """Run a feasible primal active-set method from the feasible point w.

    Each step solves on F = support; a full step that stays >= 0 is taken, and then the
    sample with the most negative multiplier off F enters. Otherwise the step is cut at
    the first weight that reaches 0 and that sample leaves F. F(w) never increases.
    """
    free = w > 0
    nu = 0.0
    while state.solves < state.max_iter:
        target, target_F, free_idx, nu, grad = state.solve_on(free)
        negative = free & (target < 0)
        if not negative.any():
            w = target
            multipliers = grad - nu
            multipliers[free] = np.inf
            entering = int(np.argmin(multipliers))
            if multipliers[entering] >= -threshold:
                w, target_F, nu, grad = state.refine(w, target_F, free_idx, nu, grad)
                return "converged", w, nu, free
            free = free.copy()
            free[entering] = True
            continue
        blocking = np.flatnonzero(negative)
        ratios = w[blocking] / (w[blocking] - target[blocking])
        step = float(np.min(ratios))
        w = w + step * (target - w)
        leaving = blocking[ratios <= step]
        w[leaving] = 0.0
        w = np.maximum(w, 0.0)
        free = free & (w > 0)
    return "iteration_limit", w, nu, free


def _feasible_point(w: np.ndarray, budget: float) -> np.ndarray:
    clipped = np.maximum(w, 0.0)
    total = float(np.sum(clipped))
    if total <= 0:
        return np.full(w.shape[0], budget / w.shape[0])
    return clipped * (budget / total)


def _make_system(problem: WeightingProblem, dense_update: str):
    """Return (name, system) for the structure of Q, or (name, None) when none applies."""
    if not problem.has_quadratic:
        return "diagonal", _FactoredSystem(None, None, 0.0, problem.lam)
    if problem.Q is not None:
        return "dense", _DenseSystem(problem.Q, problem.curvature, problem.lam, dense_update)
    if problem.lam > 0:
        return "factored", _FactoredSystem(problem.A, problem.H, problem.curvature, problem.lam)
    # With lam = 0 the Woodbury identity has no lam I to invert; M = (eta/c) A^T H A is
    # positive definite only when r >= n, so its dense form is small.
    if problem.n <= DENSE_EXPANSION_MAX_N:
        return "dense_expanded", _DenseSystem(problem.dense_hessian(), 1.0, 0.0, dense_update)
    return "factored", None


def solve_active_set(
    problem: WeightingProblem,
    *,
    target: int = 0,
    w0=None,
    max_iter: int | None = None,
    tol: float = 1e-10,
    dense_update: str = "auto",
) -> Solution:
    """Solve the second-order weighting problem for one target by a primal-dual active-set method.

    Minimizes F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2 subject to w >= 0 and
    1^T w = b, with p = problem.column(target).p, for dense, factored or absent Q. See the
    module docstring for the method, the set update rule and the cycling fallback.

    Parameters
    ----------
    problem : WeightingProblem
        The problem; (eta/c) Q + lam I must be positive definite (or lam = 0 without Q).
    target : int, default 0
        Column of p to solve for.
    w0 : array_like, shape (n,), optional
        Start point, feasible: w0 >= 0 and sum(w0) = b within a relative 1e-8 (it is
        rescaled to sum to b). Default: the uniform weights b/n. A previous solution is a
        warm start: at the optimum the first free set is the optimal support.
    max_iter : int, optional
        Maximum number of linear solves on a free set, over both phases; default 500.
    tol : float, default 1e-10
        The status is OPTIMAL when every relative KKT residual of the certificate is <= tol.
    dense_update : {"auto", "refactor"}
        Dense Q only: "auto" reuses the Cholesky factor of a base set by bordering while
        the cost model predicts it is cheaper; "refactor" factors M_FF at every step.

    Returns
    -------
    Solution
        w (n,) with w >= 0 and |1^T w - b| within rounding, nu (the multiplier of
        1^T w = b), the certificate computed from w and grad F(w) only. status is OPTIMAL,
        INACCURATE (converged free set but the certificate misses tol; an
        InaccurateSolutionWarning is emitted), ITERATION_LIMIT (limit reached, w is the
        clipped and rescaled last iterate, extras["reason"] says why) or SOLVER_ERROR (a
        factorization failed). method is "active_set:<dense|factored|diagonal|
        dense_expanded>", or the closed form's method prefixed with "active_set:" for
        lam = 0 without Q. extras: "phase" ("primal_dual" or "primal" after cycling),
        "cycling_detected", "solves" and factorization counters.

    Raises
    ------
    InvalidInputError
        If problem is not a WeightingProblem, target is out of range, w0 has the wrong
        shape, is not finite or is infeasible, max_iter < 1, tol <= 0, or dense_update is
        unknown.
    """
    started = time.perf_counter()
    max_iter, tol = _check_arguments(problem, target, max_iter, tol, dense_update)
    problem = problem.column(int(target))
    p = problem.p
    n, budget = problem.n, problem.budget
    start = _check_start(w0, n, budget)

    if not problem.has_quadratic and problem.lam == 0.0:
        # A linear program: M = 0 makes every free-set system singular.
        closed = solve_first_order(p, 0.0, budget, tol=tol)
        return dataclasses.replace(closed, method=f"active_set:{closed.method}", wall_time_s=time.perf_counter() - started)

    name, system = _make_system(problem, dense_update)
    extras = {"phase": "primal_dual", "cycling_detected": False}
    if system is None:
        extras["reason"] = (
            f"factored Q with lam = 0 and n = {n} > {DENSE_EXPANSION_MAX_N}: the Woodbury solve needs lam > 0"
        )
        return _finish(name, start, 0.0, problem, p, Status.SOLVER_ERROR, 0, started, tol, extras)

    state = _Iteration(system, p, budget, max_iter)
    hessian_start = system.hessian_matvec(start)
    grad = hessian_start - p
    # The scale of the terms of grad F(start), as in problem.gradient_scale but from one product.
    scale = max(float(np.max(np.abs(p))), float(np.max(np.abs(hessian_start))))
    threshold = MULTIPLIER_TOL * (scale if scale > 0 else 1.0)
    free = _diagonal_newton_free_set(start, grad, system.diagonal(n), budget)
    if w0 is not None:
        # A warm start keeps its own support as well, so an optimal w0 is confirmed at once.
        free |= start > 0

    try:
        outcome, w, nu, free = _primal_dual_phase(state, free, threshold)
        if outcome == "cycling":
            extras["cycling_detected"] = True
            extras["phase"] = "primal"
            logger.info(
                "active_set: free set repeated after %s solves (n=%s); switching to the primal active-set method",
                state.solves, n,
            )
            outcome, w, nu, free = _primal_phase(state, _feasible_point(w, budget), threshold)
    except linalg.LinAlgError as error:
        extras["reason"] = f"factorization failed: {error}; (eta/c) Q + lam I may not be positive definite"
        extras["solves"] = state.solves
        extras.update(system.stats())
        logger.warning("active_set: %s", extras["reason"])
        return _finish(name, start, 0.0, problem, p, Status.SOLVER_ERROR, state.solves, started, tol, extras)

    extras["solves"] = state.solves
    extras.update(system.stats())
    if outcome == "converged":
        status = Status.OPTIMAL
    else:
        status = Status.ITERATION_LIMIT
        cycling = " after the free set cycled" if extras["cycling_detected"] else ""
        extras["reason"] = (
            f"iteration limit max_iter={max_iter} reached{cycling} without a repeated free set; "
            f"w is the last iterate clipped to w >= 0 and rescaled to sum to b"
        )
        logger.info("active_set: %s (n=%s)", extras["reason"], n)
    return _finish(name, _feasible_point(w, budget), nu, problem, p, status, state.solves, started, tol, extras)


__all__ = ["DEFAULT_MAX_ITER", "solve_active_set"]
