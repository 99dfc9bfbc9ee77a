"""Tests of the fast Walsh-Hadamard transform and the randomized Hadamard projection."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradients import hadamard as hadamard_module
from gradients.hadamard import (
    HadamardProjector,
    fwht,
    hadamard_matrix,
    kernel_available,
    sample_subset,
    two_sided_hadamard,
)
from gradients.projection import BackendUnavailableError, Projector, make_projector
from idopt.errors import InvalidInputError

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
FLOAT64_EPS = float(torch.finfo(torch.float64).eps)


def reference_matrix(projector: HadamardProjector) -> torch.Tensor:
    """Build P = sqrt(D / d) * S (H_D / sqrt(D)) diag(s), first N columns, in float64."""
    size = projector.padded_dim
    h_normalized = hadamard_matrix(size, torch.float64) / math.sqrt(size)
    signs = projector.signs.to(torch.float64).cpu()
    rows = h_normalized[projector.subset.cpu()] * signs
    return math.sqrt(size / projector.proj_dim) * rows[:, : projector.input_dim]


def projection_atol(projector: HadamardProjector, x: torch.Tensor) -> float:
    """Bound the float32 rounding error of one projected coordinate.

    Each output is a signed sum of the N inputs times 1 / sqrt(d), accumulated over
    ceil(log2(D) / 4) float32 passes; the error of such a sum is at most about
    (passes + 1) * eps32 * sum |x_i| / sqrt(d). The factor 4 is a safety margin.
    """
    passes = max(1, math.ceil(math.log2(projector.padded_dim) / 4))
    l1 = float(x.abs().sum(dim=-1).max())
    return 4 * (passes + 1) * FLOAT32_EPS * l1 / math.sqrt(projector.proj_dim) + 1e-30


def fake_kernel(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Stand in for fast_hadamard_transform.hadamard_transform: H x * scale on the last dim."""
    return fwht(x, normalized=False) * scale


# ---------------------------------------------------------------------------- fwht


def test_hadamard_matrix_matches_scipy():
    for size in [1, 2, 4, 8, 64, 256]:
        expected = torch.from_numpy(scipy.linalg.hadamard(size).astype(np.float32))
        assert torch.equal(hadamard_matrix(size), expected), size


def test_hadamard_matrix_orthogonal():
    for size in [1, 2, 16, 128]:
        matrix = hadamard_matrix(size, torch.float64)
        assert torch.equal(matrix.T @ matrix, size * torch.eye(size, dtype=torch.float64)), size


def test_fwht_matches_dense_matrix():
    generator = torch.Generator().manual_seed(0)
    for k in range(11):
        size = 2**k
        x = torch.randn(3, size, generator=generator, dtype=torch.float64)
        dense = x @ hadamard_matrix(size, torch.float64).T
        # Each output sums `size` float64 terms of size O(1): error <= k * eps * ||x||_1.
        atol = (k + 1) * FLOAT64_EPS * float(x.abs().sum(dim=1).max())
        torch.testing.assert_close(fwht(x, normalized=False), dense, rtol=0, atol=atol)
        torch.testing.assert_close(
            fwht(x), dense / math.sqrt(size), rtol=0, atol=atol / math.sqrt(size)
        )


def test_fwht_orthonormal():
    for size in [1, 2, 8, 32, 512]:
        h = fwht(torch.eye(size, dtype=torch.float64))
        torch.testing.assert_close(h.T @ h, torch.eye(size, dtype=torch.float64))


def test_fwht_preserves_norm_and_inverts():
    x = torch.randn(4, 2**12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = fwht(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))
    torch.testing.assert_close(fwht(y), x)


def test_fwht_keeps_leading_shape_and_input():
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    y = fwht(x)
    assert y.shape == (2, 3, 16)
    assert torch.equal(x, before)
    torch.testing.assert_close(y[1, 2], fwht(x[1, 2]))


def test_fwht_half_inputs_give_float32():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    for dtype in [torch.float16, torch.bfloat16]:
        rounded = x.to(dtype)
        y = fwht(rounded)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, fwht(rounded.float()))


def test_fwht_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="power of two"):
        fwht(torch.zeros(3, 12))
    with pytest.raises(InvalidInputError, match="floating-point"):
        fwht(torch.zeros(8, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="at least one dimension"):
        fwht(torch.tensor(1.0))
    with pytest.raises(InvalidInputError, match="size"):
        hadamard_matrix(12)


def test_two_sided_equals_flat_fwht():
    generator = torch.Generator().manual_seed(4)
    for rows, cols in [(1, 1), (2, 1), (2, 2), (4, 2), (8, 8), (16, 4), (32, 32)]:
        x = torch.randn(3, rows, cols, generator=generator, dtype=torch.float64)
        expected = fwht(x.reshape(3, rows * cols)).reshape(3, rows, cols)
        torch.testing.assert_close(two_sided_hadamard(x), expected)
        # Written out: Y = H_R X H_C / sqrt(R C).
        dense = (
            hadamard_matrix(rows, torch.float64) @ x @ hadamard_matrix(cols, torch.float64)
        ) / math.sqrt(rows * cols)
        torch.testing.assert_close(two_sided_hadamard(x), dense)


# ---------------------------------------------------------------------------- subset


def test_subset_distinct_sorted():
    for size, count in [(1, 1), (8, 8), (64, 3), (1024, 100), (2**20, 4096), (100, 30)]:
        subset = sample_subset(size, count, torch.Generator().manual_seed(5))
        assert subset.shape == (count,)
        assert torch.equal(subset, subset.unique()), (size, count)
        assert int(subset.min()) >= 0
        assert int(subset.max()) < size


def test_subset_uniform():
    # 4000 draws of 1 index out of 8 (the rejection path): each count is Binomial(4000, 1/8)
    # with standard deviation sqrt(4000 * 1/8 * 7/8) = 20.9, so 5 sd is 105.
    generator = torch.Generator().manual_seed(6)
    counts = torch.zeros(8)
    for _ in range(4000):
        counts[sample_subset(8, 1, generator)] += 1
    assert float((counts - 500).abs().max()) < 105


# ---------------------------------------------------------------------------- projector


def test_projector_matches_explicit_matrix():
    generator = torch.Generator().manual_seed(7)
    for input_dim, proj_dim in [(1, 1), (2, 1), (5, 3), (64, 16), (100, 120), (300, 37)]:
        projector = HadamardProjector(input_dim, proj_dim, seed=11)
        x = torch.randn(4, input_dim, generator=generator)
        expected = x.double() @ reference_matrix(projector).T
        atol = projection_atol(projector, x)
        torch.testing.assert_close(projector(x).double(), expected, rtol=0, atol=atol)


def test_projector_identity_columns_give_matrix():
    projector = HadamardProjector(200, 24, seed=3)
    from_columns = projector(torch.eye(200)).T
    torch.testing.assert_close(
        from_columns.double(), reference_matrix(projector), rtol=0, atol=1e-6
    )


def test_projector_rows_orthogonal_unpadded():
    # For N = D the rows of P are sqrt(D / d) times distinct rows of an orthonormal matrix.
    projector = HadamardProjector(256, 32, seed=9)
    matrix = projector(torch.eye(256, dtype=torch.float64)).T.double()
    torch.testing.assert_close(matrix @ matrix.T, (256 / 32) * torch.eye(32, dtype=torch.float64))


def test_projector_shapes_and_attributes():
    projector = make_projector("hadamard", 1000, 50, seed=1)
    assert isinstance(projector, Projector)
    assert projector.padded_dim == 1024
    assert projector.grid_shape == (32, 32)
    assert HadamardProjector(2**11, 4, seed=0).grid_shape == (64, 32)
    assert projector.signs.shape == (1024,)
    assert set(projector.signs.unique().tolist()) == {-1, 1}
    assert projector.subset.shape == (50,)
    assert projector.backend == "torch"
    assert projector(torch.zeros(1000)).shape == (50,)
    assert projector(torch.zeros(3, 1000)).shape == (3, 50)
    assert projector(torch.zeros(0, 1000)).shape == (0, 50)


def test_projector_seed_determinism():
    x = torch.randn(2, 500, generator=torch.Generator().manual_seed(8))
    first = HadamardProjector(500, 20, seed=4)
    assert torch.equal(first(x), first(x))
    assert torch.equal(first(x), HadamardProjector(500, 20, seed=4)(x))
    assert not torch.allclose(first(x), HadamardProjector(500, 20, seed=5)(x))


def test_projector_batch_equals_rows():
    projector = HadamardProjector(333, 40, seed=2)
    x = torch.randn(6, 333, generator=torch.Generator().manual_seed(9))
    batch = projector(x)
    for row in range(6):
        torch.testing.assert_close(batch[row], projector(x[row]))


def test_projector_chunks_match_single_pass():
    x = torch.randn(7, 1500, generator=torch.Generator().manual_seed(10))
    whole = HadamardProjector(1500, 64, seed=6)
    one_row = HadamardProjector(1500, 64, seed=6, chunk_bytes=1)
    two_rows = HadamardProjector(1500, 64, seed=6, chunk_bytes=2 * 4 * 2048)
    assert torch.equal(whole(x), one_row(x))
    assert torch.equal(whole(x), two_rows(x))


def test_projector_half_inputs():
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(11))
    projector = HadamardProjector(100, 16, seed=0)
    for dtype in [torch.float16, torch.bfloat16, torch.float64]:
        rounded = x.to(dtype)
        y = projector(rounded)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, projector(rounded.float()))


def test_projector_unbiased_monte_carlo():
    # Over S independent seeds the sample mean of ||Px||^2 (or <Px, Py>) has standard
    # error SE = sample_std / sqrt(S); a correct projector misses the truth by more than
    # 5 SE with probability below 1e-6 under the normal approximation. With S = 400 and
    # d / D = 16 / 128, 5 SE is about 10 % of the truth, so a wrong scale such as
    # sqrt(N / d) (a 22 % bias for N = 100) fails.
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(100, generator=generator, dtype=torch.float64)
    y = 0.6 * x + torch.randn(100, generator=generator, dtype=torch.float64)
    squared_norms = []
    inner_products = []
    for seed in range(400):
        projector = HadamardProjector(100, 16, seed=seed)
        px, py = projector(torch.stack([x, y])).double()
        squared_norms.append(float(px @ px))
        inner_products.append(float(px @ py))
    for samples, truth in [(squared_norms, float(x @ x)), (inner_products, float(x @ y))]:
        samples = np.asarray(samples)
        standard_error = samples.std(ddof=1) / math.sqrt(samples.size)
        assert standard_error > 0
        assert abs(samples.mean() - truth) < 5 * standard_error, (samples.mean(), truth)


@settings(max_examples=25, deadline=None)
@given(
    input_dim=st.integers(1, 300),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**63 - 1),
)
def test_projector_matrix_property(input_dim, fraction, seed):
    """Property: for any N, d in [1, D] and seed, project(x) equals the explicit P x."""
    padded = 2 ** (input_dim - 1).bit_length()
    proj_dim = max(1, round(fraction * padded))
    projector = HadamardProjector(input_dim, proj_dim, seed=seed)
    x = torch.randn(2, input_dim, generator=torch.Generator().manual_seed(seed % 1000))
    expected = x.double() @ reference_matrix(projector).T
    atol = projection_atol(projector, x)
    torch.testing.assert_close(projector(x).double(), expected, rtol=0, atol=atol)


def test_kernel_glue_with_fake_kernel(monkeypatch):
    # The CUDA path reshapes to a grid, transforms both axes and reads the subset from
    # the transposed grid. A torch stand-in for the kernel checks that bookkeeping on CPU.
    monkeypatch.setattr(hadamard_module, "_load_kernel", lambda: fake_kernel)
    monkeypatch.setattr(hadamard_module, "_check_kernel_device", lambda device: None)
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(13))
    for input_dim in [1, 2, 3, 100, 5000]:
        rows = x[:, :input_dim]
        with_kernel = HadamardProjector(input_dim, 1, seed=3, backend="cuda_kernel")
        with_torch = HadamardProjector(input_dim, 1, seed=3, backend="torch")
        assert with_kernel.backend == "cuda_kernel"
        torch.testing.assert_close(with_kernel(rows), with_torch(rows))
    with_kernel = HadamardProjector(5000, 300, seed=3, backend="cuda_kernel", chunk_bytes=1)
    torch.testing.assert_close(with_kernel(x), HadamardProjector(5000, 300, seed=3)(x))


# ---------------------------------------------------------------------------- errors


def test_projector_rejects_bad_arguments():
    with pytest.raises(InvalidInputError, match=r"proj_dim must be in \[1, 128\], got 129"):
        HadamardProjector(100, 129, seed=0)
    with pytest.raises(InvalidInputError, match="proj_dim"):
        HadamardProjector(100, 0, seed=0)
    with pytest.raises(InvalidInputError, match="input_dim"):
        HadamardProjector(0, 1, seed=0)
    with pytest.raises(InvalidInputError, match="seed"):
        HadamardProjector(10, 1, seed=-1)
    with pytest.raises(InvalidInputError, match="backend"):
        HadamardProjector(10, 1, seed=0, backend="fast")
    with pytest.raises(InvalidInputError, match="kind"):
        make_projector("gaussian", 10, 1, seed=0)


def test_projector_rejects_bad_input():
    projector = HadamardProjector(10, 4, seed=0)
    with pytest.raises(InvalidInputError, match=r"input_dim = 10, got shape \(2, 9\)"):
        projector(torch.zeros(2, 9))
    with pytest.raises(InvalidInputError, match="shape"):
        projector(torch.zeros(2, 2, 10))
    with pytest.raises(InvalidInputError, match="int64"):
        projector(torch.zeros(10, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="torch.Tensor"):
        projector(np.zeros(10))
    bad = torch.zeros(3, 10)
    bad[0, 1] = float("nan")
    bad[2, 5] = float("inf")
    with pytest.raises(InvalidInputError, match="got 2 NaN or infinite"):
        projector(bad)


@pytest.mark.skipif(kernel_available(), reason="fast_hadamard_transform is installed")
def test_cuda_kernel_missing_names_install():
    with pytest.raises(BackendUnavailableError, match="pip install fast-hadamard-transform"):
        HadamardProjector(10, 4, seed=0, backend="cuda_kernel")


# ---------------------------------------------------------------------------- CUDA

needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernel_available()),
    reason="needs a CUDA device and the fast_hadamard_transform package",
)


@pytest.mark.cuda
@needs_kernel
def test_cuda_kernel_matches_torch():
    generator = torch.Generator().manual_seed(14)
    for input_dim in [1, 3, 1000, 2**15, 2**16 + 3]:
        x = torch.randn(3, input_dim, generator=generator)
        on_kernel = HadamardProjector(input_dim, 16, seed=5, device="cuda", backend="cuda_kernel")
        on_torch = HadamardProjector(input_dim, 16, seed=5, device="cuda", backend="torch")
        on_cpu = HadamardProjector(input_dim, 16, seed=5)
        # float32 sums of D terms: error bounded as in projection_atol.
        atol = projection_atol(on_cpu, x)
        torch.testing.assert_close(on_kernel(x).cpu(), on_torch(x).cpu(), rtol=0, atol=atol)
        torch.testing.assert_close(on_kernel(x).cpu(), on_cpu(x), rtol=0, atol=atol)
    grid = torch.randn(2, 64, 128, device="cuda")
    torch.testing.assert_close(
        two_sided_hadamard(grid, backend="cuda_kernel"), two_sided_hadamard(grid)
    )
