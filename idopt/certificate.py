"""Solver-independent optimality certificate for problems over the scaled simplex.

Every weighting problem of idopt has the form  minimize_w F(w)  s.t.  w >= 0, 1^T w = b
with F convex and differentiable. Its KKT conditions, with multiplier nu for the
equality and mu (n,) for w >= 0, are

    grad F(w) - nu * 1 - mu = 0     (stationarity)
    w >= 0,  1^T w = b              (primal feasibility)
    mu >= 0                         (dual feasibility)
    mu_i * w_i = 0                  (complementarity)

The certificate below is computed from w and grad F(w) only, so any backend (closed
form, active set, OSQP, CVXPY) can be checked the same way without trusting its
multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from idopt.errors import InvalidInputError
from idopt.validation import as_float_array, check_budget, check_finite, check_shape


@dataclass(frozen=True)
class KKTCertificate:
    """Relative KKT residuals of a candidate point; all entries are >= 0 and 0 at the optimum.

    Attributes
    ----------
    stationarity : float
        max_{i in S} |grad_i - nu| / g_scale, where S is the support. On the support
        complementarity forces mu_i = 0, so the gradient must equal nu there.
    primal_feasibility : float
        max(|1^T w - b|, max_i max(-w_i, 0)) / b.
    dual_feasibility : float
        max_{i not in S} max(-mu_i, 0) / g_scale with mu = grad - nu.
    complementarity : float
        max_i |mu_i| * max(w_i, 0) / (g_scale * max_j w_j), the weight-scaled violation
        of mu_i * w_i = 0. Unlike ``stationarity`` it stays small for entries with tiny
        positive weights, as iterative solvers leave them.
    nu : float
        The estimated multiplier of 1^T w = b, in the unit of the gradient.
    grad_scale : float
        The scale g_scale that the gradient residuals were divided by.
    support_size : int
        |S|.
    """

    stationarity: float
    primal_feasibility: float
    dual_feasibility: float
    complementarity: float
    nu: float
    grad_scale: float
    support_size: int

    @property
    def max_residual(self) -> float:
        """The largest of the four relative residuals."""
        return max(
            self.stationarity,
            self.primal_feasibility,
            self.dual_feasibility,
            self.complementarity,
        )

    def passes(self, tol: float = 1e-9) -> bool:
        """Check that every relative residual is <= ``tol``."""
        return self.max_residual <= tol


def kkt_certificate(w, grad, budget=None, *, grad_scale=None, support_tol: float = 0.0) -> KKTCertificate:
    """Compute the relative KKT residuals of ``w`` for minimize F(w) over the scaled simplex.

    The multipliers are estimated from w and grad only:

        S  = {i : w_i > support_tol * max_j w_j}          (the support)
        nu = mean_{i in S} grad_i                          (grad_i = nu on S at the optimum)
        mu = grad - nu                                     (so stationarity is met off S)

    If S is empty (no positive weight), nu = min_i grad_i, so that mu >= 0, and the
    failure shows in ``primal_feasibility``.

    Scaling ("relative"): the gradient residuals are divided by g_scale, which is
    ``grad_scale`` when given and max_i |grad_i| otherwise (1 when grad is zero). Pass as
    ``grad_scale`` the largest magnitude of the terms summed into the gradient
    (e.g. max(max|p|, lam * max w) for grad = -p + lam * w), because rounding errors scale
    with those terms and the gradient itself can be close to zero. Weight residuals are
    divided by the budget b.

    Parameters
    ----------
    w : array_like, shape (n,)
        Candidate weights (dimensionless).
    grad : array_like, shape (n,)
        Gradient of the objective at w, grad F(w).
    budget : float, optional
        The budget b > 0; n when None.
    grad_scale : float, optional
        Positive scale for the gradient residuals, see above.
    support_tol : float, default 0.0
        Weights at or below support_tol * max(w) are treated as zero when choosing S.
        Exact solvers use 0; iterative solvers can pass their accuracy (e.g. 1e-8).

    Returns
    -------
    KKTCertificate
        The residuals and the estimated nu.

    Raises
    ------
    InvalidInputError
        If w or grad is not a finite 1-D float array, their shapes differ, or the budget,
        grad_scale or support_tol is invalid.
    """
    w = as_float_array(w, "w", ndim=1)
    grad = as_float_array(grad, "grad", ndim=1)
    check_shape(grad, "grad", w.shape)
    if w.shape[0] == 0:
        raise InvalidInputError("w must contain at least one sample, got shape (0,).")
    check_finite(w, "w")
    check_finite(grad, "grad")
    b = check_budget(budget, w.shape[0])
    if not (np.isfinite(support_tol) and 0.0 <= support_tol < 1.0):
        raise InvalidInputError(f"support_tol must be in [0, 1), got {support_tol!r}.")

    if grad_scale is None:
        g_scale = float(np.max(np.abs(grad)))
    else:
        g_scale = float(grad_scale)
        if not (np.isfinite(g_scale) and g_scale >= 0.0):
            raise InvalidInputError(f"grad_scale must be finite and >= 0, got {grad_scale!r}.")
    if g_scale == 0.0:
        g_scale = 1.0

    # Index arrays over the support keep every full-length pass cheap: no length-n float
    # temporaries are allocated, which matters at n = 10^7.
    w_max = float(np.max(w))
    support = w > support_tol * w_max if w_max > 0 else np.zeros(w.shape, dtype=bool)
    support_index = np.flatnonzero(support)
    support_size = int(support_index.size)

    if support_size > 0:
        grad_support = grad[support_index]
        nu = float(np.mean(grad_support))
        mu_support = grad_support - nu
        stationarity = float(np.max(np.abs(mu_support))) / g_scale
    else:
        nu = float(np.min(grad))
        mu_support = np.zeros(0)
        stationarity = 0.0

    if support_size < w.shape[0]:
        off_min = float(np.minimum.reduce(grad, where=~support, initial=np.inf))
        dual = max(0.0, nu - off_min) / g_scale
    else:
        dual = 0.0

    if w_max > 0:
        # mu_i * max(w_i, 0) is non-zero only where w_i > 0: the support, plus the weights
        # at or below support_tol * max(w) when support_tol > 0.
        complementarity = float(np.max(np.abs(mu_support) * w[support_index])) if support_size else 0.0
        if support_tol > 0:
            small = np.flatnonzero((w > 0) & ~support)
            if small.size:
                complementarity = max(complementarity, float(np.max(np.abs(grad[small] - nu) * w[small])))
        complementarity /= g_scale * w_max
    else:
        complementarity = 0.0
    primal = max(abs(float(np.sum(w)) - b), float(max(0.0, -np.min(w)))) / b

    return KKTCertificate(
        stationarity=stationarity,
        primal_feasibility=primal,
        dual_feasibility=dual,
        complementarity=complementarity,
        nu=nu,
        grad_scale=g_scale,
        support_size=support_size,
    )
