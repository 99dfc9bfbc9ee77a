"""Approximation bounds of landmark Influence Distillation, each with a Monte-Carlo estimator.

Notation. d is the gradient dimension and n the number of samples. The rows of G (n x d) are
the exact gradients g_i, t (d,) is a target gradient, g_hat_i approximates g_i and
e_i = g_hat_i - g_i is its error. The scores are p_i = <g_i, t> and p_hat_i = <g_hat_i, t>.
R = P D is a random signed permutation: D = diag(s) with i.i.d. Rademacher signs s, and P a
uniformly random permutation matrix.

Results (the labels D.1 to D.4 are names for the statements below):

- Lemma D.1. For unit t, g_hat = g + e with E[e] = 0 and Cov(e) = sigma^2 I, the score
  S = <g_hat, t> has E[S] = <g, t> and Var(S) = sigma^2 = E||g_hat - g||^2 / d.
- Lemma D.2. For any random x in R^d independent of R, Cov(R x) = (E||x||^2 / d) I. It holds
  for every fixed x as well: E_R[R x x^T R^T] = (||x||^2 / d) I, because the signs cancel
  every off-diagonal term and the permutation spreads x_j^2 evenly over the diagonal.
- Theorem D.3. Let the rows of G and t have unit length, and let g_hat_i = h(g_i; G) be
  unbiased, rotation-equivariant (h(R g_i; G R^T) = R g_hat_i for every orthonormal R) with
  mean squared error (1/n) sum_i E||g_hat_i - g_i||^2 <= Delta^2. Then
  E||p - p_hat||^2 <= n Delta^2 / d, where the expectation includes a random change of basis
  R applied to the gradients (t fixed): with equivariance, p_i - p_hat_i = <R e_i, t> and
  Lemma D.2 gives E_R <R e_i, t>^2 = ||e_i||^2 / d.
- Corollary D.4. With w(p) = argmin_x -p^T x + (lam/2)||x||^2 s.t. x >= 0, 1^T x = n, the map
  p -> w(p) is the projection of p / lam onto a simplex, so
  ||w(p) - w(p_hat)|| <= ||p - p_hat|| / lam and E||w(p) - w(p_hat)||^2 <= n Delta^2 / (lam^2 d).
- Landmark approximation. g_hat = C G_L, with C (n x L) the kernel ridge coefficients computed
  from embeddings only and G_L the landmark gradients. Rotating all gradients by R gives
  C G_L R^T, so every approximation rotates by R: the approximation is rotation-equivariant.

Every estimator returns :class:`MeanEstimate` values: the sample mean of i.i.d. draws, its
standard error std / sqrt(r) and the normal-approximation interval mean +- z * SE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from idopt.errors import InvalidInputError
from idopt.first_order import solve_first_order
from idopt.kernel_ridge import DEFAULT_DAMPING, KernelRidge
from idopt.validation import as_float_array, check_finite, check_lam

logger = logging.getLogger(__name__)

DEFAULT_CONFIDENCE = 0.95

# Allowed deviation from unit length of vectors that a result requires to be unit: float32
# gradients normalized and stored carry relative errors of about 1e-7.
UNIT_NORM_RTOL = 1e-5

# Relative tolerance of the equivariance check. Both sides are the same linear map of the
# gradients evaluated in a different order, so they differ by rounding of d-term float64
# sums, about d * 1e-16 relative; 1e-8 covers d up to 10^7.
EQUIVARIANCE_RTOL = 1e-8

Approximation = Callable[[np.ndarray], np.ndarray]
RandomApproximation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- estimates


def z_for_confidence(confidence: float) -> float:
    """Return z with P(|N(0, 1)| <= z) = confidence, the half-width of a two-sided interval in SEs."""
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must lie strictly between 0 and 1; got {confidence!r}")
    return float(stats.norm.isf((1.0 - confidence) / 2.0))


@dataclass(frozen=True)
class MeanEstimate:
    """Monte-Carlo estimate of an expectation from r i.i.d. draws.

    Attributes
    ----------
    mean : float
        Sample mean m = (1/r) sum_k v_k.
    standard_error : float
        SE = std(v, ddof=1) / sqrt(r).
    num_samples : int
        r >= 2.
    confidence : float
        Coverage of the interval under the normal approximation of m.
    low, high : float
        Interval m - z SE and m + z SE with z = :func:`z_for_confidence` (confidence).
    """

    mean: float
    standard_error: float
    num_samples: int
    confidence: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Return whether ``value`` lies in [low, high]."""
        return self.low <= value <= self.high

    def z_score(self, value: float) -> float:
        """Return (mean - value) / SE; 0 when both are 0 and +-inf when only SE is 0."""
        difference = self.mean - value
        if self.standard_error > 0:
            return difference / self.standard_error
        if difference == 0:
            return 0.0
        return float(np.copysign(np.inf, difference))

    def to_dict(self) -> dict:
        """Return the fields as a JSON-ready dict."""
        return {
            "mean": self.mean,
            "standard_error": self.standard_error,
            "num_samples": self.num_samples,
            "confidence": self.confidence,
            "low": self.low,
            "high": self.high,
        }


def estimate_mean(values, confidence: float = DEFAULT_CONFIDENCE) -> MeanEstimate:
    """Estimate E[v] from i.i.d. draws v_1..v_r with a normal-approximation interval.

    Parameters
    ----------
    values : array_like, shape (r,)
        The draws, finite floats, r >= 2.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).

    Returns
    -------
    MeanEstimate
        mean = (1/r) sum_k v_k, SE = std(v, ddof=1) / sqrt(r), interval mean +- z SE.
        The interval is valid when v has a finite variance and r is large enough for the
        central limit theorem.
    """
    array = as_float_array(values, "values", ndim=1)
    check_finite(array, "values")
    if array.shape[0] < 2:
        raise InvalidInputError(f"values needs at least 2 draws for a standard error; got {array.shape[0]}")
    z = z_for_confidence(confidence)
    mean = float(np.mean(array))
    se = float(np.std(array, ddof=1) / np.sqrt(array.shape[0]))
    return MeanEstimate(mean, se, int(array.shape[0]), float(confidence), mean - z * se, mean + z * se)


# --------------------------------------------------------------------------- input checks


def _vector(value, name: str) -> np.ndarray:
    array = as_float_array(value, name, ndim=1)
    check_finite(array, name)
    if array.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty; pass a vector of length d >= 1")
    return array


def _matrix(value, name: str) -> np.ndarray:
    array = as_float_array(value, name, ndim=2)
    check_finite(array, name)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {array.shape}); pass at least one row and one column")
    return array


def _check_unit(vector: np.ndarray, name: str) -> None:
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > UNIT_NORM_RTOL:
        raise InvalidInputError(
            f"{name} must have unit length (the result assumes ||{name}|| = 1); got norm {norm:.6g}. "
            f"Pass {name} / np.linalg.norm({name})."
        )


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_nonnegative(value, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


# --------------------------------------------------------------------------- change of basis


def random_signed_permutation(dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw R = P D: a uniform permutation ``perm`` (d,) and Rademacher signs ``signs`` (d,).

    The matrix is R[i, perm[i]] = signs[perm[i]], so (R x)_i = signs[perm[i]] * x[perm[i]].
    """
    dim = _check_positive_int(dim, "dim")
    perm = rng.permutation(dim)
    signs = rng.choice(np.array([-1.0, 1.0]), size=dim)
    return perm, signs


def apply_signed_permutation(x, perm: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Return R x for a vector x (d,), or R applied to every row of x (k, d), i.e. x R^T."""
    x = np.asarray(x, dtype=np.float64)
    return (x * signs)[..., perm]


def signed_permutation_matrix(perm: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Return the dense orthonormal matrix R (d, d) with R[i, perm[i]] = signs[perm[i]]."""
    dim = perm.shape[0]
    matrix = np.zeros((dim, dim))
    matrix[np.arange(dim), perm] = signs[perm]
    return matrix


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Draw an orthonormal matrix (d, d) from the Haar distribution.

    Q of the QR decomposition of a standard Gaussian matrix, with each column's sign fixed
    so that diag(R) > 0; that choice makes Q Haar-distributed.
    """
    dim = _check_positive_int(dim, "dim")
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------- Lemma D.1


def score_moments(g, t, error_mean_square: float) -> tuple[float, float]:
    """Return Lemma D.1's moments of S = <g + e, t>: (E[S], Var(S)) = (<g, t>, E||e||^2 / d).

    Parameters
    ----------
    g : array_like, shape (d,)
        Exact gradient.
    t : array_like, shape (d,)
        Target gradient with unit length.
    error_mean_square : float
        E||e||^2 >= 0 of an error with E[e] = 0 and Cov(e) = sigma^2 I (so E||e||^2 = d sigma^2).

    Returns
    -------
    (float, float)
        <g, t> and E||e||^2 / d.
    """
    g = _vector(g, "g")
    t = _vector(t, "t")
    if g.shape != t.shape:
        raise InvalidInputError(f"g and t must have the same length; got {g.shape[0]} and {t.shape[0]}")
    _check_unit(t, "t")
    error_mean_square = _check_nonnegative(error_mean_square, "error_mean_square")
    return float(g @ t), error_mean_square / g.shape[0]


@dataclass(frozen=True)
class ScoreMomentsEstimate:
    """Monte-Carlo check of Lemma D.1 from r draws of g_hat.

    Attributes
    ----------
    expected_score : float
        <g, t>, the value E[S] should have.
    score : MeanEstimate
        Estimate of E[S] from S_k = <g_hat_k, t>.
    score_variance : MeanEstimate
        Estimate of E[(S - <g, t>)^2], which equals Var(S) when E[S] = <g, t>.
    predicted_variance : MeanEstimate
        Estimate of E||g_hat - g||^2 / d, the variance the lemma predicts.
    variance_gap : MeanEstimate
        Estimate of E[(S - <g, t>)^2 - ||g_hat - g||^2 / d] from paired draws; 0 under the lemma.
    """

    expected_score: float
    score: MeanEstimate
    score_variance: MeanEstimate
    predicted_variance: MeanEstimate
    variance_gap: MeanEstimate

    @property
    def unbiased(self) -> bool:
        """Whether the interval of E[S] contains <g, t>."""
        return self.score.contains(self.expected_score)

    @property
    def variance_matches(self) -> bool:
        """Whether the interval of the variance gap contains 0."""
        return self.variance_gap.contains(0.0)


def estimate_score_moments(g, t, approximations, confidence: float = DEFAULT_CONFIDENCE) -> ScoreMomentsEstimate:
    """Estimate the moments of S = <g_hat, t> that Lemma D.1 states, from draws of g_hat.

    Parameters
    ----------
    g : array_like, shape (d,)
        Exact gradient.
    t : array_like, shape (d,)
        Target gradient with unit length.
    approximations : array_like, shape (r, d)
        i.i.d. draws g_hat_1..g_hat_r of the approximation, r >= 2.
    confidence : float, default 0.95
        Coverage of each interval.

    Returns
    -------
    ScoreMomentsEstimate
        Estimates of E[S], E[(S - <g, t>)^2], E||g_hat - g||^2 / d and of the paired gap
        (S - <g, t>)^2 - ||g_hat - g||^2 / d. The variance intervals need a finite fourth
        moment of the error (not the case for Student t errors with 4 or fewer degrees of freedom).
    """
    g = _vector(g, "g")
    t = _vector(t, "t")
    draws = _matrix(approximations, "approximations")
    if g.shape != t.shape or draws.shape[1] != g.shape[0]:
        raise InvalidInputError(
            f"g (d,), t (d,) and approximations (r, d) must share d; got {g.shape}, {t.shape} and {draws.shape}"
        )
    _check_unit(t, "t")
    expected = float(g @ t)
    scores = draws @ t
    squared_deviation = (scores - expected) ** 2
    predicted = np.sum((draws - g) ** 2, axis=1) / g.shape[0]
    return ScoreMomentsEstimate(
        expected_score=expected,
        score=estimate_mean(scores, confidence),
        score_variance=estimate_mean(squared_deviation, confidence),
        predicted_variance=estimate_mean(predicted, confidence),
        variance_gap=estimate_mean(squared_deviation - predicted, confidence),
    )


# --------------------------------------------------------------------------- Lemma D.2


def isotropic_variance(mean_squared_norm: float, dim: int) -> float:
    """Return Lemma D.2's variance per coordinate of R x: E||x||^2 / d, so Cov(R x) = that times I."""
    return _check_nonnegative(mean_squared_norm, "mean_squared_norm") / _check_positive_int(dim, "dim")


def eigenvalue_ratio(vectors: np.ndarray) -> float:
    """Return lambda_max(M) / (trace(M) / d) for M = Y^T Y / r and rows y_k of ``vectors`` (r, d).

    It is 1 for an exactly isotropic M and d when all rows are parallel. When r < d the
    eigenvalues come from the r x r Gram matrix Y Y^T / r, which has the same non-zero ones.
    Returns nan when every row is zero.
    """
    rows, dim = vectors.shape
    small = vectors @ vectors.T if rows < dim else vectors.T @ vectors
    trace = float(np.trace(small))
    if trace == 0:
        return float("nan")
    largest = float(np.linalg.eigvalsh(small)[-1])
    return largest / (trace / dim)


def isotropic_eigenvalue_ratio(num_samples: int, dim: int) -> float:
    """Return (1 + sqrt(d / r))^2, the value :func:`eigenvalue_ratio` takes under isotropy.

    It is the upper edge of the Marchenko-Pastur law: the limit of the ratio for r i.i.d.
    isotropic Gaussian vectors as r, d -> infinity with d / r fixed. Heavy-tailed isotropic
    vectors give larger values at finite r.
    """
    return (1.0 + np.sqrt(dim / num_samples)) ** 2


@dataclass(frozen=True)
class IsotropyEstimate:
    """Monte-Carlo check of E[y y^T] = (E||y||^2 / d) I from r draws of y.

    Attributes
    ----------
    variance : MeanEstimate
        Estimate of E||y||^2 / d, the common diagonal value under isotropy.
    deviation : numpy.ndarray, shape (d, d)
        Mean over draws of y_i y_j - [i = j] ||y||^2 / d; 0 under isotropy.
    standard_error : numpy.ndarray, shape (d, d)
        Standard error of each entry of ``deviation``.
    max_abs_z : float
        max over i <= j of |deviation_ij| / standard_error_ij (0/0 counts as 0).
    z_threshold : float
        Two-sided normal quantile at family-wise level 1 - confidence, Bonferroni-corrected
        for the d (d + 1) / 2 entries.
    eigenvalue_ratio : float
        :func:`eigenvalue_ratio` of the draws.
    eigenvalue_ratio_isotropic : float
        :func:`isotropic_eigenvalue_ratio` (r, d), its value expected under isotropy.
    normalized : bool
        Whether each draw was divided by its norm first.
    """

    variance: MeanEstimate
    deviation: np.ndarray
    standard_error: np.ndarray
    max_abs_z: float
    z_threshold: float
    eigenvalue_ratio: float
    eigenvalue_ratio_isotropic: float
    normalized: bool

    @property
    def isotropic(self) -> bool:
        """Whether no entry of the deviation differs from 0 by more than z_threshold SEs."""
        return self.max_abs_z <= self.z_threshold


# Dense d x d statistics; larger d needs the eigenvalue ratio alone.
MAX_ISOTROPY_DIM = 2048


def estimate_isotropy(vectors, confidence: float = DEFAULT_CONFIDENCE, normalize: bool = False) -> IsotropyEstimate:
    """Test whether draws y_1..y_r of a random vector have E[y y^T] = (E||y||^2 / d) I.

    For y = R x this is Lemma D.2, since E[R x] = 0 makes E[y y^T] the covariance. Each
    entry (i, j) is tested through the draws of y_i y_j - [i = j] ||y||^2 / d, whose mean is 0
    under isotropy.

    Parameters
    ----------
    vectors : array_like, shape (r, d)
        i.i.d. draws, r >= 2, d <= 2048.
    confidence : float, default 0.95
        Family-wise coverage over the d (d + 1) / 2 entries.
    normalize : bool, default False
        Divide each non-zero draw by its norm first. This tests E[u u^T] = I / d for the
        direction u = y / ||y||, which the signed permutation satisfies for every fixed x
        (Lemma D.2 conditional on x) and which implies the lemma. Use it when x has no
        finite fourth moment (Student t with 4 or fewer degrees of freedom): the entries
        are then bounded and their standard errors valid.

    Returns
    -------
    IsotropyEstimate
        Entry-wise deviations from isotropy with standard errors and the maximum |z|.
    """
    y = _matrix(vectors, "vectors")
    rows, dim = y.shape
    if rows < 2:
        raise InvalidInputError(f"vectors needs at least 2 draws (rows); got {rows}")
    if dim > MAX_ISOTROPY_DIM:
        raise InvalidInputError(
            f"vectors has d = {dim} columns, above the {MAX_ISOTROPY_DIM} this dense d x d test supports; "
            "use eigenvalue_ratio for larger d"
        )
    if normalize:
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        y = np.divide(y, norms, out=np.zeros_like(y), where=norms > 0)

    squared_norm_share = np.sum(y * y, axis=1) / dim
    second = y.T @ y / rows
    fourth = (y * y).T @ (y * y) / rows
    # Off-diagonal draws v = y_i y_j: Var(v) = E[y_i^2 y_j^2] - E[y_i y_j]^2.
    variance = (fourth - second**2) * rows / (rows - 1)
    deviation = second.copy()
    diagonal = y * y - squared_norm_share[:, None]
    deviation[np.diag_indices(dim)] = diagonal.mean(axis=0)
    variance[np.diag_indices(dim)] = diagonal.var(axis=0, ddof=1)
    standard_error = np.sqrt(np.maximum(variance, 0.0) / rows)

    upper = np.triu_indices(dim)
    dev_upper = np.abs(deviation[upper])
    se_upper = standard_error[upper]
    z_values = np.zeros_like(dev_upper)
    positive = se_upper > 0
    z_values[positive] = dev_upper[positive] / se_upper[positive]
    z_values[~positive & (dev_upper > 0)] = np.inf
    entries = upper[0].shape[0]
    z_for_confidence(confidence)  # rejects a confidence outside (0, 1)
    z_threshold = float(stats.norm.isf((1.0 - confidence) / (2.0 * entries)))
    return IsotropyEstimate(
        variance=estimate_mean(squared_norm_share, confidence),
        deviation=deviation,
        standard_error=standard_error,
        max_abs_z=float(np.max(z_values)),
        z_threshold=z_threshold,
        eigenvalue_ratio=eigenvalue_ratio(y),
        eigenvalue_ratio_isotropic=isotropic_eigenvalue_ratio(rows, dim),
        normalized=bool(normalize),
    )


# --------------------------------------------------------------------------- Theorem D.3, Corollary D.4


def mean_squared_error(exact, approximations) -> float:
    """Return Delta^2 = (1/n) sum_i ||g_hat_i - g_i||^2 for rows of ``exact`` and ``approximations`` (n, d)."""
    exact = _matrix(exact, "exact")
    approximations = _matrix(approximations, "approximations")
    if exact.shape != approximations.shape:
        raise InvalidInputError(
            f"exact and approximations must have the same shape (n, d); got {exact.shape} and {approximations.shape}"
        )
    return float(np.mean(np.sum((approximations - exact) ** 2, axis=1)))


def score_error_bound(n: int, delta_squared: float, dim: int) -> float:
    """Return Theorem D.3's bound on E||p - p_hat||^2: n Delta^2 / d."""
    n = _check_positive_int(n, "n")
    dim = _check_positive_int(dim, "dim")
    return n * _check_nonnegative(delta_squared, "delta_squared") / dim


def weight_error_bound(n: int, delta_squared: float, dim: int, lam: float) -> float:
    """Return Corollary D.4's bound on E||w(p) - w(p_hat)||^2: n Delta^2 / (lam^2 d), lam > 0."""
    lam = _check_lam_positive(lam)
    return score_error_bound(n, delta_squared, dim) / lam**2


def weight_lipschitz_bound(p, p_hat, lam: float) -> float:
    """Return Corollary D.4's bound ||p - p_hat|| / lam on ||w(p) - w(p_hat)|| for one pair.

    Parameters
    ----------
    p, p_hat : array_like, shape (n,)
        Two score vectors.
    lam : float
        Regularization weight lam > 0.

    Returns
    -------
    float
        ||p - p_hat|| / lam, in the unit of the weights.
    """
    p = _vector(p, "p")
    p_hat = _vector(p_hat, "p_hat")
    if p.shape != p_hat.shape:
        raise InvalidInputError(f"p and p_hat must have the same length; got {p.shape[0]} and {p_hat.shape[0]}")
    return float(np.linalg.norm(p - p_hat)) / _check_lam_positive(lam)


def _check_lam_positive(lam) -> float:
    lam = check_lam(lam)
    if lam == 0:
        raise InvalidInputError("lam must be > 0 for the weight bounds (they scale with 1 / lam); got 0")
    return lam


def first_order_weights(p, lam: float) -> np.ndarray:
    """Return w(p) = argmin_x -p^T x + (lam/2)||x||^2 s.t. x >= 0, 1^T x = n, shape (n,)."""
    return solve_first_order(p, _check_lam_positive(lam)).w


@dataclass(frozen=True)
class ScoreErrorEstimate:
    """Monte-Carlo check of Theorem D.3 and Corollary D.4.

    Attributes
    ----------
    score_error : MeanEstimate
        Estimate of E||p - p_hat||^2.
    bound : MeanEstimate
        Estimate of n Delta^2 / d with Delta^2 the mean squared error of each draw.
    gap : MeanEstimate
        Estimate of E[||p - p_hat||^2 - n Delta^2 / d] from paired draws; <= 0 under the theorem.
    lam : float or None
        lam of the weight estimates, None when they were not computed.
    weight_error : MeanEstimate or None
        Estimate of E||w(p) - w(p_hat)||^2.
    weight_bound : MeanEstimate or None
        Estimate of n Delta^2 / (lam^2 d).
    max_lipschitz_ratio : float or None
        max over draws of ||w(p) - w(p_hat)|| / (||p - p_hat|| / lam); <= 1 by Corollary D.4,
        up to rounding (nan when every draw has p = p_hat).
    """

    score_error: MeanEstimate
    bound: MeanEstimate
    gap: MeanEstimate
    lam: float | None = None
    weight_error: MeanEstimate | None = None
    weight_bound: MeanEstimate | None = None
    max_lipschitz_ratio: float | None = None

    @property
    def within_bound(self) -> bool:
        """Whether the paired gap is consistent with <= 0 (its interval starts at or below 0)."""
        return self.gap.low <= 0.0


def estimate_score_error(
    gradients,
    target,
    approximate: RandomApproximation,
    num_draws: int,
    *,
    seed: int | np.random.SeedSequence = 0,
    randomize_basis: bool = True,
    lam: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ScoreErrorEstimate:
    """Estimate E||p - p_hat||^2 and n Delta^2 / d of Theorem D.3 by simulation.

    Draw k: R_k = P D is a random signed permutation (the identity when ``randomize_basis``
    is False), G_k = G R_k^T, G_hat_k = approximate(G_k, rng), p = G_k t, p_hat = G_hat_k t,
    Delta_k^2 = (1/n) sum_i ||G_hat_k[i] - G_k[i]||^2. The values ||p - p_hat||^2 and
    n Delta_k^2 / d are averaged over the draws, and so are the weight errors when ``lam`` is set.

    Parameters
    ----------
    gradients : array_like, shape (n, d)
        Exact gradients with unit rows.
    target : array_like, shape (d,)
        Target gradient with unit length.
    approximate : callable (G (n, d), numpy.random.Generator) -> G_hat (n, d)
        The approximation h; it may use the generator for its own randomness.
    num_draws : int
        r >= 2.
    seed : int or numpy.random.SeedSequence, default 0
        Seed of the change of basis and of the generator passed to ``approximate``.
    randomize_basis : bool, default True
        Whether to apply the random R_k. Theorem D.3's expectation includes it when h is
        deterministic; an h with spherically symmetric noise needs none.
    lam : float, optional
        lam > 0 of Corollary D.4. When set, also estimates E||w(p) - w(p_hat)||^2 with the
        budget n and n Delta^2 / (lam^2 d).
    confidence : float, default 0.95
        Coverage of each interval.

    Returns
    -------
    ScoreErrorEstimate
        Estimates of E||p - p_hat||^2, of the bound and of their paired gap.
    """
    G = _matrix(gradients, "gradients")
    t = _vector(target, "target")
    n, dim = G.shape
    if t.shape[0] != dim:
        raise InvalidInputError(f"target must have length d = {dim} (the columns of gradients); got {t.shape[0]}")
    row_norms = np.linalg.norm(G, axis=1)
    worst = int(np.argmax(np.abs(row_norms - 1.0)))
    if abs(row_norms[worst] - 1.0) > UNIT_NORM_RTOL:
        raise InvalidInputError(
            f"gradients must have unit rows (Theorem D.3 assumes ||g_i|| = 1); row {worst} has norm "
            f"{row_norms[worst]:.6g}. Divide each row by its norm."
        )
    _check_unit(t, "target")
    num_draws = _check_positive_int(num_draws, "num_draws", minimum=2)
    if lam is not None:
        lam = _check_lam_positive(lam)

    rng = np.random.default_rng(seed)
    score_errors = np.empty(num_draws)
    bounds = np.empty(num_draws)
    weight_errors = np.empty(num_draws)
    lipschitz_ratios = np.full(num_draws, np.nan)
    for k in range(num_draws):
        if randomize_basis:
            perm, signs = random_signed_permutation(dim, rng)
            rotated = apply_signed_permutation(G, perm, signs)
        else:
            rotated = G
        approximations = np.asarray(approximate(rotated, rng), dtype=np.float64)
        if approximations.shape != rotated.shape:
            raise InvalidInputError(
                f"approximate must return an array of shape {rotated.shape}; got {approximations.shape}"
            )
        p = rotated @ t
        p_hat = approximations @ t
        score_errors[k] = float(np.sum((p - p_hat) ** 2))
        bounds[k] = n * float(np.mean(np.sum((approximations - rotated) ** 2, axis=1))) / dim
        if lam is not None:
            w = first_order_weights(p, lam)
            w_hat = first_order_weights(p_hat, lam)
            weight_errors[k] = float(np.sum((w - w_hat) ** 2))
            if score_errors[k] > 0:
                lipschitz_ratios[k] = np.sqrt(weight_errors[k]) / (np.sqrt(score_errors[k]) / lam)

    result = ScoreErrorEstimate(
        score_error=estimate_mean(score_errors, confidence),
        bound=estimate_mean(bounds, confidence),
        gap=estimate_mean(score_errors - bounds, confidence),
    )
    if lam is None:
        return result
    finite_ratios = lipschitz_ratios[np.isfinite(lipschitz_ratios)]
    return ScoreErrorEstimate(
        score_error=result.score_error,
        bound=result.bound,
        gap=result.gap,
        lam=lam,
        weight_error=estimate_mean(weight_errors, confidence),
        weight_bound=estimate_mean(bounds / lam**2, confidence),
        max_lipschitz_ratio=float(np.max(finite_ratios)) if finite_ratios.size else float("nan"),
    )


# --------------------------------------------------------------------------- equivariance


@dataclass(frozen=True)
class EquivarianceCheck:
    """Result of comparing h(G R^T) with h(G) R^T for one orthonormal R.

    Attributes
    ----------
    max_error : float
        max_i ||h(G R^T)_i - (h(G) R^T)_i||.
    scale : float
        max_i ||h(G)_i||, the size the error is relative to.
    rtol : float
        Allowed relative error.
    """

    max_error: float
    scale: float
    rtol: float

    @property
    def relative_error(self) -> float:
        """max_error / scale (0 when both are 0, inf when only scale is 0)."""
        if self.scale > 0:
            return self.max_error / self.scale
        return 0.0 if self.max_error == 0 else float("inf")

    @property
    def equivariant(self) -> bool:
        """Whether relative_error <= rtol."""
        return self.relative_error <= self.rtol


def check_rotation_equivariance(
    approximate: Approximation, gradients, rotation, rtol: float = EQUIVARIANCE_RTOL
) -> EquivarianceCheck:
    """Check h(G R^T) = h(G) R^T: rotating every gradient by R rotates every approximation by R.

    Parameters
    ----------
    approximate : callable G (n, d) -> G_hat (n, d)
        A deterministic approximation h (a random one must reuse its seed on each call).
    gradients : array_like, shape (n, d)
        Exact gradients G.
    rotation : array_like, shape (d, d)
        Orthonormal R, e.g. from :func:`random_orthogonal` or :func:`signed_permutation_matrix`.
    rtol : float, default 1e-8
        Allowed max_i ||h(G R^T)_i - (h(G) R^T)_i|| relative to max_i ||h(G)_i||.

    Returns
    -------
    EquivarianceCheck
        The largest row error, its scale and the verdict ``equivariant``.
    """
    G = _matrix(gradients, "gradients")
    R = _matrix(rotation, "rotation")
    dim = G.shape[1]
    if R.shape != (dim, dim):
        raise InvalidInputError(f"rotation must have shape ({dim}, {dim}) for d = {dim}; got {R.shape}")
    orthonormality = float(np.max(np.abs(R @ R.T - np.eye(dim))))
    if orthonormality > 1e-10 * dim:
        raise InvalidInputError(
            f"rotation must be orthonormal (R R^T = I); max |R R^T - I| = {orthonormality:.3g}. "
            "Use random_orthogonal or signed_permutation_matrix."
        )
    rtol = _check_nonnegative(rtol, "rtol")
    base = np.asarray(approximate(G), dtype=np.float64)
    rotated = np.asarray(approximate(G @ R.T), dtype=np.float64)
    if base.shape != G.shape or rotated.shape != G.shape:
        raise InvalidInputError(f"approximate must return shape {G.shape}; got {base.shape} and {rotated.shape}")
    max_error = float(np.max(np.linalg.norm(rotated - base @ R.T, axis=1)))
    scale = float(np.max(np.linalg.norm(base, axis=1)))
    return EquivarianceCheck(max_error=max_error, scale=scale, rtol=rtol)


def landmark_approximation(
    embeddings,
    landmark_indices,
    landmark_gradients,
    *,
    bandwidth: float | None = None,
    damping: float = DEFAULT_DAMPING,
) -> np.ndarray:
    """Approximate every sample's gradient as C G_L, kernel ridge on embeddings applied to landmarks.

    Parameters
    ----------
    embeddings : array_like, shape (n, e)
        Embeddings of all samples.
    landmark_indices : array_like of int, shape (L,)
        Rows of ``embeddings`` that are landmarks.
    landmark_gradients : array_like, shape (L, d)
        Exact gradients G_L of the landmarks.
    bandwidth, damping : float
        Kernel ridge settings, see :meth:`idopt.kernel_ridge.KernelRidge.fit`.

    Returns
    -------
    numpy.ndarray, shape (n, d)
        G_hat = C G_L with C = K(E, E_L) (K_LL + ridge I)^-1. C depends on the embeddings only,
        so G_hat is linear in G_L and rotating G_L by R rotates G_hat by R.
    """
    emb = _matrix(embeddings, "embeddings")
    indices = np.asarray(landmark_indices)
    if indices.ndim != 1 or indices.shape[0] == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidInputError(f"landmark_indices must be a non-empty 1-D integer array; got {indices!r}")
    if indices.min() < 0 or indices.max() >= emb.shape[0]:
        raise InvalidInputError(
            f"landmark_indices must lie in [0, {emb.shape[0]}) (rows of embeddings); "
            f"got values from {indices.min()} to {indices.max()}"
        )
    grads = _matrix(landmark_gradients, "landmark_gradients")
    if grads.shape[0] != indices.shape[0]:
        raise InvalidInputError(
            f"landmark_gradients must have one row per landmark ({indices.shape[0]}); got {grads.shape[0]}"
        )
    model = KernelRidge.fit(emb[indices], grads, bandwidth=bandwidth, damping=damping)
    return model.predict(emb)


__all__ = [
    "DEFAULT_CONFIDENCE",
    "EquivarianceCheck",
    "IsotropyEstimate",
    "MeanEstimate",
    "ScoreErrorEstimate",
    "ScoreMomentsEstimate",
    "apply_signed_permutation",
    "check_rotation_equivariance",
    "eigenvalue_ratio",
    "estimate_isotropy",
    "estimate_mean",
    "estimate_score_error",
    "estimate_score_moments",
    "first_order_weights",
    "isotropic_eigenvalue_ratio",
    "isotropic_variance",
    "landmark_approximation",
    "mean_squared_error",
    "random_orthogonal",
    "random_signed_permutation",
    "score_error_bound",
    "score_moments",
    "signed_permutation_matrix",
    "weight_error_bound",
    "weight_lipschitz_bound",
    "z_for_confidence",
]
