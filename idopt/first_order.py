"""First-order weighting problem of Influence Distillation.

For a pool of n samples with first-order influence scores p (n,), the weights solve

    minimize_w  F(w) = -p^T w + (lam/2) ||w||^2   s.t.  w >= 0,  1^T w = b.

For lam > 0 the solution is w = max(p + nu, 0) / lam with nu fixed by 1^T w = b, i.e.
the Euclidean projection of p / lam onto the scaled simplex. With p_(1) >= p_(2) >= ...
the sorted scores and S_k = p_(1) + ... + p_(k), the support is the top-k set of p with
k the largest index such that lam * b > S_k - k * p_(k); it grows with lam.

For lam = 0 the problem is a linear program: every optimum puts all weight on the
maximal scores. This module returns the one that splits b evenly among all samples
tied at max(p), which is also the limit of the lam > 0 solutions as lam -> 0.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

from idopt.certificate import KKTCertificate, kkt_certificate
from idopt.errors import InaccurateSolutionWarning, TieWarning
from idopt.simplex import METHODS, simplex_support
from idopt.solution import Solution
from idopt.status import Status
from idopt.validation import (
    as_float_array,
    check_budget,
    check_choice,
    check_finite,
    check_finite_range,
    check_k,
    check_lam,
    check_nonempty,
    check_scores,
    check_shape,
)

logger = logging.getLogger(__name__)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Return a^T b for 1-D arrays without BLAS threads.

    np.dot hands 1-D products to the BLAS library. On a loaded 2-core machine the start-up of its
    threads (OpenBLAS from numpy's wheel) took longer than the whole solve at n = 10^6.
    """
    return float(np.einsum("i,i->", a, b))

# Default certificate tolerance of the closed-form solvers. Their residuals are
# rounding errors, a few ulps of the largest term (about 1e-15) for any n up to 10^8
# because all sums are pairwise, so 1e-9 leaves a wide margin.
DEFAULT_TOL = 1e-9


def first_order_objective(w, p, lam) -> float:
    """Evaluate F(w) = -p^T w + (lam/2) ||w||^2.

    Parameters
    ----------
    w : array_like, shape (n,)
        Weights.
    p : array_like, shape (n,)
        First-order influence scores (unit of the loss change per unit weight).
    lam : float
        Regularization weight lam >= 0.

    Returns
    -------
    float
        The objective value, in the unit of p times the unit of w.
    """
    w = as_float_array(w, "w", ndim=1)
    p = as_float_array(p, "p", ndim=1)
    check_shape(p, "p", w.shape)
    check_finite(w, "w")
    check_finite(p, "p")
    lam = check_lam(lam)
    return float(-_dot(p, w) + 0.5 * lam * _dot(w, w))


def _certify(
    w: np.ndarray,
    p: np.ndarray,
    lam: float,
    budget: float,
    support: np.ndarray | None = None,
    p_range: tuple[float, float] | None = None,
) -> tuple[float, KKTCertificate]:
    """Return F(w) and the KKT certificate of w for grad F(w) = lam * w - p.

    For w >= 0 the gradient is -p wherever w_i = 0, so the certificate needs lam * w - p only
    on the support. The residuals are those of :func:`kkt_certificate` (support_tol = 0),
    computed from w and p without length-n float temporaries (one copy of p only when some
    score above -nu lies off the support); any other w goes through
    :func:`kkt_certificate` itself.

    Parameters
    ----------
    w, p : numpy.ndarray, shape (n,)
        Weights and scores, finite float64.
    lam, budget : float
        lam >= 0 and b > 0.
    support : numpy.ndarray, optional
        Ascending, distinct indices that the caller expects to be {i : w_i > 0}. They are
        checked against w (all w[support] > 0 and as many positive entries in w), which
        saves finding the support in w; indices that fail the check are ignored.
    p_range : (float, float), optional
        (min(p), max(p)) when the caller has them.
    """
    n = w.shape[0]
    p_min, p_max = p_range if p_range is not None else (float(np.min(p)), float(np.max(p)))
    # Rounding in grad = -p + lam * w scales with the larger of its two terms.
    p_scale = max(p_max, -p_min)
    w_min = float(np.min(w))
    positive = w > 0
    if support is not None:
        w_support = w.take(support)
        if not (np.count_nonzero(positive) == support.shape[0] and np.all(w_support > 0)):
            support = None
    if support is None:
        # flatnonzero of a boolean mask is several times faster than of the float array.
        support = np.flatnonzero(positive)
        w_support = w.take(support)
    if not w_min >= 0 or support.size == 0:
        grad = lam * w
        grad -= p
        grad_scale = max(p_scale, lam * float(np.max(w)))
        certificate = kkt_certificate(w, grad, budget, grad_scale=grad_scale)
        return float(-_dot(p, w) + 0.5 * lam * _dot(w, w)), certificate

    p_support = p.take(support)
    w_max = float(np.max(w_support))
    g_scale = max(p_scale, lam * w_max) or 1.0
    # mu = |grad - nu| on the support, grad = lam * w - p, built in one buffer.
    mu_support = lam * w_support
    mu_support -= p_support
    nu = float(np.mean(mu_support))
    mu_support -= nu
    np.abs(mu_support, out=mu_support)
    stationarity = float(np.max(mu_support)) / g_scale
    dual = 0.0
    if support.size < n:
        # Off the support grad_i = -p_i, so the dual residual is max(0, nu + max_off p) / g.
        # It is 0 unless some p_i > -nu lies off the support, which two counts show without
        # copying p. In floating point p_i > -nu exactly when p_i + nu > 0.
        above = np.greater(p, -nu, out=positive)
        off_above = np.count_nonzero(above) - np.count_nonzero(p_support > -nu)
        if off_above:
            p_off = p.copy()
            p_off[support] = -np.inf
            dual = max(0.0, nu + float(np.max(p_off))) / g_scale
            del p_off
    mu_support *= w_support
    complementarity = float(np.max(mu_support)) / (g_scale * w_max)
    primal = abs(float(np.sum(w_support)) - budget) / budget
    certificate = KKTCertificate(
        stationarity=stationarity,
        primal_feasibility=primal,
        dual_feasibility=dual,
        complementarity=complementarity,
        nu=nu,
        grad_scale=g_scale,
        support_size=int(support.size),
    )
    objective = float(-_dot(p_support, w_support) + 0.5 * lam * _dot(w_support, w_support))
    return objective, certificate


def _finish(
    w, nu, p, lam, budget, method, iterations, started, tol,
    ties=0, restricted=False, extras=None, support=None, p_range=None,
) -> Solution:
    objective, certificate = _certify(w, p, lam, budget, support=support, p_range=p_range)
    if restricted:
        status = Status.OPTIMAL_RESTRICTED
    elif certificate.passes(tol):
        status = Status.OPTIMAL
    else:
        status = Status.INACCURATE
        warnings.warn(
            f"{method}: KKT certificate max residual {certificate.max_residual:.3e} exceeds "
            f"tol={tol:.1e}; the weights may be off by rounding (check the scale of p).",
            InaccurateSolutionWarning,
            stacklevel=3,
        )
    # With support_tol = 0 the certificate's support is exactly {i : w_i > 0}.
    support_size = certificate.support_size
    solution = Solution(
        w=w,
        nu=float(nu),
        objective=objective,
        status=status,
        iterations=iterations,
        wall_time_s=time.perf_counter() - started,
        method=method,
        certificate=certificate,
        lam=lam,
        budget=budget,
        support_size=support_size,
        ties_at_boundary=ties,
        extras=extras or {},
    )
    logger.debug(
        "%s: n=%s lam=%s support=%s status=%s max_residual=%.3e",
        method, w.shape[0], lam, support_size, status.value, certificate.max_residual,
    )
    return solution


def _weights_on_support(values: np.ndarray, index: np.ndarray, lam: float, budget: float):
    """Compute the weights on a support A, avoiding cancellation between p and lam * b.

    On A: w_i = b / |A| + (p_i - mean_A(p)) / lam and nu = lam * b / |A| - mean_A(p).
    Entries that this puts at w_i <= 0 (only through rounding at the support's edge)
    are dropped and the formula is applied again.

    ``values`` (|A|,) holds p[index]; ``index`` (|A|,) the ascending indices of A.
    Returns (index, weights, nu) for the final support.
    """
    while True:
        mean = float(np.mean(values))
        deviations = values - mean
        # Second centering pass: the rounding error of `mean` (an ulp of max|p|) would be
        # amplified by 1 / lam into sum(w) - b; the mean of the deviations removes it.
        correction = float(np.mean(deviations))
        deviations -= correction
        mean += correction
        deviations /= lam
        deviations += budget / index.shape[0]
        weights = deviations
        positive = weights > 0
        if positive.all():
            break
        # The maximal score gets weight >= b / |A| > 0, so the support never empties.
        keep = np.flatnonzero(positive)
        index = index.take(keep)
        values = values.take(keep)
    nu = lam * budget / index.shape[0] - mean
    return index, weights, nu


def solve_first_order(p, lam, budget=None, method: str = "auto", tol: float = DEFAULT_TOL) -> Solution:
    """Solve  minimize_w -p^T w + (lam/2)||w||^2  s.t.  w >= 0, 1^T w = b  exactly.

    For lam > 0: w = max(p - tau, 0) / lam, where tau is the threshold of the projection
    of p onto {w >= 0, 1^T w = lam * b}; nu = -tau. The support is found with
    :func:`idopt.simplex.simplex_support` and the weights are recomputed on it as
    w_i = b / |A| + (p_i - mean_A(p)) / lam, which avoids the cancellation in p_i - tau
    when lam * b is small against |p|.

    For lam = 0 (linear program): w_i = b / |M| on M = {i : p_i = max(p)}, 0 elsewhere,
    nu = -max(p). When several scores tie at the maximum every split of b among them is
    optimal; the even split is returned.

    Parameters
    ----------
    p : array_like, shape (n,)
        First-order influence scores, finite floats.
    lam : float
        Regularization weight lam >= 0 (unit of p per unit weight).
    budget : float, optional
        Total weight b > 0; n when None (average weight 1).
    method : {"auto", "sort", "michelot", "condat", "sampled"}
        Projection method, see :func:`idopt.simplex.project_simplex`.
    tol : float, default 1e-9
        Certificate tolerance: the status is OPTIMAL when every relative KKT residual is
        <= tol, else INACCURATE with an InaccurateSolutionWarning.

    Returns
    -------
    Solution
        method is "projection:<method>" or "lp:argmax"; iterations counts projection passes.

    Raises
    ------
    InvalidInputError
        If p is not a non-empty finite 1-D float array, lam < 0, b <= 0 or the method is
        unknown.
    """
    started = time.perf_counter()
    p = as_float_array(p, "p", ndim=1)
    check_nonempty(p, "p")
    # One min and one max check finiteness and give the certificate its scale of p.
    p_range = check_finite_range(p, "p")
    p_max = p_range[1]
    lam = check_lam(lam)
    n = p.shape[0]
    b = check_budget(budget, n)
    check_choice(method, "method", METHODS)

    if lam == 0.0:
        top = np.flatnonzero(p == p_max)
        w = np.zeros(n)
        w[top] = b / top.shape[0]
        return _finish(
            w, -p_max, p, lam, b, "lp:argmax", 1, started, tol, support=top, p_range=p_range
        )

    scaled_budget = lam * b
    iterations = 1
    if scaled_budget == 0.0:
        # lam * b underflows: the support is the set of maximal scores, as for lam = 0.
        index = np.flatnonzero(p == p_max)
        values = p.take(index)
        used = "underflow"
    elif not np.isfinite(scaled_budget):
        # lam * b overflows: every sample is in the support (w -> b / n).
        index = np.arange(n)
        values = p
        used = "overflow"
    else:
        # The support comes back with the threshold, so p is not scanned again for it.
        found = simplex_support(p, scaled_budget, method)
        index, values = found.index, found.values
        used, iterations = found.method, found.iterations
    index, weights, nu = _weights_on_support(values, index, lam, b)
    w = np.zeros(n)
    w[index] = weights
    return _finish(
        w, nu, p, lam, b, f"projection:{used}", iterations, started, tol,
        support=index, p_range=p_range,
    )


def _top_k_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the indices of the k largest scores, by descending score, lower index first on ties."""
    n = scores.shape[0]
    if k >= n:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)[: k - above.shape[0]]
    # Ties can only occur inside `above` or inside `tied`, both ascending by index, so a
    # stable sort of the concatenation keeps the lower index first.
    candidates = np.concatenate([above, tied])
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def _interval_from_order(p, order, k, b):
    top_scores = p[order[:k]]
    kth = top_scores[-1]
    # low = (S_k - k p_(k)) / b written as a sum of non-negative gaps, without cancellation.
    low = float(np.sum(top_scores - kth)) / b
    if k == p.shape[0]:
        return low, np.inf
    gap = kth - p[order[k]]
    return low, low + k * float(gap) / b


def lam_interval_for_support(p, k: int, budget=None) -> tuple[float, float]:
    """Return (lam_low, lam_high], the lam values whose solution has exactly k non-zeros.

    Derivation: with p sorted descending and S_k = p_(1) + ... + p_(k), the support is the
    top k exactly when the threshold tau = (S_k - lam * b) / k satisfies
    p_(k) > tau >= p_(k+1), i.e.

        (S_k - k p_(k)) / b < lam <= (S_k - k p_(k+1)) / b.

    For k = n there is no p_(k+1) and lam_high = +inf. A tie p_(k) = p_(k+1) gives
    lam_low = lam_high: the interval is empty and no lam yields exactly k non-zeros.

    Parameters
    ----------
    p : array_like, shape (n,)
        Scores, finite floats.
    k : int
        Support size, 1 <= k <= n.
    budget : float, optional
        Total weight b > 0; n when None.

    Returns
    -------
    (float, float)
        lam_low >= 0 (excluded) and lam_high (included, may be inf), unit of p per unit weight.
    """
    p = check_scores(p, "p", ndim=1)
    n = p.shape[0]
    k = check_k(k, n)
    b = check_budget(budget, n)
    order = _top_k_order(p, min(k + 1, n))
    return _interval_from_order(p, order, k, b)


def solve_exact_k(p, k: int, budget=None, tol: float = DEFAULT_TOL) -> Solution:
    """Solve the first-order problem at a lam that gives exactly k non-zero weights.

    Choice of lam (k < n, no tie): the midpoint of the interval of
    :func:`lam_interval_for_support`. There the threshold lies halfway between p_(k) and
    p_(k+1), so with t = (p_(k) + p_(k+1)) / 2

        w_i = b * (p_i - t) / sum_{j in top k} (p_j - t)   for i in the top k, else 0,
        lam = sum_{j in top k} (p_j - t) / b,   nu = -t,

    computed as p_i - t = (p_i - p_(k)) + (p_(k) - p_(k+1)) / 2 so that every weight is
    strictly positive.

    Choice of lam (k = n): lam = 2 * lam_low, so the lowest-scored sample gets half the
    average weight, b / (2n). If all scores are equal every lam > 0 gives w = b / n and
    lam = 1 is reported.

    Ties at the boundary (p_(k) = p_(k+1)): no lam gives exactly k non-zeros. Among equal
    scores the lower index wins; the returned weights solve the problem restricted to
    those k samples (with the k = n rule above applied to them), ``ties_at_boundary``
    counts the tied samples left out, a TieWarning is emitted and the status is
    OPTIMAL_RESTRICTED. Such weights are NOT optimal for the full problem at that lam:
    the left-out tied samples would receive weight, which the certificate's
    dual_feasibility residual shows.

    Parameters
    ----------
    p : array_like, shape (n,)
        Scores, finite floats.
    k : int
        Number of non-zero weights, 1 <= k <= n.
    budget : float, optional
        Total weight b > 0; n when None.
    tol : float, default 1e-9
        Certificate tolerance for the OPTIMAL status.

    Returns
    -------
    Solution
        method "exact_k:midpoint", "exact_k:all" (k = n) or "exact_k:restricted" (tie);
        extras["top_k"] contains the selected indices by descending score.
    """
    started = time.perf_counter()
    p = check_scores(p, "p", ndim=1)
    n = p.shape[0]
    k = check_k(k, n)
    b = check_budget(budget, n)

    order = _top_k_order(p, min(k + 1, n))
    top = order[:k]
    kth = float(p[top[-1]])
    gaps_to_kth = p[top] - kth  # >= 0 exactly, since rounding is monotone
    w = np.zeros(n)
    ties = 0

    gap = float(kth - p[order[k]]) if k < n else 0.0
    if k < n and gap > 0.0:
        shifted = 2.0 * gaps_to_kth + gap  # = 2 (p_i - t) > 0
        total = float(np.sum(shifted))
        w[top] = b * (shifted / total)
        lam = total / (2.0 * b)
        nu = -(0.5 * kth + 0.5 * float(p[order[k]]))
        method, restricted = "exact_k:midpoint", False
    else:
        spread = float(np.sum(gaps_to_kth))
        if spread > 0.0:
            lam = 2.0 * spread / b
            w[top] = 0.5 * b * (gaps_to_kth / spread + 1.0 / k)
        else:
            lam = 1.0
            w[top] = b / k
        nu = lam * b / (2.0 * k) - kth if spread > 0.0 else lam * b / k - kth
        restricted = k < n
        method = "exact_k:restricted" if restricted else "exact_k:all"
        if restricted:
            ties = int(np.count_nonzero(p == kth)) - int(np.count_nonzero(p[top] == kth))
            warnings.warn(
                f"solve_exact_k: {ties} sample(s) outside the top k={k} share the k-th "
                f"largest score {kth!r}, so no lam gives exactly k non-zero weights; the "
                f"lower indices were kept and the weights solve the problem restricted to "
                f"them (not optimal for the full problem).",
                TieWarning,
                stacklevel=2,
            )

    return _finish(
        w, nu, p, lam, b, method, 1, started, tol,
        ties=ties, restricted=restricted, extras={"top_k": top},
    )


__all__ = [
    "DEFAULT_TOL",
    "first_order_objective",
    "lam_interval_for_support",
    "solve_exact_k",
    "solve_first_order",
]
