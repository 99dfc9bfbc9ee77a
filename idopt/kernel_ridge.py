"""Kernel ridge regression that carries landmark influence to every pool sample.

With embeddings E (n x e) of the pool, landmark indices l (L of them) and landmark scores
P_L (L x m), the scores of every sample are

    P_hat = K(E, E_l) (K(E_l, E_l) + delta * mean(diag K(E_l, E_l)) I)^-1 P_L        (n x m)

with the RBF kernel K(x, y) = exp(-||x - y||^2 / (2 h^2)). The bandwidth h defaults to the
median heuristic (median Euclidean distance between distinct landmark pairs) and the damping
delta is relative to the mean kernel diagonal, so it does not depend on the kernel's scale.
For a landmark i, the prediction differs from P_L[i] only through the damping; delta -> 0
interpolates the landmarks exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_DAMPING = 1e-3


def _check_matrix(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array (samples x features); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(f"{name} must have a floating dtype; got {array.dtype}. Convert with .astype(float)")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(f"{name} has {int(bad.sum())} NaN or inf values (first at index {first})")
    return array.astype(np.float64, copy=False)


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return ||x_i - y_j||^2 for rows of x (a x e) and y (b x e), as an (a x b) float64 array.

    Computed as ||x||^2 + ||y||^2 - 2 x y^T and clipped at 0 against rounding.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(sq, 0.0)


def median_bandwidth(x: np.ndarray) -> float:
    """Return the median heuristic bandwidth: the median distance between distinct rows of x.

    Falls back to 1.0 when all rows coincide (then every bandwidth gives the same kernel).
    """
    sq = squared_distances(x, x)
    upper = sq[np.triu_indices(sq.shape[0], k=1)]
    if upper.size == 0:
        return 1.0
    median = float(np.median(np.sqrt(upper)))
    return median if median > 0 else 1.0


def rbf_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    """Return K_ij = exp(-||x_i - y_j||^2 / (2 h^2)) for rows x (a x e), y (b x e); shape (a, b)."""
    if not bandwidth > 0 or not np.isfinite(bandwidth):
        raise InvalidInputError(f"bandwidth must be a positive finite number; got {bandwidth!r}")
    return np.exp(-squared_distances(x, y) / (2.0 * bandwidth**2))


@dataclass
class KernelRidge:
    """A fitted kernel ridge regression from landmark embeddings to landmark scores.

    Attributes
    ----------
    landmarks: (L, e) landmark embeddings. coef: (L, m) dual coefficients
    (K_LL + delta * mean(diag K_LL) I)^-1 P_L. bandwidth: RBF bandwidth h. damping: delta.
    """

    landmarks: np.ndarray
    coef: np.ndarray
    bandwidth: float
    damping: float

    @classmethod
    def fit(
        cls,
        landmark_embeddings,
        landmark_scores,
        *,
        bandwidth: float | None = None,
        damping: float = DEFAULT_DAMPING,
    ) -> "KernelRidge":
        """Fit the dual coefficients; ``landmark_scores`` is (L,) or (L, m)."""
        emb = _check_matrix("landmark_embeddings", landmark_embeddings)
        scores = np.asarray(landmark_scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[:, None]
        if scores.ndim != 2 or scores.shape[0] != emb.shape[0]:
            raise InvalidInputError(
                f"landmark_scores must have shape (L,) or (L, m) with L = {emb.shape[0]} landmarks; "
                f"got {np.shape(landmark_scores)}"
            )
        if not np.isfinite(scores).all():
            raise InvalidInputError("landmark_scores contains NaN or inf values")
        if not damping > 0:
            raise InvalidInputError(f"damping must be > 0 (relative to the mean kernel diagonal); got {damping!r}")
        h = median_bandwidth(emb) if bandwidth is None else float(bandwidth)
        gram = rbf_kernel(emb, emb, h)
        ridge = damping * float(np.mean(np.diag(gram)))
        gram[np.diag_indices_from(gram)] += ridge
        coef = linalg.cho_solve(linalg.cho_factor(gram, lower=True), scores)
        logger.info("Kernel ridge fit: %d landmarks, bandwidth %.4g, ridge %.3g", emb.shape[0], h, ridge)
        return cls(landmarks=emb, coef=coef, bandwidth=h, damping=damping)

    def predict(self, embeddings, chunk_rows: int = 8192) -> np.ndarray:
        """Return K(E, E_l) coef for embeddings E (n, e), as an (n, m) array, in row chunks."""
        emb = _check_matrix("embeddings", embeddings)
        if emb.shape[1] != self.landmarks.shape[1]:
            raise InvalidInputError(
                f"embeddings have {emb.shape[1]} features but the landmarks have {self.landmarks.shape[1]}"
            )
        out = np.empty((emb.shape[0], self.coef.shape[1]))
        for start in range(0, emb.shape[0], chunk_rows):
            block = emb[start:start + chunk_rows]
            out[start:start + chunk_rows] = rbf_kernel(block, self.landmarks, self.bandwidth) @ self.coef
        return out

    def weights(self, embeddings) -> np.ndarray:
        """Return the coefficient matrix C (n, L) with P_hat = C P_L for any landmark scores P_L.

        C = K(E, E_l) (K_LL + ridge I)^-1. Applied to landmark gradients instead of scores it
        gives the landmark approximation of every sample's gradient.
        """
        emb = _check_matrix("embeddings", embeddings)
        gram = rbf_kernel(self.landmarks, self.landmarks, self.bandwidth)
        gram[np.diag_indices_from(gram)] += self.damping * float(np.mean(np.diag(gram)))
        cross = rbf_kernel(emb, self.landmarks, self.bandwidth)
        return linalg.cho_solve(linalg.cho_factor(gram, lower=True), cross.T).T


def choose_landmarks(n: int, num_landmarks: int, seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """Choose ``num_landmarks`` distinct indices in [0, n) uniformly at random, sorted ascending."""
    if n < 1:
        raise InvalidInputError(f"the pool is empty (n={n}); pass at least one sample")
    if not 1 <= num_landmarks <= n:
        raise InvalidInputError(f"num_landmarks={num_landmarks} must be between 1 and the pool size {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=num_landmarks, replace=False))
