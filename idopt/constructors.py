"""Build the weighting problem from per-sample gradients, a target gradient and target curvature.

One weighted step of plain SGD on the source loss (1/c) sum_i w_i loss_i moves the
parameters by theta' - theta = -(eta/c) G_S w, where the column i of G_S (d x n) is the gradient
of loss_i and c is the pool size. A second-order Taylor expansion of the target loss gives

    L_T(theta') - L_T(theta) ~= -(eta/c) g_T^T G_S w + (1/2) (eta/c)^2 w^T G_S^T H_T G_S w

with g_T = grad L_T(theta) (d,) and H_T = Hessian of L_T at theta (d x d). Dividing by eta/c,
minimizing the predicted change is minimizing -p^T w + (eta/2c) w^T Q w with

    p = G_S^T g_T   (n,),   Q = G_S^T H_T G_S   (n x n),

the objective of :class:`idopt.problem.WeightingProblem` with lam = 0. The predicted change
of the target loss is delta_pred(w) = -(eta/c) p^T w + (1/2) (eta/c)^2 w^T Q w (unit of the
loss), which :func:`predicted_loss_change` evaluates. Other optimizers enter through a
:class:`idopt.optimizers.StepModel`: G_S becomes D = scale * G_S and g_T becomes
g_T - eta H_T b0 (see ``idopt.optimizers``).
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from idopt.errors import InvalidInputError
from idopt.optimizers import HessianVectorProduct, StepModel
from idopt.problem import WeightingProblem, _check_eta, _check_symmetric
from idopt.validation import as_float_array, check_finite

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 256


def _check_gradients(G_S, g_T) -> tuple[np.ndarray, np.ndarray]:
    G = as_float_array(G_S, "G_S", ndim=2)
    if G.shape[0] == 0 or G.shape[1] == 0:
        raise InvalidInputError(
            f"G_S must have shape (d, n) with d >= 1 parameters and n >= 1 samples; got {G.shape}"
        )
    check_finite(G, "G_S")
    g = as_float_array(g_T, "g_T", ndim=(1, 2))
    if g.shape[0] != G.shape[0]:
        raise InvalidInputError(
            f"g_T must have shape (d,) or (d, m) with d = {G.shape[0]} (the rows of G_S); got {g.shape}"
        )
    if g.ndim == 2 and g.shape[1] == 0:
        raise InvalidInputError("g_T has no target columns (shape (d, 0)); pass at least one column")
    check_finite(g, "g_T")
    return G, g


def _check_curvature(H_T, hvp, d: int) -> np.ndarray | None:
    if H_T is not None and hvp is not None:
        raise InvalidInputError("pass either H_T (a dense (d, d) Hessian) or hvp (a callable), not both")
    if hvp is not None and not callable(hvp):
        raise InvalidInputError(f"hvp must be a callable returning H_T V for a (d, k) array V; got {type(hvp).__name__}")
    if H_T is None:
        return None
    H = as_float_array(H_T, "H_T", ndim=2)
    if H.shape != (d, d):
        raise InvalidInputError(f"H_T must have shape (d, d) = ({d}, {d}) to match G_S; got {H.shape}")
    check_finite(H, "H_T")
    _check_symmetric(H, "H_T")
    return H


def _symmetrize(Q: np.ndarray) -> np.ndarray:
    """Return (Q + Q^T)/2, logging a warning when Q is far from symmetric (a suspect hvp)."""
    scale = max(float(np.max(np.abs(Q))), 1e-300)
    asymmetry = float(np.max(np.abs(Q - Q.T)))
    if asymmetry > 1e-6 * scale:
        logger.warning(
            "Q = D^T H_T D is not symmetric: max |Q - Q^T| = %.3g, max |Q| = %.3g; check that hvp returns "
            "H_T V for a symmetric H_T. Using (Q + Q^T)/2",
            asymmetry,
            scale,
        )
    return 0.5 * (Q + Q.T)


def dense_curvature_from_hvp(D: np.ndarray, hvp: HessianVectorProduct, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Compute Q = D^T (H_T D) (n x n) with Hessian-vector products on column blocks of D.

    Parameters
    ----------
    D : (d, n) float64
        Step directions of the samples (G_S for plain SGD).
    hvp : callable
        ``hvp(V)`` returns H_T V as an array_like of shape (d, k) for a float64 numpy array V
        of shape (d, k), k <= block_size. A torch-based callable converts V itself.
    block_size : int
        Columns per hvp call.

    Returns
    -------
    (n, n) float64
        The symmetrized Q. Memory: 8 n^2 bytes for Q plus two (d, block_size) blocks at a time;
        ceil(n / block_size) hvp calls.
    """
    d, n = D.shape
    Q = np.empty((n, n))
    num_blocks = -(-n // block_size)
    logger.info("Building a dense Q (%d x %d, %.3g MB) from %d hvp calls", n, n, 8e-6 * n * n, num_blocks)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = np.ascontiguousarray(D[:, start:stop])
        product = np.asarray(hvp(block), dtype=np.float64)
        if product.shape != (d, stop - start):
            raise InvalidInputError(
                f"hvp must return an array of shape (d, k) = ({d}, {stop - start}) for a ({d}, {stop - start}) "
                f"input; got {product.shape}"
            )
        check_finite(product, f"hvp output for columns {start}:{stop}")
        Q[:, start:stop] = D.T @ product
    return _symmetrize(Q)


def problem_from_gradients(
    G_S,
    g_T,
    *,
    lam,
    eta=0.0,
    H_T=None,
    hvp: HessianVectorProduct | None = None,
    budget=None,
    c=None,
    factored: bool = True,
    step: StepModel | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_psd: bool = True,
) -> WeightingProblem:
    """Build the weighting problem p = D^T (g_T - eta H_T b0), Q = D^T H_T D from gradients.

    With the default ``step`` (plain SGD) D = G_S and b0 = 0, so p = G_S^T g_T and
    Q = G_S^T H_T G_S. The problem is

        minimize  -p^T w + (eta/2c) w^T Q w + (lam/2) ||w||^2   s.t. w >= 0, 1^T w = b

    and, for lam = 0, (eta/c) times its objective is the second-order prediction of the change
    of the target loss minus the w-independent term ``step.baseline_change``.

    Parameters
    ----------
    G_S : (d, n) float64
        Per-sample gradients of the per-sample source losses, one column per pool sample
        (d parameters).
    g_T : (d,) or (d, m) float64
        Gradient of the target loss, or one column for each of m targets sharing H_T.
    lam : float
        l2 regularization weight >= 0.
    eta : float
        Learning rate >= 0 of the modeled step; 0 gives a first-order problem.
    H_T : (d, d) float64, optional
        Symmetric target Hessian (may be indefinite; then lam must make (eta/c) Q + lam I
        positive definite, or pass ``check_psd=False``).
    hvp : callable, optional
        ``hvp(V)`` returns H_T V for a (d, k) float64 array V, in place of H_T.
    budget : float, optional
        b = 1^T w; default n.
    c : float, optional
        Pool size dividing the learning rate; default n.
    factored : bool
        With H_T, return Q in factored form A = D (d x n), H = H_T, never forming n x n.
        False forms the dense Q = D^T H_T D (8 n^2 bytes). Ignored with hvp, which always
        gives a dense Q.
    step : StepModel, optional
        Optimizer step model from ``idopt.optimizers``; default plain SGD.
    block_size : int
        Columns of D per hvp call (memory 2 * 8 * d * block_size bytes per call).
    check_psd : bool
        Passed to :meth:`WeightingProblem.create`.

    Returns
    -------
    WeightingProblem
        p has shape (n,) or (n, m). Without H_T and hvp, Q is None and the problem is first
        order; the shift -eta H_T b0 is then dropped as well.

    Raises
    ------
    InvalidInputError
        For non-float or non-finite arrays, mismatched shapes, both H_T and hvp, an
        asymmetric H_T, an hvp output of the wrong shape, or any check of
        :meth:`WeightingProblem.create`.
    """
    G, g = _check_gradients(G_S, g_T)
    d = G.shape[0]
    H = _check_curvature(H_T, hvp, d)
    eta_value = _check_eta(eta)
    if not isinstance(factored, (bool, np.bool_)):
        raise InvalidInputError(f"factored must be True or False, got {factored!r}")
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise InvalidInputError(f"block_size must be an integer >= 1 (columns per hvp call), got {block_size!r}")
    if step is None:
        step = StepModel.identity()
    elif not isinstance(step, StepModel):
        raise InvalidInputError(
            f"step must be an idopt.optimizers.StepModel (from sgd_step_model or adam_step_model), got {type(step).__name__}"
        )

    D = step.directions(G)
    shifted = step.shifted_target_gradient(g, eta_value, H_T=H, hvp=hvp)
    p = D.T @ shifted

    if H is not None and factored:
        return WeightingProblem.create(
            p, lam, eta=eta_value, c=c, budget=budget, A=D, H=H, check_psd=check_psd
        )
    Q = None
    if H is not None:
        Q = _symmetrize(D.T @ (H @ D))
    elif hvp is not None:
        Q = dense_curvature_from_hvp(D, hvp, int(block_size))
    return WeightingProblem.create(p, lam, eta=eta_value, c=c, budget=budget, Q=Q, check_psd=check_psd)


def predicted_loss_change(problem: WeightingProblem, w) -> float | np.ndarray:
    """Return delta_pred(w) = -(eta/c) p^T w + (1/2) (eta/c)^2 w^T Q w, the modeled target-loss change.

    Add ``step.baseline_change(...)`` for optimizers with momentum or weight decay. lam is not
    part of the prediction (it regularizes the weights, not the loss).

    Parameters
    ----------
    problem : WeightingProblem
    w : (n,) float64
        Sample weights.

    Returns
    -------
    float or (m,) float64
        One value per target column of p, in the unit of the target loss.
    """
    weights = as_float_array(w, "w", ndim=1)
    if weights.shape != (problem.n,):
        raise InvalidInputError(f"w must have shape (n,) = ({problem.n},) to match the problem; got {weights.shape}")
    check_finite(weights, "w")
    ratio = problem.curvature
    linear = -ratio * (weights @ problem.p)
    if not problem.has_quadratic:
        return float(linear) if problem.p.ndim == 1 else linear
    quadratic = 0.5 * ratio**2 * float(weights @ problem.quad_matvec(weights))
    result = linear + quadratic
    return float(result) if problem.p.ndim == 1 else result
