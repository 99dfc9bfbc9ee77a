"""Weights that are robust to small parameter changes, for a linear model with squared loss.

Model and notation (d parameters, n source samples, m target samples)::

    L(theta; D, w) = sum_i w_i (<x_i, theta> - y_i)^2          (a sum, not a mean)
    g_i = 2 (<x_i, theta> - y_i) x_i,   H_i = 2 x_i x_i^T      (H_i does not depend on theta)
    G_S = [g_1 ... g_n]  (d, n),  g_T = sum_T g_j,  H_T = sum_T H_j,
    H_w = sum_S w_i H_i,  g_w = G_S w

The weighting objective is the loss change of one weighted gradient step divided by eta::

    f(w; theta) = -p^T w + (eta/2) w^T Q w,   p = G_S^T g_T,  Q = G_S^T H_T G_S

which equals (L_T(theta - eta G_S w) - L_T(theta)) / eta exactly for this model. Note the
factor eta/2: the package's :class:`~idopt.problem.WeightingProblem` uses eta/(2c), so f is
that problem with c = 1 (see :meth:`RobustProblem.plain_problem`).

Identity, exact for every w (any sign), theta and delta::

    f(w; theta + delta) = f(w; theta) + a_w^T delta + delta^T B_w delta
    a_w = -H_w g_T - H_T g_w + eta H_w H_T g_w                   (d,)
    B_w = -H_T H_w + (eta/2) H_w H_T H_w                          (d, d)

It follows because g_i(theta + delta) = g_i + H_i delta and the Hessians are constant.
B_w is not symmetric in general. It enters only through the quadratic form
delta^T B_w delta, which equals delta^T S_w delta with S_w = (B_w + B_w^T) / 2, so the
identity is exact as written, with no symmetrisation. The trust-region solver and the
one-step term use S_w.

Robust weights solve min_w max_{||delta|| <= rho} f(w; theta + delta). One ascent step of
length rho from delta = 0 along a_w (delta = rho a_w / ||a_w||) gives the regulariser::

    R(w) = f(w; theta) + rho ||a_w|| + rho^2 (a_w^T B_w a_w) / ||a_w||^2 + (lam/2) ||w||^2

minimised subject to w >= 0 and 1^T w = b (b = n by default). R is not convex when
eta > 0, because a_w is quadratic in w. With eta = 0 and without the rho^2 term it is a
second-order cone program, solved with CVXPY (``method="socp"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, optimize

from idopt.errors import InvalidInputError, SolverError
from idopt.problem import WeightingProblem
from idopt.validation import as_float_array, check_budget, check_finite, check_lam

logger = logging.getLogger(__name__)

# Relative size of sum(w) - b and of negative entries accepted in a returned SLSQP point.
FEASIBILITY_RTOL = 1e-8


def _check_real(value, name: str, meaning: str) -> float:
    """Return ``value`` as a float after checking that it is a finite real number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a real number >= 0 ({meaning}); got {value!r}")
    number = float(value)
    if not np.isfinite(number) or number < 0:
        raise InvalidInputError(f"{name} must be finite and >= 0 ({meaning}); got {value!r}")
    return number


def _check_matrix(value, name: str, columns: int | None = None) -> np.ndarray:
    array = as_float_array(value, name, ndim=2)
    if array.shape[0] == 0:
        raise InvalidInputError(f"{name} has no rows (shape {array.shape}); pass at least one sample")
    if columns is not None and array.shape[1] != columns:
        raise InvalidInputError(
            f"{name} must have {columns} columns (one per parameter, as in x_source); got shape {array.shape}"
        )
    check_finite(array, name)
    return array


def _check_vector(value, name: str, length: int, meaning: str) -> np.ndarray:
    array = as_float_array(value, name, ndim=1)
    if array.shape != (length,):
        raise InvalidInputError(f"{name} must have shape ({length},) ({meaning}); got shape {array.shape}")
    check_finite(array, name)
    return array


@dataclass(frozen=True, eq=False)
class LinearSquaredLoss:
    """Source and target data of a linear model with squared loss, at parameters theta.

    Build it with :meth:`create`, which checks the inputs.

    Attributes
    ----------
    x_source : (n, d) float64
        Source inputs, one row per sample.
    y_source : (n,) float64
        Source labels.
    x_target : (m, d) float64
        Target inputs.
    y_target : (m,) float64
        Target labels.
    theta : (d,) float64
        Parameters at which gradients and the objective are taken.
    """

    x_source: np.ndarray
    y_source: np.ndarray
    x_target: np.ndarray
    y_target: np.ndarray
    theta: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, x_source, y_source, x_target, y_target, theta) -> "LinearSquaredLoss":
        """Validate the arrays and build the model.

        Raises InvalidInputError naming the argument for non-float or non-finite values,
        empty arrays and shape mismatches.
        """
        xs = _check_matrix(x_source, "x_source")
        d = xs.shape[1]
        if d == 0:
            raise InvalidInputError("x_source has no columns (d = 0); the model needs at least one parameter")
        ys = _check_vector(y_source, "y_source", xs.shape[0], "one label per row of x_source")
        xt = _check_matrix(x_target, "x_target", columns=d)
        yt = _check_vector(y_target, "y_target", xt.shape[0], "one label per row of x_target")
        th = _check_vector(theta, "theta", d, "one entry per column of x_source")
        return cls(xs, ys, xt, yt, th)

    def at(self, theta) -> "LinearSquaredLoss":
        """Return the same data at other parameters theta, shape (d,)."""
        th = _check_vector(theta, "theta", self.d, "one entry per column of x_source")
        return LinearSquaredLoss(self.x_source, self.y_source, self.x_target, self.y_target, th)

    @property
    def n(self) -> int:
        """Number of source samples."""
        return int(self.x_source.shape[0])

    @property
    def d(self) -> int:
        """Number of parameters."""
        return int(self.x_source.shape[1])

    @property
    def source_residuals(self) -> np.ndarray:
        """r_i = 2 (<x_i, theta> - y_i), shape (n,), so that g_i = r_i x_i."""
        if "r" not in self._cache:
            self._cache["r"] = 2.0 * (self.x_source @ self.theta - self.y_source)
        return self._cache["r"]

    @property
    def source_gradients(self) -> np.ndarray:
        """G_S, shape (d, n): column i is g_i = 2 (<x_i, theta> - y_i) x_i."""
        if "G" not in self._cache:
            self._cache["G"] = self.x_source.T * self.source_residuals
        return self._cache["G"]

    @property
    def target_gradient(self) -> np.ndarray:
        """g_T, shape (d,): the gradient of the summed target loss."""
        if "gT" not in self._cache:
            self._cache["gT"] = self.x_target.T @ (2.0 * (self.x_target @ self.theta - self.y_target))
        return self._cache["gT"]

    @property
    def target_hessian(self) -> np.ndarray:
        """H_T = 2 sum_T x_j x_j^T, shape (d, d)."""
        if "HT" not in self._cache:
            self._cache["HT"] = 2.0 * self.x_target.T @ self.x_target
        return self._cache["HT"]

    def check_weights(self, w, name: str = "w") -> np.ndarray:
        """Return w as a float64 (n,) array after checking dtype, shape and finiteness."""
        return _check_vector(w, name, self.n, "one weight per source sample")

    def weighted_hessian(self, w) -> np.ndarray:
        """Return H_w = 2 sum_i w_i x_i x_i^T, shape (d, d)."""
        w = self.check_weights(w)
        return 2.0 * self.x_source.T @ (w[:, None] * self.x_source)

    def target_loss(self, theta=None) -> float:
        """Return L_T(theta) = sum_T (<x_j, theta> - y_j)^2 (default theta: self.theta)."""
        th = self.theta if theta is None else _check_vector(theta, "theta", self.d, "one entry per parameter")
        residual = self.x_target @ th - self.y_target
        return float(residual @ residual)


def perturbation_gradient(model: LinearSquaredLoss, w, eta) -> np.ndarray:
    """Compute a_w = -H_w g_T - H_T g_w + eta H_w H_T g_w, shape (d,).

    a_w is the gradient of delta -> f(w; theta + delta) at delta = 0.
    """
    w = model.check_weights(w)
    eta = _check_real(eta, "eta", "the learning rate")
    h_w = model.weighted_hessian(w)
    h_t = model.target_hessian
    ht_gw = h_t @ (model.source_gradients @ w)
    return -h_w @ model.target_gradient - ht_gw + eta * (h_w @ ht_gw)


def perturbation_curvature(model: LinearSquaredLoss, w, eta) -> np.ndarray:
    """Compute B_w = -H_T H_w + (eta/2) H_w H_T H_w, shape (d, d), not symmetric in general.

    delta^T B_w delta is the second-order term of f(w; theta + delta) in delta, exact
    for this model. Only the symmetric part (B_w + B_w^T)/2 affects that form.
    """
    w = model.check_weights(w)
    eta = _check_real(eta, "eta", "the learning rate")
    h_w = model.weighted_hessian(w)
    h_t = model.target_hessian
    return -h_t @ h_w + 0.5 * eta * (h_w @ h_t @ h_w)


def weighting_objective(model: LinearSquaredLoss, w, eta) -> float:
    """Compute f(w; theta) = -p^T w + (eta/2) w^T Q w with p = G_S^T g_T, Q = G_S^T H_T G_S.

    Unit: target loss per unit learning rate. Q is never formed: w^T Q w = g_w^T H_T g_w.
    """
    w = model.check_weights(w)
    eta = _check_real(eta, "eta", "the learning rate")
    g_w = model.source_gradients @ w
    return -float(model.target_gradient @ g_w) + 0.5 * eta * float(g_w @ model.target_hessian @ g_w)


def identity_sides(model: LinearSquaredLoss, w, eta, delta) -> tuple[float, float]:
    """Return both sides of f(w; theta + delta) = f(w; theta) + a_w^T delta + delta^T B_w delta.

    The left side is evaluated by recomputing gradients at theta + delta, the right side
    from a_w and B_w at theta. They agree up to rounding for every w, theta, delta, eta.
    """
    delta = _check_vector(delta, "delta", model.d, "one entry per parameter")
    left = weighting_objective(model.at(model.theta + delta), w, eta)
    right = (
        weighting_objective(model, w, eta)
        + float(perturbation_gradient(model, w, eta) @ delta)
        + float(delta @ perturbation_curvature(model, w, eta) @ delta)
    )
    return left, right


@dataclass(frozen=True)
class TrustRegionMaximum:
    """The exact maximum of a^T delta + delta^T B delta over ||delta|| <= rho.

    Attributes
    ----------
    delta : (d,) float64
        A maximiser.
    value : float
        a^T delta + delta^T B delta at the maximiser.
    multiplier : float
        mu >= 0 with (mu I - 2 S) delta = a, S = (B + B^T)/2; mu = 0 for an interior maximiser.
    hard_case : bool
        True when a is orthogonal to the top eigenspace of S and the maximiser needs a
        component along it to reach the boundary.
    """

    delta: np.ndarray
    value: float
    multiplier: float
    hard_case: bool


def maximize_trust_region(a, B, rho) -> TrustRegionMaximum:
    """Solve max_{||delta|| <= rho} a^T delta + delta^T B delta exactly, for small d.

    With S = (B + B^T)/2 = V diag(s) V^T and alpha = V^T a, a maximiser satisfies
    (mu I - 2 S) delta = a with mu >= max(0, 2 s_max) and mu (rho - ||delta||) = 0, so
    delta_j = alpha_j / (mu - 2 s_j) in the eigenbasis. On the boundary, mu is the root of
    the secular equation ||delta(mu)|| = rho on (2 s_max, inf), found by Brent's method
    (||delta(mu)|| decreases in mu). The hard case (alpha zero on the top eigenspace and
    ||delta(2 s_max)|| < rho) sets mu = 2 s_max and adds a top eigenvector to reach rho.

    Parameters
    ----------
    a : (d,) float64
        Linear term.
    B : (d, d) float64
        Quadratic term; only its symmetric part matters.
    rho : float
        Radius >= 0, in the units of delta.

    Returns
    -------
    TrustRegionMaximum
    """
    a = as_float_array(a, "a", ndim=1)
    check_finite(a, "a")
    B = as_float_array(B, "B", ndim=2)
    d = a.shape[0]
    if d == 0:
        raise InvalidInputError("a is empty; pass a vector with at least one entry")
    if B.shape != (d, d):
        raise InvalidInputError(f"B must have shape (d, d) = ({d}, {d}) to match a; got {B.shape}")
    check_finite(B, "B")
    rho = _check_real(rho, "rho", "the radius of the parameter perturbation")
    if rho == 0:
        return TrustRegionMaximum(np.zeros(d), 0.0, 0.0, False)

    S = 0.5 * (B + B.T)
    # Work in units where the radius is 1 and max(||a||_inf / rho, max |S_ij|) is 1, so that the
    # thresholds below are absolute. Scaling before the eigendecomposition keeps tiny and
    # subnormal inputs from underflowing to 0/0.
    unit = max(float(np.max(np.abs(a))) / rho, float(np.max(np.abs(S))))
    if unit == 0.0:
        return TrustRegionMaximum(np.zeros(d), 0.0, 0.0, False)
    s_unit, V = linalg.eigh(S / unit)
    alpha = (V.T @ (a / unit)) / rho
    s_max = float(s_unit[-1])
    # Eigenvalues within eig_tol of s_max form the top eigenspace, and a component of a
    # below alpha_tol on it counts as zero (the hard case).
    eig_tol = 1e-12 * d
    alpha_tol = 1e-12
    mu_low = max(0.0, 2.0 * s_max)
    top = (mu_low - 2.0 * s_unit) <= 2.0 * eig_tol
    alpha_norm = float(np.linalg.norm(alpha))

    def step(mu: float) -> np.ndarray:
        return alpha / (mu - 2.0 * s_unit)

    def finish(coefficients: np.ndarray, mu: float, hard_case: bool) -> TrustRegionMaximum:
        delta = rho * (V @ coefficients)
        value = float(a @ delta + delta @ S @ delta)
        return TrustRegionMaximum(delta, value, float(mu) * unit, hard_case)

    if np.all(np.abs(alpha[top]) <= alpha_tol):
        # delta at mu_low with the top components left out; finite in this case.
        partial = np.zeros(d)
        rest = ~top
        partial[rest] = alpha[rest] / (mu_low - 2.0 * s_unit[rest])
        partial_norm = float(np.linalg.norm(partial))
        if partial_norm <= 1.0:
            if not np.any(top):
                # s_max < 0 and the unconstrained maximiser lies inside the ball.
                return finish(partial, 0.0, False)
            # Hard case: fill the rest of the radius along one top eigenvector.
            top_index = int(np.flatnonzero(top)[-1])
            partial[top_index] = np.sqrt(max(1.0 - partial_norm * partial_norm, 0.0))
            return finish(partial, mu_low, True)

    def secular(mu: float) -> float:
        return float(np.linalg.norm(step(mu))) - 1.0

    # ||delta(mu)|| <= ||alpha|| / (mu - 2 s_max), so the upper end has ||delta|| <= 1/2.
    upper = mu_low + 2.0 * alpha_norm + 4.0 * np.finfo(float).eps
    lower = mu_low + 4.0 * np.finfo(float).eps * max(mu_low, 1.0)
    if not secular(lower) > 0:
        # Rounding hid the pole at mu_low (a nearly hard case): fill the radius along the top.
        coefficients = step(lower)
        top_index = int(np.argmax(s_unit))
        coefficients[top_index] = 0.0
        missing = np.sqrt(max(1.0 - float(coefficients @ coefficients), 0.0))
        coefficients[top_index] = missing if alpha[top_index] >= 0 else -missing
        return finish(coefficients, lower, True)
    mu = optimize.brentq(secular, lower, upper, xtol=1e-300, rtol=4 * np.finfo(float).eps)
    coefficients = step(mu)
    # Brent's method leaves ||delta|| a few ulps in mu away from 1; project onto the sphere.
    coefficients /= float(np.linalg.norm(coefficients))
    return finish(coefficients, mu, False)


def one_step_value(a, B, rho) -> float:
    """Return rho ||a|| + rho^2 (a^T B a) / ||a||^2, the value at delta = rho a / ||a||.

    When a = 0 the ascent direction is undefined, and the step is taken as delta = 0
    (value 0). The value never exceeds :func:`maximize_trust_region`'s, because this
    delta is feasible.
    """
    a = as_float_array(a, "a", ndim=1)
    B = as_float_array(B, "B", ndim=2)
    if B.shape != (a.shape[0], a.shape[0]):
        raise InvalidInputError(f"B must have shape (d, d) = ({a.shape[0]}, {a.shape[0]}) to match a; got {B.shape}")
    check_finite(a, "a")
    check_finite(B, "B")
    rho = _check_real(rho, "rho", "the radius of the parameter perturbation")
    largest = float(np.max(np.abs(a))) if a.size else 0.0
    if largest == 0.0:
        return 0.0
    # Scaling by max |a| keeps ||a||^2 from underflowing or overflowing.
    direction = a / largest
    direction /= float(np.linalg.norm(direction))
    return rho * largest * float(np.linalg.norm(a / largest)) + rho * rho * float(direction @ B @ direction)


@dataclass(frozen=True, eq=False)
class RobustProblem:
    """The one-step robust weighting problem R(w) over {w >= 0, 1^T w = budget}.

    See the module docstring for R. Build it with :meth:`create`.

    Attributes
    ----------
    model : LinearSquaredLoss
        Data and parameters theta.
    eta : float
        Learning rate of the weighted step, >= 0.
    rho : float
        Radius of the parameter perturbation, >= 0 (units of theta).
    lam : float
        Weight of (lam/2) ||w||^2, >= 0.
    budget : float
        b = 1^T w, default n.
    curvature_term : bool
        Include the rho^2 (a^T B a)/||a||^2 term; False gives the first-order regulariser.
    """

    model: LinearSquaredLoss
    eta: float
    rho: float
    lam: float
    budget: float
    curvature_term: bool

    @classmethod
    def create(cls, model, *, eta, rho, lam=0.0, budget=None, curvature_term=True) -> "RobustProblem":
        """Validate the settings and build the problem; raises InvalidInputError naming the argument."""
        if not isinstance(model, LinearSquaredLoss):
            raise InvalidInputError(
                f"model must be a LinearSquaredLoss (build it with LinearSquaredLoss.create); got {type(model).__name__}"
            )
        if not isinstance(curvature_term, (bool, np.bool_)):
            raise InvalidInputError(f"curvature_term must be True or False; got {curvature_term!r}")
        return cls(
            model,
            _check_real(eta, "eta", "the learning rate"),
            _check_real(rho, "rho", "the radius of the parameter perturbation"),
            check_lam(lam),
            check_budget(budget, model.n),
            bool(curvature_term),
        )

    @property
    def n(self) -> int:
        """Number of source samples."""
        return self.model.n

    def plain_problem(self) -> WeightingProblem:
        """Return the package's problem equal to R at rho = 0: p = G_S^T g_T, Q, eta, c = 1.

        WeightingProblem's quadratic term is (eta/2c) w^T Q w, and f uses (eta/2), so c = 1.
        Its convexity check needs lam > 0 whenever eta > 0, because Q has rank <= d.
        """
        G = self.model.source_gradients
        p = G.T @ self.model.target_gradient
        Q = G.T @ self.model.target_hessian @ G
        Q = 0.5 * (Q + Q.T)
        return WeightingProblem.create(p, self.lam, eta=self.eta, c=1.0, budget=self.budget, Q=Q)

    def _terms(self, w: np.ndarray) -> dict:
        """Intermediate quantities shared by the objective and its gradient."""
        model = self.model
        x = model.x_source
        h_t = model.target_hessian
        g_t = model.target_gradient
        g_w = model.source_gradients @ w
        h_w = 2.0 * x.T @ (w[:, None] * x)
        ht_gw = h_t @ g_w
        a = -h_w @ g_t - ht_gw + self.eta * (h_w @ ht_gw)
        return {"g_w": g_w, "h_w": h_w, "ht_gw": ht_gw, "a": a}

    def objective(self, w) -> float:
        """Return R(w); unit: target loss per unit learning rate, like f."""
        w = self.model.check_weights(w)
        t = self._terms(w)
        g_w, a = t["g_w"], t["a"]
        value = -float(self.model.target_gradient @ g_w) + 0.5 * self.eta * float(g_w @ t["ht_gw"])
        value += 0.5 * self.lam * float(w @ w)
        norm = float(np.linalg.norm(a))
        if self.rho > 0 and norm > 0:
            value += self.rho * norm
            if self.curvature_term:
                value += self.rho**2 * self._quadratic_form(t) / norm**2
        return value

    def _quadratic_form(self, t: dict) -> float:
        """a^T B_w a = -(H_T a)^T (H_w a) + (eta/2) (H_w a)^T H_T (H_w a)."""
        h_t = self.model.target_hessian
        a = t["a"]
        hw_a = t["h_w"] @ a
        return -float((h_t @ a) @ hw_a) + 0.5 * self.eta * float(hw_a @ h_t @ hw_a)

    def gradient(self, w) -> np.ndarray:
        """Return grad R(w), shape (n,), analytic.

        With J = da/dw (d, n), column i = -H_i g_T - H_T g_i + eta (H_i H_T g_w + H_w H_T g_i):
        grad rho||a|| = rho J^T a / ||a||, and for N = a^T B_w a, D = ||a||^2,
        grad (N/D) = (grad N D - N 2 J^T a) / D^2 with
        grad N = J^T (B_w + B_w^T) a + [a^T (dB_w/dw_i) a]_i. At a = 0, where ||a|| has no
        gradient, the rho terms contribute 0, matching :meth:`objective`.
        """
        w = self.model.check_weights(w)
        model = self.model
        x = model.x_source
        G = model.source_gradients
        h_t = model.target_hessian
        g_t = model.target_gradient
        t = self._terms(w)
        grad = -(G.T @ g_t) + self.eta * (G.T @ t["ht_gw"]) + self.lam * w
        a = t["a"]
        norm = float(np.linalg.norm(a))
        if self.rho == 0 or norm == 0:
            return grad

        jacobian_t_a = self._jacobian_transpose(t, a)
        grad = grad + self.rho * jacobian_t_a / norm
        if self.curvature_term:
            h_w = t["h_w"]
            B = -h_t @ h_w + 0.5 * self.eta * (h_w @ h_t @ h_w)
            numerator = self._quadratic_form(t)
            denominator = norm * norm
            # a^T (dB/dw_i) a = -2 (x_i^T H_T a)(x_i^T a) + 2 eta (x_i^T a)(x_i^T H_T H_w a).
            x_a = x @ a
            explicit = -2.0 * (x @ (h_t @ a)) * x_a + 2.0 * self.eta * x_a * (x @ (h_t @ (h_w @ a)))
            grad_numerator = self._jacobian_transpose(t, (B + B.T) @ a) + explicit
            grad = grad + self.rho**2 * (grad_numerator * denominator - numerator * 2.0 * jacobian_t_a) / denominator**2
        return grad

    def _jacobian_transpose(self, t: dict, v: np.ndarray) -> np.ndarray:
        """Return J^T v for J = da/dw, shape (n,), without forming J.

        Uses H_i u = 2 x_i (x_i^T u) and g_i = r_i x_i.
        """
        model = self.model
        x = model.x_source
        r = model.source_residuals
        h_t = model.target_hessian
        x_v = x @ v
        result = -2.0 * x_v * (x @ model.target_gradient) - r * (x @ (h_t @ v))
        if self.eta > 0:
            result += self.eta * (2.0 * x_v * (x @ t["ht_gw"]) + r * (x @ (h_t @ (t["h_w"] @ v))))
        return result


@dataclass(frozen=True)
class RobustSolution:
    """Weights minimising R, with how they were found.

    Attributes
    ----------
    w : (n,) float64
        Weights, w >= 0 and 1^T w = budget up to rounding.
    objective : float
        R(w).
    method : str
        "slsqp" or "socp".
    starts : int
        Number of starting points tried (1 for "socp").
    converged : int
        Number of starts whose local solve reported success.
    wall_time_s : float
        Seconds spent in the solve.
    """

    w: np.ndarray
    objective: float
    method: str
    starts: int
    converged: int
    wall_time_s: float


def _starting_points(problem: RobustProblem, starts: int, seed: int) -> list[np.ndarray]:
    """Uniform weights, the plain first-order solution (when lam > 0) and random simplex points."""
    n, b = problem.n, problem.budget
    points = [np.full(n, b / n)]
    if problem.lam > 0:
        from idopt.first_order import solve_first_order

        p = problem.model.source_gradients.T @ problem.model.target_gradient
        points.append(solve_first_order(p, problem.lam, b).w)
    rng = np.random.default_rng(seed)
    while len(points) < starts:
        points.append(b * rng.dirichlet(np.ones(n)))
    return points[:starts]


def solve_robust(problem: RobustProblem, method: str = "slsqp", *, starts: int = 4, seed: int = 0,
                 max_iter: int = 500, ftol: float = 1e-12) -> RobustSolution:
    """Minimise R(w) subject to w >= 0 and 1^T w = budget.

    Parameters
    ----------
    problem : RobustProblem
    method : {"slsqp", "socp"}
        "slsqp": scipy's SLSQP with the analytic gradient from each of ``starts`` points
        (uniform, first-order solution, random points of the simplex); the lowest R wins.
        R is not convex for eta > 0, so this is a local method with restarts and gives no
        global guarantee. "socp": the convex case eta = 0 without the rho^2 term as the
        second-order cone program min -p^T w + rho ||M w|| + (lam/2)||w||^2 in CVXPY
        (Clarabel), where a_w = M w with M = -2 X_S^T diag(X_S g_T) - H_T G_S.
    starts : int
        Starting points for "slsqp", >= 1.
    seed : int
        Seed of the random starting points.
    max_iter, ftol : int, float
        SLSQP iteration limit and tolerance on the objective, which is divided by its
        scale at the uniform weights first.

    Returns
    -------
    RobustSolution

    Raises
    ------
    InvalidInputError
        For an unknown method, starts < 1, or "socp" on a problem that is not convex.
    SolverError
        When no start returns a feasible point, or CVXPY fails.
    """
    if not isinstance(problem, RobustProblem):
        raise InvalidInputError(f"problem must be a RobustProblem (RobustProblem.create); got {type(problem).__name__}")
    if method == "slsqp":
        if isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or starts < 1:
            raise InvalidInputError(f"starts must be an integer >= 1 (starting points for SLSQP); got {starts!r}")
        return _solve_slsqp(problem, int(starts), seed, max_iter, ftol)
    if method == "socp":
        return _solve_socp(problem)
    raise InvalidInputError(f"method must be 'slsqp' or 'socp'; got {method!r}")


def _solve_slsqp(problem: RobustProblem, starts: int, seed: int, max_iter: int, ftol: float) -> RobustSolution:
    start_time = time.perf_counter()
    n, b = problem.n, problem.budget
    uniform = np.full(n, b / n)
    scale = max(abs(problem.objective(uniform)), float(np.abs(problem.gradient(uniform)).max()) * b, 1e-300)
    constraint = {"type": "eq", "fun": lambda w: (np.sum(w) - b) / b, "jac": lambda w: np.full(n, 1.0 / b)}
    best_w, best_value, converged = None, np.inf, 0
    for index, w0 in enumerate(_starting_points(problem, starts, seed)):
        result = optimize.minimize(
            lambda w: problem.objective(w) / scale,
            w0,
            jac=lambda w: problem.gradient(w) / scale,
            method="SLSQP",
            bounds=[(0.0, None)] * n,
            constraints=[constraint],
            options={"maxiter": max_iter, "ftol": ftol},
        )
        w = np.maximum(result.x, 0.0)
        if abs(w.sum() - b) > FEASIBILITY_RTOL * b:
            logger.warning("SLSQP start %d returned an infeasible point (1^T w = %.6g, b = %.6g); skipped",
                           index, w.sum(), b)
            continue
        w *= b / w.sum()
        value = problem.objective(w)
        converged += int(result.success)
        if not result.success:
            logger.info("SLSQP start %d stopped without convergence: %s", index, result.message)
        if value < best_value:
            best_w, best_value = w, value
    if best_w is None:
        raise SolverError(f"SLSQP returned no feasible point from {starts} starts")
    return RobustSolution(best_w, best_value, "slsqp", starts, converged, time.perf_counter() - start_time)


def _solve_socp(problem: RobustProblem) -> RobustSolution:
    if problem.eta != 0 or (problem.curvature_term and problem.rho > 0):
        raise InvalidInputError(
            f"method 'socp' needs the convex case eta = 0 and curvature_term=False; got eta = {problem.eta}, "
            f"curvature_term = {problem.curvature_term}. Use method='slsqp' for the general problem"
        )
    try:
        import cvxpy as cp
    except ImportError as error:
        raise ImportError("method 'socp' needs cvxpy: pip install cvxpy") from error
    start_time = time.perf_counter()
    model = problem.model
    x, G = model.x_source, model.source_gradients
    p = G.T @ model.target_gradient
    # a_w = M w for eta = 0: column i is -H_i g_T - H_T g_i.
    M = -2.0 * x.T * (x @ model.target_gradient) - model.target_hessian @ G
    scale = max(float(np.abs(p).max()), problem.rho * float(np.abs(M).max()), problem.lam * problem.budget, 1e-300)
    w = cp.Variable(problem.n)
    expression = -(p / scale) @ w + (problem.rho / scale) * cp.norm(M @ w, 2)
    if problem.lam > 0:
        expression = expression + (0.5 * problem.lam / scale) * cp.sum_squares(w)
    cvx_problem = cp.Problem(cp.Minimize(expression), [w >= 0, cp.sum(w) == problem.budget])
    try:
        cvx_problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError as error:
        raise SolverError(f"CVXPY failed on the robust SOCP: {error}") from error
    if cvx_problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or w.value is None:
        raise SolverError(f"CVXPY returned status {cvx_problem.status} for the robust SOCP")
    weights = np.maximum(np.asarray(w.value, dtype=np.float64), 0.0)
    weights *= problem.budget / weights.sum()
    return RobustSolution(weights, problem.objective(weights), "socp", 1, 1, time.perf_counter() - start_time)


def grid_minimum(problem: RobustProblem, points: int) -> tuple[np.ndarray, float]:
    """Return the grid point of lowest R on {w >= 0, 1^T w = b} for n = 2 or 3, and R there.

    The grid is w = b k / (points - 1) for integer vectors k >= 0 summing to points - 1,
    so its spacing along each edge is b / (points - 1). A reference for tiny n only.
    """
    if problem.n not in (2, 3):
        raise InvalidInputError(f"grid_minimum supports n = 2 or 3 source samples; got n = {problem.n}")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
        raise InvalidInputError(f"points must be an integer >= 2 (grid points per edge); got {points!r}")
    steps = points - 1
    best_w, best_value = None, np.inf
    for i in range(steps + 1):
        rest = range(1) if problem.n == 2 else range(steps - i + 1)
        for j in rest:
            counts = [i, steps - i] if problem.n == 2 else [i, j, steps - i - j]
            w = problem.budget * np.asarray(counts, dtype=np.float64) / steps
            value = problem.objective(w)
            if value < best_value:
                best_w, best_value = w, value
    return best_w, best_value
