"""Result type shared by the weighting solvers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from idopt.certificate import KKTCertificate
from idopt.status import Status


@dataclass(frozen=True)
class Solution:
    """Weights returned by a solver, with the numbers needed to trust them.

    Attributes
    ----------
    w : numpy.ndarray, shape (n,), float64
        Sample weights, w >= 0 and sum(w) = budget up to rounding.
    nu : float
        Multiplier of 1^T w = b, defined by grad F(w) = nu on the support (unit of the
        objective gradient).
    objective : float
        F(w), the objective value at w.
    status : Status
        How the solve ended.
    iterations : int
        Iterations or passes of the backend (1 for closed forms).
    wall_time_s : float
        Wall time of the solve in seconds, input checks included.
    method : str
        Backend and variant, e.g. "projection:michelot" or "lp:argmax".
    certificate : KKTCertificate
        Relative KKT residuals of w for the full problem, computed from w and grad F(w).
    lam : float
        The l2 regularization weight lam >= 0 used.
    budget : float
        The budget b = 1^T w.
    support_size : int
        Number of samples with w_i > 0.
    ties_at_boundary : int
        Samples left out of an exact-k selection although their score equals the k-th
        largest (0 when no tie broke the selection).
    extras : dict
        Backend-specific details (free form).
    """

    w: np.ndarray
    nu: float
    objective: float
    status: Status
    iterations: int
    wall_time_s: float
    method: str
    certificate: KKTCertificate
    lam: float
    budget: float
    support_size: int
    ties_at_boundary: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def support(self) -> np.ndarray:
        """Indices i with w_i > 0, ascending, shape (support_size,)."""
        return np.flatnonzero(self.w > 0)
