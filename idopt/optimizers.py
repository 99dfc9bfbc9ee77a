"""Affine models of one optimizer step, so that optimizer-aware selection keeps the problem form.

Every optimizer handled here takes a step that is affine in the weights w of the training
samples. With per-sample gradients G_S (d x n), pool size c and learning rate eta, the
gradient of the weighted source loss (1/c) sum_i w_i loss_i is g_w = (1/c) G_S w, and the step is

    theta' - theta = -eta (s * g_w + b0) = -(eta/c) D w - eta b0,   D = s * G_S

where s is a scalar or a per-coordinate scale (d,) applied to every row of G_S, and b0 (d,)
is a constant direction built from the optimizer state (momentum, weight decay). Both are
independent of w and of eta, and a :class:`StepModel` stores them.

A second-order Taylor expansion of the target loss L_T around theta, with target gradient
g_T and target Hessian H_T, gives

    L_T(theta') - L_T(theta) ~= delta_0 - (eta/c) p^T w + (1/2) (eta/c)^2 w^T Q w
    p = D^T (g_T - eta H_T b0),   Q = D^T H_T D,
    delta_0 = -eta g_T^T b0 + (1/2) eta^2 b0^T H_T b0.

The cross term eta^2 (1/c) b0^T H_T D w of the quadratic has no 1/c on b0, because b0 does
not scale with w; it is folded into p as the shift g_T -> g_T - eta H_T b0. The constant
delta_0 does not depend on w, so it does not change the selected weights;
:meth:`StepModel.baseline_change` returns it for predictions of the loss change.

This module depends on numpy only. The states are plain arrays copied from an optimizer,
one flat vector over all parameters in a fixed order.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from idopt.errors import InvalidInputError
from idopt.validation import as_float_array, check_finite

logger = logging.getLogger(__name__)

HessianVectorProduct = Callable[[np.ndarray], object]


def _check_real(value, name: str, *, low: float, high: float | None = None, high_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if high is None:
        upper_ok, upper = True, ""
    elif high_open:
        upper_ok, upper = number < high, f" and < {high}"
    else:
        upper_ok, upper = number <= high, f" and <= {high}"
    if not np.isfinite(number) or number < low or not upper_ok:
        raise InvalidInputError(f"{name} must be finite, >= {low}{upper}, got {value!r}")
    return number


def _check_vector(value, name: str, d: int | None = None) -> np.ndarray:
    array = as_float_array(value, name, ndim=1)
    if array.size == 0:
        raise InvalidInputError(f"{name} must contain at least one entry, got shape {array.shape}")
    if d is not None and array.shape != (d,):
        raise InvalidInputError(f"{name} must have shape ({d},) to match the other state vectors; got {array.shape}")
    check_finite(array, name)
    return array


@dataclass(frozen=True, eq=False)
class StepModel:
    """Affine model of one optimizer step: theta' - theta = -eta (scale * g_w + offset).

    Here g_w = (1/c) G_S w is the gradient of the weighted source loss. Build it with
    :func:`sgd_step_model` or :func:`adam_step_model`, or use :meth:`identity` for plain SGD.

    Attributes
    ----------
    scale : float or (d,) float64
        Multiplier s of the weighted gradient, the same for every sample; a vector acts per
        coordinate (one entry per parameter).
    offset : (d,) float64 or None
        Constant direction b0 (same unit as a gradient), or None for b0 = 0.
    """

    scale: float | np.ndarray = 1.0
    offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.scale, numbers.Real) and not isinstance(self.scale, (bool, np.bool_)):
            scale = float(self.scale)
            if not np.isfinite(scale):
                raise InvalidInputError(f"scale must be finite, got {self.scale!r}")
            object.__setattr__(self, "scale", scale)
        else:
            object.__setattr__(self, "scale", _check_vector(self.scale, "scale"))
        if self.offset is not None:
            d = self.scale.shape[0] if isinstance(self.scale, np.ndarray) else None
            object.__setattr__(self, "offset", _check_vector(self.offset, "offset", d))

    @classmethod
    def identity(cls) -> "StepModel":
        """Return the model of plain SGD without weight decay: scale 1, no offset."""
        return cls(1.0, None)

    @property
    def dim(self) -> int | None:
        """Number of parameters d fixed by the scale or offset vector, or None if neither fixes it."""
        if isinstance(self.scale, np.ndarray):
            return int(self.scale.shape[0])
        if self.offset is not None:
            return int(self.offset.shape[0])
        return None

    def _check_dim(self, d: int, name: str) -> None:
        if self.dim is not None and self.dim != d:
            raise InvalidInputError(
                f"{name} has {d} rows (parameters) but the optimizer state has {self.dim} entries; "
                f"flatten the parameters in the same order for both"
            )

    def directions(self, G_S: np.ndarray) -> np.ndarray:
        """Return D = scale * G_S, the (d, n) step directions of the samples.

        Parameters
        ----------
        G_S : (d, n) float64
            Per-sample gradients, one column per pool sample.

        Returns
        -------
        (d, n) float64
            G_S itself when the scale is 1, else a new array (d * n * 8 bytes).
        """
        self._check_dim(G_S.shape[0], "G_S")
        if isinstance(self.scale, np.ndarray):
            return self.scale[:, None] * G_S
        if self.scale == 1.0:
            return G_S
        return self.scale * G_S

    def _hessian_offset(self, H_T: np.ndarray | None, hvp: HessianVectorProduct | None) -> np.ndarray | None:
        """Return H_T b0 (d,), or None when b0 = 0 or no curvature is given."""
        if self.offset is None:
            return None
        if H_T is not None:
            return H_T @ self.offset
        if hvp is not None:
            product = np.asarray(hvp(self.offset[:, None].copy()), dtype=np.float64)
            d = self.offset.shape[0]
            if product.shape not in ((d, 1), (d,)):
                raise InvalidInputError(f"hvp must return an array of shape ({d}, 1) for a ({d}, 1) input; got {product.shape}")
            product = product.reshape(d)
            check_finite(product, "hvp(offset)")
            return product
        return None

    def shifted_target_gradient(self, g_T: np.ndarray, eta: float, H_T=None, hvp=None) -> np.ndarray:
        """Return g_T - eta H_T b0, the target gradient that makes p = D^T (g_T - eta H_T b0).

        Parameters
        ----------
        g_T : (d,) or (d, m) float64
            Target gradient, one column per target; all targets share H_T.
        eta : float
            Learning rate (the optimizer's lr).
        H_T : (d, d) float64, optional
            Target Hessian.
        hvp : callable, optional
            ``hvp(V)`` returns H_T V for a (d, k) array V; used when H_T is None.

        Returns
        -------
        (d,) or (d, m) float64
            g_T unchanged when b0 = 0, eta = 0 or neither H_T nor hvp is given (the first-order
            model drops every term of order eta^2, this shift included).
        """
        self._check_dim(g_T.shape[0], "g_T")
        if eta == 0:
            return g_T
        curved = self._hessian_offset(H_T, hvp)
        if curved is None:
            return g_T
        return g_T - eta * (curved if g_T.ndim == 1 else curved[:, None])

    def baseline_change(self, g_T: np.ndarray, eta: float, H_T=None, hvp=None) -> float | np.ndarray:
        """Return delta_0 = -eta g_T^T b0 + (1/2) eta^2 b0^T H_T b0, the predicted change at w = 0.

        It is the target-loss change of the step when every weight is 0 (momentum and weight
        decay only), in the unit of the loss. The quadratic part is dropped when neither H_T
        nor hvp is given.

        Returns
        -------
        float or (m,) float64
            One value per target column of g_T.
        """
        self._check_dim(g_T.shape[0], "g_T")
        if self.offset is None:
            return 0.0 if g_T.ndim == 1 else np.zeros(g_T.shape[1])
        linear = -eta * (self.offset @ g_T)
        curved = self._hessian_offset(H_T, hvp)
        quadratic = 0.0 if curved is None else 0.5 * eta**2 * float(self.offset @ curved)
        result = linear + quadratic
        return float(result) if g_T.ndim == 1 else result

    def displacement(self, G_S: np.ndarray, w: np.ndarray, eta: float, c: float) -> np.ndarray:
        """Return the modeled parameter change theta' - theta = -(eta/c) D w - eta b0, shape (d,)."""
        step = -(eta / c) * (self.directions(G_S) @ w)
        if self.offset is not None:
            step = step - eta * self.offset
        return step


@dataclass(frozen=True, eq=False)
class SGDState:
    """Hyperparameters and state of ``torch.optim.SGD`` before the step being modeled.

    Attributes
    ----------
    momentum : float
        Momentum factor mu in [0, 1].
    dampening : float
        Dampening in [0, 1] applied to the new gradient once the buffer exists.
    weight_decay : float
        L2 coefficient wd >= 0, added to the gradient as wd * theta.
    nesterov : bool
        Nesterov momentum (needs momentum > 0 and dampening 0, as in torch).
    momentum_buffer : (d,) float64 or None
        Buffer m after the previous steps; None before the first step with momentum.
    params : (d,) float64 or None
        Parameters theta before the step; required when weight_decay > 0.
    """

    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    momentum_buffer: np.ndarray | None = None
    params: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "momentum", _check_real(self.momentum, "momentum", low=0.0, high=1.0))
        object.__setattr__(self, "dampening", _check_real(self.dampening, "dampening", low=0.0, high=1.0))
        object.__setattr__(self, "weight_decay", _check_real(self.weight_decay, "weight_decay", low=0.0))
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise InvalidInputError(f"nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise InvalidInputError(
                f"nesterov=True needs momentum > 0 and dampening = 0 (as torch.optim.SGD); "
                f"got momentum={self.momentum}, dampening={self.dampening}"
            )
        d = None
        if self.params is not None:
            object.__setattr__(self, "params", _check_vector(self.params, "params"))
            d = self.params.shape[0]
        if self.momentum_buffer is not None:
            object.__setattr__(self, "momentum_buffer", _check_vector(self.momentum_buffer, "momentum_buffer", d))
        if self.weight_decay > 0 and self.params is None:
            raise InvalidInputError(
                f"params (theta before the step) is required when weight_decay = {self.weight_decay} > 0"
            )


def sgd_step_model(state: SGDState | None = None) -> StepModel:
    """Model the next step of ``torch.optim.SGD`` (maximize=False) as an affine map of w.

    torch.optim.SGD (checked against torch 2.13 ``_single_tensor_sgd``) adds weight decay to
    the gradient, g = g_w + wd theta, then, with momentum mu > 0, sets the buffer to
    m' = g on the first step and m' = mu m + (1 - dampening) g afterwards, and steps along m'
    (or along g + mu m' with Nesterov). In the form theta' - theta = -eta (s g_w + b0):

        mu = 0:                    s = 1,               b0 = wd theta
        first step (m is None):    s = k,               b0 = k wd theta,      k = 1 + mu if nesterov else 1
        later steps:               s = 1 - dampening,   b0 = mu m + s wd theta
        later steps, nesterov:     s = 1 + mu,          b0 = s wd theta + mu^2 m

    Parameters
    ----------
    state : SGDState, optional
        Hyperparameters and state; None means plain SGD (s = 1, b0 = 0).

    Returns
    -------
    StepModel
    """
    if state is None:
        return StepModel.identity()
    mu, wd = state.momentum, state.weight_decay
    decay = None if wd == 0 else wd * state.params
    first_step = mu == 0 or state.momentum_buffer is None
    if first_step:
        scale = 1.0 + mu if state.nesterov else 1.0
        offset = None if decay is None else scale * decay
        return StepModel(scale, offset)
    if state.nesterov:
        scale = 1.0 + mu
        offset = mu**2 * state.momentum_buffer
    else:
        scale = 1.0 - state.dampening
        offset = mu * state.momentum_buffer
    if decay is not None:
        offset = offset + scale * decay
    return StepModel(scale, offset)


@dataclass(frozen=True, eq=False)
class AdamState:
    """Hyperparameters and state of ``torch.optim.Adam`` / ``AdamW`` before the step being modeled.

    Attributes
    ----------
    exp_avg : (d,) float64
        First moment m after ``step`` steps (torch ``state['exp_avg']``).
    exp_avg_sq : (d,) float64
        Second moment v after ``step`` steps (torch ``state['exp_avg_sq']``), entries >= 0.
    step : int
        Number s of steps already taken (torch ``state['step']`` before the call). The modeled
        step is number t = s + 1.
    betas : (float, float)
        (beta1, beta2), each in [0, 1).
    eps : float
        Term added to the denominator, > 0.
    weight_decay : float
        Weight decay coefficient wd >= 0.
    decoupled_weight_decay : bool
        False for Adam (wd theta added to the gradient, an L2 penalty), True for AdamW
        (theta multiplied by 1 - eta wd before the Adam update).
    params : (d,) float64 or None
        Parameters theta before the step; required when weight_decay > 0.
    """

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    params: np.ndarray | None = None

    def __post_init__(self) -> None:
        exp_avg = _check_vector(self.exp_avg, "exp_avg")
        d = exp_avg.shape[0]
        exp_avg_sq = _check_vector(self.exp_avg_sq, "exp_avg_sq", d)
        if np.any(exp_avg_sq < 0):
            raise InvalidInputError(
                f"exp_avg_sq must be >= 0 (a running mean of squared gradients); its minimum is {exp_avg_sq.min():.6g}"
            )
        object.__setattr__(self, "exp_avg", exp_avg)
        object.__setattr__(self, "exp_avg_sq", exp_avg_sq)

        if isinstance(self.step, (bool, np.bool_)) or not isinstance(self.step, numbers.Integral) or self.step < 0:
            raise InvalidInputError(f"step must be an integer >= 0 (steps already taken), got {self.step!r}")
        object.__setattr__(self, "step", int(self.step))
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise InvalidInputError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        beta1 = _check_real(self.betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
        beta2 = _check_real(self.betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
        object.__setattr__(self, "betas", (beta1, beta2))

        eps = _check_real(self.eps, "eps", low=0.0)
        if eps == 0:
            raise InvalidInputError("eps must be > 0; with eps = 0 a zero second moment divides by zero")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "weight_decay", _check_real(self.weight_decay, "weight_decay", low=0.0))
        if not isinstance(self.decoupled_weight_decay, (bool, np.bool_)):
            raise InvalidInputError(f"decoupled_weight_decay must be True or False, got {self.decoupled_weight_decay!r}")

        if self.params is not None:
            object.__setattr__(self, "params", _check_vector(self.params, "params", d))
        if self.weight_decay > 0 and self.params is None:
            raise InvalidInputError(
                f"params (theta before the step) is required when weight_decay = {self.weight_decay} > 0"
            )

    @property
    def dim(self) -> int:
        """Number of parameters d."""
        return int(self.exp_avg.shape[0])

    def full_gradient(self, g_w: np.ndarray) -> np.ndarray:
        """Return the gradient Adam feeds into its moments: g_w + wd theta for Adam, g_w for AdamW."""
        if self.weight_decay > 0 and not self.decoupled_weight_decay:
            return g_w + self.weight_decay * self.params
        return g_w

    def next_exp_avg_sq(self, g_w) -> np.ndarray:
        """Return v' = beta2 v + (1 - beta2) g^2, the exact second moment of the next step.

        Parameters
        ----------
        g_w : (d,) float64
            Gradient of the weighted source loss, (1/c) G_S w; weight decay is added here as
            Adam does (g = g_w + wd theta unless decoupled).

        Returns
        -------
        (d,) float64
            Pass it as ``exp_avg_sq_next`` to :func:`adam_step_model` to model the step of that
            one w exactly.
        """
        grad = self.full_gradient(_check_vector(g_w, "g_w", self.dim))
        beta2 = self.betas[1]
        return beta2 * self.exp_avg_sq + (1.0 - beta2) * grad * grad


def adam_step_model(state: AdamState, *, exp_avg_sq_next=None) -> StepModel:
    """Model the next step of ``torch.optim.Adam`` or ``AdamW`` (amsgrad=False, maximize=False).

    The step t = s + 1 (s = ``state.step``) of torch 2.13 ``_single_tensor_adam`` increments the
    step count first, then, with g = g_w + wd theta (Adam) or g = g_w (AdamW),

        m' = beta1 m + (1 - beta1) g,   v' = beta2 v + (1 - beta2) g^2
        theta' = theta (1 - eta wd [AdamW only]) - eta m' / ((1 - beta1^t) (sqrt(v' / (1 - beta2^t)) + eps))

    so both bias corrections use t = s + 1. With the denominator
    r = (1 - beta1^t) (sqrt(v_hat) + eps) the step is -eta (a * g_w + b0) with

        a  = (1 - beta1) / r
        b0 = beta1 m / r  +  (1 - beta1) wd theta / r   [Adam]
        b0 = beta1 m / r  +  wd theta                   [AdamW]

    Parameters
    ----------
    state : AdamState
        Moments, step count and hyperparameters before the step.
    exp_avg_sq_next : (d,) float64, optional
        The exact v' of the step (see :meth:`AdamState.next_exp_avg_sq`), with
        v_hat = v' / (1 - beta2^t); the model is then exact for the w that produced it.
        When omitted, the second moment is frozen at the state's own bias-corrected estimate
        v_hat = v / (1 - beta2^s), which does not depend on w. It equals v' / (1 - beta2^t)
        exactly when the new squared gradient equals that estimate, because
        (beta2 v + (1 - beta2) v_hat) / (1 - beta2^t) = v_hat. Freezing v is an approximation:
        the true v' moves with w, so the frozen model's step direction has a relative error of
        about |sqrt(v_hat / v'_hat) - 1| per coordinate, an O(eta) error in the loss change.

    Returns
    -------
    StepModel

    Raises
    ------
    InvalidInputError
        If ``exp_avg_sq_next`` is omitted while ``state.step`` is 0 (no second moment to
        freeze yet), or has the wrong shape or negative entries.
    """
    beta1, beta2 = state.betas
    t = state.step + 1
    if exp_avg_sq_next is None:
        if state.step == 0:
            raise InvalidInputError(
                "adam_step_model needs exp_avg_sq_next when state.step = 0: before the first step there is no "
                "second moment to freeze; take a warm-up step or pass the exact v' from AdamState.next_exp_avg_sq"
            )
        v_hat = state.exp_avg_sq / (1.0 - beta2**state.step)
    else:
        v_next = _check_vector(exp_avg_sq_next, "exp_avg_sq_next", state.dim)
        if np.any(v_next < 0):
            raise InvalidInputError(f"exp_avg_sq_next must be >= 0; its minimum is {v_next.min():.6g}")
        v_hat = v_next / (1.0 - beta2**t)

    denominator = (1.0 - beta1**t) * (np.sqrt(v_hat) + state.eps)
    scale = (1.0 - beta1) / denominator
    offset = beta1 * state.exp_avg / denominator
    if state.weight_decay > 0:
        if state.decoupled_weight_decay:
            offset = offset + state.weight_decay * state.params
        else:
            offset = offset + scale * (state.weight_decay * state.params)
    logger.debug("Adam step model: t=%d, frozen second moment=%s", t, exp_avg_sq_next is None)
    return StepModel(scale, offset)
