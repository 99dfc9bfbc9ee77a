"""The weighting problem of Influence Distillation, first and second order.

For a pool of n samples, scores p (one column per target) and a PSD curvature matrix Q,

    minimize_w  F(w) = -p^T w + (eta / 2c) w^T Q w + (lam / 2) ||w||^2
    subject to  w >= 0,  1^T w = b

Conventions, used everywhere in the package:

- c is the pool size |S| that divides the learning rate in one weighted step
  theta' = theta - (eta / c) G_S w; it defaults to n. b is the budget 1^T w, default n, so
  w = 1 is the unweighted step.
- Q is dense (n x n), absent (first order), or factored as A^T H A or A^T A with A of shape
  r x n. A factored Q is never formed as an n x n matrix: products use A and H.
- The problem is strictly convex when (eta/c) Q + lam I is positive definite, which holds for
  any lam > 0 when Q is PSD. lam = 0 with eta = 0 is a linear program.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from idopt.errors import InvalidInputError
from idopt.validation import as_float_array, check_budget, check_finite, check_lam

SYMMETRY_RTOL = 1e-10


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"eta must be a real number >= 0 (the learning rate); got {eta!r}")
    value = float(eta)
    if not np.isfinite(value) or value < 0:
        raise InvalidInputError(f"eta must be finite and >= 0 (the learning rate); got {eta!r}")
    return value


def _check_symmetric(matrix: np.ndarray, name: str) -> None:
    scale = max(float(np.max(np.abs(matrix))), 1e-300)
    asymmetry = float(np.max(np.abs(matrix - matrix.T)))
    if asymmetry > SYMMETRY_RTOL * scale:
        raise InvalidInputError(
            f"{name} must be symmetric; max |{name} - {name}^T| = {asymmetry:.3g} "
            f"(max |{name}| = {scale:.3g}). Symmetrize it with ({name} + {name}.T) / 2 if that is intended"
        )


def factored_min_eigenvalue(A: np.ndarray, H: np.ndarray | None) -> float:
    """Return the smallest eigenvalue of A^T H A (n x n) from r x r matrices only.

    With A A^T = U S U^T, the nonzero eigenvalues of A^T H A are those of
    S^(1/2) U^T H U S^(1/2); when rank(A) < n the spectrum also contains 0.
    """
    gram = A @ A.T
    values, vectors = linalg.eigh(gram)
    keep = values > max(float(values[-1]), 0.0) * 1e-12 * gram.shape[0]
    root = vectors[:, keep] * np.sqrt(values[keep])
    middle = root.T @ (root if H is None else H @ root)
    smallest = float(linalg.eigvalsh(middle)[0]) if middle.size else 0.0
    if int(keep.sum()) < A.shape[1]:
        smallest = min(smallest, 0.0)
    return smallest


@dataclass(frozen=True, eq=False)
class WeightingProblem:
    """One instance of the weighting problem; see the module docstring for the math.

    Build it with :meth:`create` (checked) or the constructors in ``idopt.constructors``.

    Attributes
    ----------
    p : (n,) or (n, m) float64
        Scores, one column per target (unit: change of target loss per unit weight, times
        -c/eta for the first-order term).
    lam : float
        l2 regularization weight lam >= 0.
    eta : float
        Learning rate eta >= 0; 0 drops the quadratic term.
    c : float
        Pool-size divisor of the learning rate, > 0.
    budget : float
        b = 1^T w, > 0.
    Q : (n, n) float64 or None
        Dense symmetric PSD curvature matrix.
    A : (r, n) float64 or None
        Factor of Q = A^T H A (or A^T A when H is None).
    H : (r, r) float64 or None
        Symmetric PSD middle factor.
    """

    p: np.ndarray
    lam: float
    eta: float = 0.0
    c: float = 1.0
    budget: float = 1.0
    Q: np.ndarray | None = None
    A: np.ndarray | None = None
    H: np.ndarray | None = None

    @classmethod
    def create(cls, p, lam, *, eta=0.0, c=None, budget=None, Q=None, A=None, H=None, check_psd: bool = True):
        """Validate the inputs and build a problem.

        Raises InvalidInputError naming the argument for: non-float or non-finite arrays,
        shape mismatches, n = 0, an asymmetric Q or H, lam < 0, eta < 0, c <= 0, b <= 0,
        both Q and A given, and (with ``check_psd``) (eta/c) Q + lam I not positive
        definite or lam = 0 with a quadratic term that is only semidefinite.
        """
        p_array = as_float_array(p, "p", ndim=(1, 2))
        if p_array.shape[0] == 0:
            raise InvalidInputError("p is empty (n = 0); the pool needs at least one sample")
        if p_array.ndim == 2 and p_array.shape[1] == 0:
            raise InvalidInputError("p has no target columns (shape (n, 0)); pass at least one column")
        check_finite(p_array, "p")
        n = p_array.shape[0]
        lam_value = check_lam(lam)
        eta_value = _check_eta(eta)
        if c is None:
            c_value = float(n)
        else:
            c_value = float(c)
            if not np.isfinite(c_value) or c_value <= 0:
                raise InvalidInputError(f"c must be > 0 (the pool size dividing the learning rate); got {c!r}")
        b_value = check_budget(budget, n)

        if Q is not None and A is not None:
            raise InvalidInputError("pass either Q (dense) or A (factored Q = A^T H A), not both")
        if H is not None and A is None:
            raise InvalidInputError("H was given without A; a factored Q needs A (Q = A^T H A)")
        q_array = a_array = h_array = None
        if Q is not None:
            q_array = as_float_array(Q, "Q", ndim=2)
            if q_array.shape != (n, n):
                raise InvalidInputError(f"Q must have shape (n, n) = ({n}, {n}) to match p; got {q_array.shape}")
            check_finite(q_array, "Q")
            _check_symmetric(q_array, "Q")
        if A is not None:
            a_array = as_float_array(A, "A", ndim=2)
            if a_array.shape[1] != n:
                raise InvalidInputError(f"A must have shape (r, n) with n = {n}; got {a_array.shape}")
            check_finite(a_array, "A")
            if H is not None:
                h_array = as_float_array(H, "H", ndim=2)
                r = a_array.shape[0]
                if h_array.shape != (r, r):
                    raise InvalidInputError(f"H must have shape (r, r) = ({r}, {r}) to match A; got {h_array.shape}")
                check_finite(h_array, "H")
                _check_symmetric(h_array, "H")

        problem = cls(p_array, lam_value, eta_value, c_value, b_value, q_array, a_array, h_array)
        if check_psd:
            problem._check_convex()
        return problem

    def _check_convex(self) -> None:
        """Raise unless the Hessian (eta/c) Q + lam I is positive definite (or the problem is an LP).

        Q itself may be indefinite, as a Gauss-Newton-free Hessian of a network loss can be;
        only the sum must be positive definite. Dense Q: a Cholesky factorization decides it.
        Factored Q = A^T H A: its nonzero eigenvalues are those of L^T H L with A A^T = L L^T
        (r x r), and it has n - rank(A) zero eigenvalues, so no n x n matrix is formed.
        """
        if not self.has_quadratic:
            return
        curvature = self.curvature
        if self.Q is not None:
            try:
                linalg.cholesky(curvature * self.Q + self.lam * np.eye(self.n), lower=True)
            except linalg.LinAlgError:
                smallest = float(linalg.eigvalsh(self.Q, subset_by_index=[0, 0])[0])
                raise InvalidInputError(
                    f"(eta/c) Q + lam I is not positive definite: the smallest eigenvalue of Q is {smallest:.6g}, "
                    f"eta/c = {curvature:.6g} and lam = {self.lam:.6g}. Increase lam above "
                    f"{max(-curvature * smallest, 0.0):.6g}, or pass a positive semidefinite Q"
                ) from None
            return
        smallest = factored_min_eigenvalue(self.A, self.H)
        if curvature * smallest + self.lam <= 0:
            threshold = max(-curvature * smallest, 0.0)
            fix = f"increase lam above {threshold:.6g}" if threshold > 0 else "pass lam > 0"
            raise InvalidInputError(
                f"(eta/c) A^T H A + lam I is not positive definite: the smallest eigenvalue of A^T H A is "
                f"{smallest:.6g} (0 whenever r < n), eta/c = {curvature:.6g} and lam = {self.lam:.6g}; {fix}"
            )

    @property
    def n(self) -> int:
        """Number of pool samples."""
        return int(self.p.shape[0])

    @property
    def num_targets(self) -> int:
        """Number of target columns of p (1 for a vector)."""
        return 1 if self.p.ndim == 1 else int(self.p.shape[1])

    @property
    def has_quadratic(self) -> bool:
        """True when Q or A is given and eta > 0."""
        return self.eta > 0 and (self.Q is not None or self.A is not None)

    @property
    def curvature(self) -> float:
        """eta / c, the factor in front of Q."""
        return self.eta / self.c

    def column(self, j: int) -> "WeightingProblem":
        """Return the single-target problem of target column j (the same problem for a vector p)."""
        if self.p.ndim == 1:
            if j != 0:
                raise InvalidInputError(f"target index {j} is out of range; p has 1 target")
            return self
        if not 0 <= j < self.p.shape[1]:
            raise InvalidInputError(f"target index {j} is out of range; p has {self.p.shape[1]} targets")
        return WeightingProblem(self.p[:, j].copy(), self.lam, self.eta, self.c, self.budget, self.Q, self.A, self.H)

    def quad_matvec(self, w: np.ndarray) -> np.ndarray:
        """Return Q w, (n,), without forming Q when it is factored: A^T (H (A w))."""
        if self.Q is not None:
            return self.Q @ w
        if self.A is None:
            return np.zeros_like(w)
        inner = self.A @ w
        if self.H is not None:
            inner = self.H @ inner
        return self.A.T @ inner

    def gradient(self, w: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
        """Return grad F(w) = -p + (eta/c) Q w + lam w for one target column p (default self.p)."""
        scores = self.p if p is None else p
        grad = -scores + self.lam * w
        if self.has_quadratic:
            grad = grad + self.curvature * self.quad_matvec(w)
        return grad

    def objective(self, w: np.ndarray, p: np.ndarray | None = None) -> float:
        """Return F(w) = -p^T w + (eta/2c) w^T Q w + (lam/2)||w||^2 for one target column p."""
        scores = self.p if p is None else p
        value = -float(scores @ w) + 0.5 * self.lam * float(w @ w)
        if self.has_quadratic:
            value += 0.5 * self.curvature * float(w @ self.quad_matvec(w))
        return value

    def gradient_scale(self, w: np.ndarray, p: np.ndarray | None = None) -> float:
        """Return the largest magnitude among the terms of grad F(w), the certificate's scale."""
        scores = self.p if p is None else p
        terms = [float(np.max(np.abs(scores))), self.lam * float(np.max(np.abs(w)))]
        if self.has_quadratic:
            terms.append(self.curvature * float(np.max(np.abs(self.quad_matvec(w)))))
        scale = max(terms)
        return scale if scale > 0 else 1.0

    def dense_hessian(self) -> np.ndarray:
        """Return (eta/c) Q + lam I as an (n, n) array; for small n and reference solvers only."""
        hessian = self.lam * np.eye(self.n)
        if self.has_quadratic:
            if self.Q is not None:
                hessian += self.curvature * self.Q
            else:
                middle = self.A if self.H is None else self.H @ self.A
                hessian += self.curvature * (self.A.T @ middle)
        return hessian
