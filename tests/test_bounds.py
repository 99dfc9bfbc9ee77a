"""Tests of the approximation bounds (idopt.bounds), their estimators and `idopt bounds`.

Monte-Carlo tolerances. Every statistical check compares an estimate with the value a
result predicts through the estimator's standard error: a check fails when the estimate is
more than Z = 5 standard errors away. Under the normal approximation that happens with
probability 5.7e-7 per check when the statement holds, so the tests are stable, while the
negative controls build a violation of 2 Z standard errors or more, which the same check
detects. Hypothesis runs derandomized, so every run draws the same examples.
"""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from idopt.bounds import (
    check_rotation_equivariance,
    estimate_isotropy,
    estimate_mean,
    estimate_score_error,
    estimate_score_moments,
    first_order_weights,
    isotropic_variance,
    landmark_approximation,
    mean_squared_error,
    random_orthogonal,
    random_signed_permutation,
    apply_signed_permutation,
    score_error_bound,
    score_moments,
    signed_permutation_matrix,
    weight_error_bound,
    weight_lipschitz_bound,
    z_for_confidence,
)
from idopt.bounds_report import (
    APPROX_FILE,
    EXACT_FILE,
    TARGETS_FILE,
    compute_bounds_report,
)
from idopt.cli import main
from idopt.errors import InvalidInputError

Z = 5.0
CONFIDENCE = 1.0 - 2.0 * stats.norm.sf(Z)

# Rounding allowance of the Lipschitz inequality: solve_first_order certifies its KKT
# residuals to 1e-9 relative (idopt.first_order.DEFAULT_TOL), and the weights sum to n.
LIPSCHITZ_ATOL_PER_SAMPLE = 1e-9

PROPERTY_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def unit_variance_noise(rng: np.random.Generator, distribution: str, shape) -> np.ndarray:
    """Draw i.i.d. entries with mean 0 and variance 1 from a Gaussian or a scaled Student t."""
    if distribution == "gaussian":
        return rng.standard_normal(shape)
    dof = {"student_t3": 3, "student_t5": 5}[distribution]
    # A Student t with dof degrees of freedom has variance dof / (dof - 2).
    return rng.standard_t(dof, size=shape) * np.sqrt((dof - 2) / dof)


# --------------------------------------------------------------------------- estimates


def test_estimate_mean_formula():
    values = np.array([1.0, 2.0, 3.0, 6.0])
    estimate = estimate_mean(values, confidence=0.95)
    z = stats.norm.isf(0.025)
    expected_se = np.std(values, ddof=1) / 2.0
    assert estimate.mean == 3.0
    assert estimate.standard_error == pytest.approx(expected_se, rel=1e-12)
    assert estimate.low == pytest.approx(3.0 - z * expected_se, rel=1e-12)
    assert estimate.high == pytest.approx(3.0 + z * expected_se, rel=1e-12)
    assert estimate.z_score(3.0 + expected_se) == pytest.approx(-1.0)


def test_estimate_mean_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="at least 2"):
        estimate_mean([1.0])
    with pytest.raises(InvalidInputError, match="confidence"):
        estimate_mean([1.0, 2.0], confidence=1.0)
    with pytest.raises(InvalidInputError, match="NaN"):
        estimate_mean([1.0, np.nan])


def test_z_for_confidence_matches_table():
    assert z_for_confidence(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for_confidence(CONFIDENCE) == pytest.approx(Z)


# --------------------------------------------------------------------------- Lemma D.1

SCORE_DRAWS = 4000


def lemma_d1_draws(seed, dim, sigma, distribution, bias=0.0):
    """Return g, t and SCORE_DRAWS draws of g + bias * t + sigma * noise."""
    rng = np.random.default_rng(seed)
    g = unit(rng.standard_normal(dim))
    t = unit(rng.standard_normal(dim))
    noise = sigma * unit_variance_noise(rng, distribution, (SCORE_DRAWS, dim))
    return g, t, g + bias * t + noise


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(2, 32),
    sigma=st.floats(0.01, 1.0),
    distribution=st.sampled_from(["gaussian", "student_t3", "student_t5"]),
)
def test_lemma_d1_moments_hold(seed, dim, sigma, distribution):
    """Property: for isotropic zero-mean errors, E[S] = <g, t> and Var(S) = E||e||^2 / d."""
    g, t, draws = lemma_d1_draws(seed, dim, sigma, distribution)
    estimate = estimate_score_moments(g, t, draws, confidence=CONFIDENCE)

    assert estimate.unbiased, estimate.score
    predicted_mean, predicted_variance = score_moments(g, t, dim * sigma**2)
    assert predicted_mean == estimate.expected_score
    # A squared score has a standard error only when the error has a finite fourth moment,
    # and a Student t with 3 degrees of freedom has none, so the variance checks skip it.
    if distribution != "student_t3":
        assert estimate.variance_matches, estimate.variance_gap
        assert estimate.score_variance.contains(predicted_variance), estimate.score_variance


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(2, 32),
    sigma=st.floats(0.01, 1.0),
    distribution=st.sampled_from(["gaussian", "student_t3", "student_t5"]),
)
def test_lemma_d1_detects_bias(seed, dim, sigma, distribution):
    """Property: a bias of 2 Z standard errors along t makes E[S] != <g, t> detected."""
    # The standard error of the mean score is sigma / sqrt(r) because Var(S) = sigma^2.
    bias = 2 * Z * sigma / np.sqrt(SCORE_DRAWS)
    g, t, draws = lemma_d1_draws(seed, dim, sigma, distribution, bias=bias)
    estimate = estimate_score_moments(g, t, draws, confidence=CONFIDENCE)
    assert not estimate.unbiased, estimate.score


def test_lemma_d1_detects_anisotropic_error():
    rng = np.random.default_rng(3)
    dim = 16
    g, t = unit(rng.standard_normal(dim)), unit(rng.standard_normal(dim))
    # All error variance along t: Var(S) = sigma^2 while E||e||^2 / d = sigma^2 / d.
    draws = g + 0.3 * rng.standard_normal((SCORE_DRAWS, 1)) * t
    estimate = estimate_score_moments(g, t, draws, confidence=CONFIDENCE)
    assert estimate.unbiased
    assert not estimate.variance_matches


def test_score_moments_rejects_non_unit_target():
    with pytest.raises(InvalidInputError, match="unit length"):
        score_moments(np.ones(3), np.ones(3), 1.0)


# --------------------------------------------------------------------------- Lemma D.2

ISOTROPY_DRAWS = 4000


def draw_x(rng, distribution, dim, count, scales, sparsity):
    if distribution == "sparse":
        mask = rng.random((count, dim)) < sparsity
        return mask * rng.standard_normal((count, dim)) * scales
    return unit_variance_noise(rng, distribution, (count, dim)) * scales


def rotate_each(rng, x):
    """Apply an independent random signed permutation to every row of x."""
    out = np.empty_like(x)
    for k in range(x.shape[0]):
        perm, signs = random_signed_permutation(x.shape[1], rng)
        out[k] = apply_signed_permutation(x[k], perm, signs)
    return out


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(2, 10),
    distribution=st.sampled_from(["gaussian", "student_t3", "sparse"]),
    spread=st.floats(0.0, 3.0),
    sparsity=st.floats(0.05, 0.5),
)
def test_lemma_d2_signed_permutation_isotropic(seed, dim, distribution, spread, sparsity):
    """Property: for anisotropic, heavy-tailed or sparse x, Cov(P D x) = (E||x||^2 / d) I."""
    rng = np.random.default_rng(seed)
    scales = np.exp(np.linspace(0.0, spread, dim))
    x = draw_x(rng, distribution, dim, ISOTROPY_DRAWS, scales, sparsity)
    y = rotate_each(rng, x)
    # Student t with 3 degrees of freedom has no fourth moment, so the raw entries y_i y_j
    # have no standard error; the directions y / ||y|| are bounded and test the same lemma
    # conditional on x.
    heavy = distribution == "student_t3"
    estimate = estimate_isotropy(y, confidence=CONFIDENCE, normalize=heavy)
    assert estimate.isotropic, (estimate.max_abs_z, estimate.z_threshold)
    if not heavy:
        per_entry_second_moment = 1.0 if distribution == "gaussian" else sparsity
        expected = isotropic_variance(per_entry_second_moment * np.sum(scales**2), dim)
        assert estimate.variance.contains(expected), (estimate.variance, expected)


def test_lemma_d2_detects_anisotropy_without_rotation():
    rng = np.random.default_rng(11)
    dim = 6
    scales = np.linspace(1.0, 2.0, dim)
    x = rng.standard_normal((ISOTROPY_DRAWS, dim)) * scales
    without = estimate_isotropy(x, confidence=CONFIDENCE)
    with_rotation = estimate_isotropy(rotate_each(rng, x), confidence=CONFIDENCE)
    assert not without.isotropic
    assert with_rotation.isotropic


def test_lemma_d2_exact_over_all_signed_permutations():
    # Averaging over all 2^d d! signed permutations gives the expectation exactly.
    dim = 3
    x = np.array([0.5, -2.0, 1.25])
    total = np.zeros((dim, dim))
    count = 0
    for perm in itertools.permutations(range(dim)):
        for signs in itertools.product([-1.0, 1.0], repeat=dim):
            matrix = signed_permutation_matrix(np.array(perm), np.array(signs))
            y = matrix @ x
            np.testing.assert_allclose(y, apply_signed_permutation(x, np.array(perm), np.array(signs)))
            total += np.outer(y, y)
            count += 1
    np.testing.assert_allclose(total / count, np.eye(dim) * (x @ x) / dim, atol=1e-15)


# --------------------------------------------------------------------------- Theorem D.3, Corollary D.4

SCORE_ERROR_DRAWS = 1500


def noisy_approximation(sigma, distribution):
    def approximate(G, rng):
        return G + sigma * unit_variance_noise(rng, distribution, G.shape)
    return approximate


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 20),
    dim=st.integers(2, 32),
    sigma=st.floats(0.01, 1.0),
    distribution=st.sampled_from(["gaussian", "student_t5"]),
    lam=st.floats(-2.0, 2.0).map(lambda exponent: 10.0**exponent),
)
def test_theorem_d3_noisy_approximation(seed, n, dim, sigma, distribution, lam):
    """Property: E||p - p_hat||^2 <= n Delta^2 / d, with equality for isotropic errors, and Corollary D.4."""
    rng = np.random.default_rng(seed)
    G = unit_rows(rng.standard_normal((n, dim)))
    t = unit(rng.standard_normal(dim))
    estimate = estimate_score_error(
        G, t, noisy_approximation(sigma, distribution), SCORE_ERROR_DRAWS,
        seed=seed, lam=lam, confidence=CONFIDENCE,
    )
    assert estimate.within_bound, estimate.gap
    assert estimate.gap.contains(0.0), estimate.gap
    assert estimate.bound.contains(score_error_bound(n, dim * sigma**2, dim)), estimate.bound

    # Corollary D.4 holds draw by draw, so it holds for the means without a statistical margin.
    assert estimate.max_lipschitz_ratio <= 1.0 + LIPSCHITZ_ATOL_PER_SAMPLE * n
    assert estimate.weight_error.mean <= estimate.score_error.mean / lam**2 * (1.0 + 1e-9)
    np.testing.assert_allclose(estimate.weight_bound.mean, estimate.bound.mean / lam**2, rtol=1e-12)


@st.composite
def landmark_problems(draw):
    n = draw(st.integers(3, 25))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "n": n,
        "num_landmarks": draw(st.integers(1, n)),
        "dim": draw(st.integers(2, 24)),
        "embedding_dim": draw(st.integers(1, 6)),
        "damping": 10.0 ** draw(st.floats(-4.0, 0.0)),
    }


def build_landmark_problem(problem):
    rng = np.random.default_rng(problem["seed"])
    embeddings = rng.standard_normal((problem["n"], problem["embedding_dim"]))
    landmarks = np.sort(rng.choice(problem["n"], problem["num_landmarks"], replace=False))
    G = unit_rows(rng.standard_normal((problem["n"], problem["dim"])))

    def approximate(gradients, rng=None):
        return landmark_approximation(embeddings, landmarks, gradients[landmarks], damping=problem["damping"])

    return rng, G, approximate


@PROPERTY_SETTINGS
@given(problem=landmark_problems())
def test_landmark_approximation_equivariant(problem):
    """Property: rotating all gradients by any orthonormal R rotates every landmark approximation by R."""
    rng, G, approximate = build_landmark_problem(problem)
    haar = check_rotation_equivariance(approximate, G, random_orthogonal(problem["dim"], rng))
    perm, signs = random_signed_permutation(problem["dim"], rng)
    signed = check_rotation_equivariance(approximate, G, signed_permutation_matrix(perm, signs))
    assert haar.equivariant, haar
    assert signed.equivariant, signed


@settings(max_examples=10, deadline=None, derandomize=True)
@given(problem=landmark_problems())
def test_theorem_d3_landmark_approximation(problem):
    """Property: the deterministic landmark approximation meets n Delta^2 / d over a random basis."""
    rng, G, approximate = build_landmark_problem(problem)
    t = unit(rng.standard_normal(problem["dim"]))
    estimate = estimate_score_error(G, t, approximate, SCORE_ERROR_DRAWS, seed=problem["seed"], confidence=CONFIDENCE)
    assert estimate.within_bound, estimate.gap
    # With equivariance every draw has the same Delta^2, the one of the unrotated gradients.
    expected_bound = score_error_bound(problem["n"], mean_squared_error(G, approximate(G)), problem["dim"])
    np.testing.assert_allclose(estimate.bound.mean, expected_bound, rtol=1e-9)


def test_equivariance_check_detects_coordinatewise_map():
    rng, G, approximate = build_landmark_problem(
        {"seed": 5, "n": 12, "num_landmarks": 6, "dim": 8, "embedding_dim": 3, "damping": 1e-3}
    )

    def squashed(gradients):
        return np.tanh(3.0 * approximate(gradients))

    haar = check_rotation_equivariance(squashed, G, random_orthogonal(8, rng))
    assert not haar.equivariant, haar
    # An odd coordinate-wise map commutes with signed permutations, so only a general
    # rotation reveals it.
    perm, signs = random_signed_permutation(8, rng)
    assert check_rotation_equivariance(squashed, G, signed_permutation_matrix(perm, signs)).equivariant


def test_theorem_d3_detects_non_equivariant_error():
    rng = np.random.default_rng(8)
    n, dim, sigma = 10, 16, 0.2
    G = unit_rows(rng.standard_normal((n, dim)))
    t = unit(rng.standard_normal(dim))

    def along_target(gradients, generator):
        # Unbiased but all error along t, whatever the basis: E||p - p_hat||^2 = n sigma^2,
        # d times the bound n sigma^2 / d.
        return gradients + sigma * generator.standard_normal((gradients.shape[0], 1)) * t

    fixed = np.random.default_rng(0)
    check = check_rotation_equivariance(
        lambda gradients: along_target(gradients, np.random.default_rng(0)), G, random_orthogonal(dim, fixed)
    )
    assert not check.equivariant
    estimate = estimate_score_error(G, t, along_target, SCORE_ERROR_DRAWS, seed=1, confidence=CONFIDENCE)
    assert not estimate.within_bound, estimate.gap


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    shift=st.floats(1e-3, 10.0),
    lam=st.floats(-3.0, 2.0).map(lambda exponent: 10.0**exponent),
)
def test_corollary_d4_lipschitz(seed, n, shift, lam):
    """Property: ||w(p) - w(p_hat)|| <= ||p - p_hat|| / lam for every pair of score vectors."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n)
    p_hat = p + shift * rng.standard_normal(n)
    distance = np.linalg.norm(first_order_weights(p, lam) - first_order_weights(p_hat, lam))
    assert distance <= weight_lipschitz_bound(p, p_hat, lam) + LIPSCHITZ_ATOL_PER_SAMPLE * n


def test_bound_formulas():
    assert score_error_bound(10, 0.5, 4) == 1.25
    assert weight_error_bound(10, 0.5, 4, 0.5) == 5.0
    with pytest.raises(InvalidInputError, match="lam"):
        weight_error_bound(10, 0.5, 4, 0.0)
    with pytest.raises(InvalidInputError, match="dim"):
        score_error_bound(10, 0.5, 0)


def test_estimate_score_error_rejects_non_unit_rows():
    with pytest.raises(InvalidInputError, match="row 1"):
        estimate_score_error(np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([1.0, 0.0]), lambda G, rng: G, 4)


# --------------------------------------------------------------------------- Hadamard projection

HADAMARD_SEEDS = 1500


def test_hadamard_transform_orthonormal():
    torch = pytest.importorskip("torch")
    from gradients.hadamard import fwht

    size = 64
    matrix = fwht(torch.eye(size, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(size), atol=1e-13)


def hadamard_moments(torch, x, y, scale=1.0):
    from gradients.hadamard import HadamardProjector

    batch = torch.from_numpy(np.stack([x, y]))
    squared, inner = np.empty(HADAMARD_SEEDS), np.empty(HADAMARD_SEEDS)
    for seed in range(HADAMARD_SEEDS):
        projected = HadamardProjector(x.shape[0], 8, seed).project(batch).double().numpy() * scale
        squared[seed] = projected[0] @ projected[0]
        inner[seed] = projected[0] @ projected[1]
    return estimate_mean(squared, CONFIDENCE), estimate_mean(inner, CONFIDENCE)


def test_hadamard_projection_unbiased():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    # N = 40 pads to D = 64, so P keeps d = 8 of 64 transformed coordinates.
    x, y = rng.standard_normal(40), rng.standard_normal(40)
    squared, inner = hadamard_moments(torch, x, y)
    assert squared.contains(x @ x), squared
    assert inner.contains(x @ y), inner


def test_hadamard_projection_detects_missing_scale():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(40), rng.standard_normal(40)
    # Without the sqrt(D / d) factor E||P x||^2 = (d / D) ||x||^2 = ||x||^2 / 8.
    squared, _ = hadamard_moments(torch, x, y, scale=np.sqrt(8 / 64))
    assert not squared.contains(x @ x), squared


# --------------------------------------------------------------------------- report and CLI


def synthetic_stores(seed, n=300, dim=40, m=4, sigma=0.2, shrink=0.0, active=None):
    """Return exact gradients with varied norms, approximations and targets."""
    rng = np.random.default_rng(seed)
    norms = rng.uniform(0.5, 3.0, size=(n, 1))
    G = unit_rows(rng.standard_normal((n, dim))) * norms
    noise = sigma * rng.standard_normal((n, dim))
    if active is not None:
        noise[:, active:] = 0.0
    approx = (1.0 - shrink) * G + noise * norms
    targets = rng.standard_normal((m, dim)) * 7.0
    return G, approx, targets


def test_report_matches_direct_computation():
    G, approx, targets = synthetic_stores(0)
    report = compute_bounds_report(G, approx, targets, lam=0.3)
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    errors = (approx - G) / norms
    delta_squared = np.mean(np.sum(errors**2, axis=1))
    assert report.delta_squared == pytest.approx(delta_squared, rel=1e-12)
    assert report.score_bound == pytest.approx(300 * delta_squared / 40, rel=1e-12)
    assert report.weight_bound == pytest.approx(300 * delta_squared / (0.09 * 40), rel=1e-12)

    t = unit(targets[2])
    p, p_hat = (G / norms) @ t, (approx / norms) @ t
    assert report.targets[2].score_error == pytest.approx(np.sum((p - p_hat) ** 2), rel=1e-12)
    w, w_hat = first_order_weights(p, 0.3), first_order_weights(p_hat, 0.3)
    assert report.targets[2].weight_error == pytest.approx(np.sum((w - w_hat) ** 2), rel=1e-9)
    assert all(row.lipschitz_holds for row in report.targets)


def test_report_isotropic_errors_look_plausible():
    n, dim = 300, 40
    report = compute_bounds_report(*synthetic_stores(1, n=n, dim=dim), lam=0.3)
    assert abs(report.radial_bias.z_score(0.0)) <= Z
    # n ||mean e||^2 / trace(Cov) is chi^2_d / d for isotropic Gaussian errors: mean 1,
    # standard deviation sqrt(2 / d).
    ratio_squared = (report.bias_norm / report.bias_norm_expected) ** 2
    assert abs(ratio_squared - 1.0) <= Z * np.sqrt(2.0 / dim)
    # The spread of d coordinate variances has a relative standard error of about
    # 1 / sqrt(2 (d - 1)).
    tolerance = Z * report.coordinate_spread_isotropic / np.sqrt(2.0 * (dim - 1))
    assert abs(report.coordinate_spread - report.coordinate_spread_isotropic) <= tolerance
    # Each ratio ||p - p_hat||^2 / bound is about chi^2_n / n: mean 1, standard deviation sqrt(2 / n).
    for row in report.targets:
        assert abs(row.score_ratio - 1.0) <= Z * np.sqrt(2.0 / n)


def test_report_detects_shrinkage_bias():
    report = compute_bounds_report(*synthetic_stores(2, shrink=0.2), lam=0.3)
    # Shrinking by 0.2 gives <e_i, g_i> = -0.2 for every unit g_i.
    assert report.radial_bias.z_score(0.0) < -Z
    assert report.radial_bias.contains(-0.2)


def test_report_detects_anisotropic_errors():
    dim = 40
    report = compute_bounds_report(*synthetic_stores(3, dim=dim, active=5), lam=0.3)
    assert report.eigenvalue_ratio > report.eigenvalue_ratio_isotropic
    tolerance = Z * report.coordinate_spread_isotropic / np.sqrt(2.0 * (dim - 1))
    assert report.coordinate_spread > report.coordinate_spread_isotropic + tolerance


def write_run(folder, seed=0):
    G, approx, targets = synthetic_stores(seed)
    np.save(folder / EXACT_FILE, G.astype(np.float32))
    np.save(folder / APPROX_FILE, approx.astype(np.float32))
    np.save(folder / TARGETS_FILE, targets.astype(np.float32))
    return G, approx, targets


def test_cli_bounds_run_folder_writes_json(tmp_path, capsys):
    write_run(tmp_path)
    out = tmp_path / "report" / "bounds.json"
    assert main(["bounds", "--run", str(tmp_path), "--lam", "0.3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "n Delta^2 / d" in printed
    data = json.loads(out.read_text())
    assert data["n"] == 300
    assert data["dim"] == 40
    assert len(data["targets"]) == 4
    assert data["radial_bias"]["standard_error"] > 0


def test_cli_bounds_explicit_files_match_run(tmp_path):
    write_run(tmp_path)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["bounds", "--run", str(tmp_path), "--lam", "1", "--json", str(first)]) == 0
    arguments = ["--exact", str(tmp_path / EXACT_FILE), "--approx", str(tmp_path / APPROX_FILE),
                 "--targets", str(tmp_path / TARGETS_FILE)]
    assert main(["bounds", *arguments, "--lam", "1", "--json", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["targets"] == b["targets"]
    assert a["delta_squared"] == b["delta_squared"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--lam", "1"], "--run DIR, or all three"),
        (["--run", "{tmp}", "--exact", "{tmp}/x.npy", "--lam", "1"], "either --run"),
        (["--run", "{tmp}/missing", "--lam", "1"], "folder not found"),
        (["--run", "{tmp}", "--lam", "0"], "lam must be > 0"),
    ],
)
def test_cli_bounds_rejects_bad_arguments(tmp_path, capsys, arguments, message):
    write_run(tmp_path)
    filled = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    assert main(["bounds", *filled]) == 2
    assert message in capsys.readouterr().err


def test_cli_bounds_rejects_bad_files(tmp_path, capsys):
    G, approx, targets = write_run(tmp_path)
    (tmp_path / TARGETS_FILE).unlink()
    assert main(["bounds", "--run", str(tmp_path), "--lam", "1"]) == 2
    assert TARGETS_FILE in capsys.readouterr().err

    np.save(tmp_path / TARGETS_FILE, np.array([object()], dtype=object), allow_pickle=True)
    assert main(["bounds", "--run", str(tmp_path), "--lam", "1"]) == 2
    assert "--targets" in capsys.readouterr().err

    np.save(tmp_path / TARGETS_FILE, targets[:, :10])
    assert main(["bounds", "--run", str(tmp_path), "--lam", "1"]) == 2
    assert "d = 40 columns" in capsys.readouterr().err

    G[3] = 0.0
    np.save(tmp_path / EXACT_FILE, G)
    np.save(tmp_path / TARGETS_FILE, targets)
    assert main(["bounds", "--run", str(tmp_path), "--lam", "1"]) == 2
    assert "exact row 3 is zero" in capsys.readouterr().err
