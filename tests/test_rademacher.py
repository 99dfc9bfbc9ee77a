"""Tests of the block-regenerated Rademacher projection."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradients.projection import Projector, make_projector
from gradients.rademacher import RademacherProjector, block_seed, rademacher_block
from idopt.errors import InvalidInputError


def reference_matrix(projector: RademacherProjector) -> torch.Tensor:
    """Assemble P = R / sqrt(d) (shape (d, N), float64) from the documented blocks of R^T."""
    blocks = []
    for index in range(projector.num_blocks):
        start = index * projector.block_rows
        stop = min(start + projector.block_rows, projector.input_dim)
        blocks.append(rademacher_block(projector.seed, index, stop - start, projector.proj_dim))
    r_transposed = torch.cat(blocks, dim=0).double()
    return r_transposed.T / math.sqrt(projector.proj_dim)


def test_block_seed_matches_spawn():
    children = np.random.SeedSequence(42).spawn(5)
    for index, child in enumerate(children):
        expected = int(child.generate_state(1, dtype=np.uint64)[0]) >> 1
        assert block_seed(42, index) == expected


def test_block_signs_balanced():
    # 2^16 independent +-1 entries have a mean with standard deviation 1 / 256, and
    # neighbours (same byte or not) have a correlation with the same standard deviation;
    # 5 sd is 0.0195.
    block = rademacher_block(seed=1, index=0, rows=256, cols=256).flatten()
    assert set(block.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(block.mean())) < 5 / 256
    for lag in [1, 7, 8]:
        correlation = float((block[:-lag] * block[lag:]).mean())
        assert abs(correlation) < 5 / 256, lag


def test_projector_matches_explicit_matrix():
    generator = torch.Generator().manual_seed(0)
    for input_dim, proj_dim, block_rows in [(1, 1, 1), (10, 3, 4), (97, 16, 10), (200, 64, 200)]:
        projector = RademacherProjector(input_dim, proj_dim, seed=5, block_rows=block_rows)
        x = torch.randn(3, input_dim, generator=generator)
        expected = x.double() @ reference_matrix(projector).T
        # float32 sum of N terms of size |x_i| / sqrt(d): error <= N * eps32 * ||x||_1 / sqrt(d).
        eps = float(torch.finfo(torch.float32).eps)
        atol = input_dim * eps * float(x.abs().sum(dim=1).max()) / math.sqrt(proj_dim) + 1e-30
        torch.testing.assert_close(projector(x).double(), expected, rtol=0, atol=atol)


def test_projector_identity_columns():
    projector = RademacherProjector(50, 8, seed=3, block_rows=7)
    matrix = projector(torch.eye(50)).T
    assert set((matrix * math.sqrt(8)).round().unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(matrix.double(), reference_matrix(projector), rtol=0, atol=1e-7)


def test_projector_deterministic():
    x = torch.randn(2, 300, generator=torch.Generator().manual_seed(1))
    projector = RademacherProjector(300, 32, seed=9, block_rows=50)
    assert torch.equal(projector(x), projector(x))
    assert torch.equal(projector(x), RademacherProjector(300, 32, seed=9, block_rows=50)(x))
    assert not torch.allclose(projector(x), RademacherProjector(300, 32, seed=10, block_rows=50)(x))


def test_projector_shapes_and_batches():
    projector = make_projector("rademacher", 120, 12, seed=2, block_rows=25)
    assert isinstance(projector, Projector)
    assert projector.num_blocks == 5
    assert RademacherProjector(120, 12, seed=0).block_rows == 120
    x = torch.randn(4, 120, generator=torch.Generator().manual_seed(2))
    batch = projector(x)
    assert batch.shape == (4, 12)
    assert batch.dtype == torch.float32
    for row in range(4):
        torch.testing.assert_close(batch[row], projector(x[row]))
    assert projector(x[0]).shape == (12,)
    assert projector(torch.zeros(0, 120)).shape == (0, 12)
    rounded = x.to(torch.bfloat16)
    torch.testing.assert_close(projector(rounded), projector(rounded.float()))


def test_projector_unbiased_monte_carlo():
    # Over S = 400 seeds the sample mean of ||Px||^2 (or <Px, Py>) has standard error
    # SE = sample_std / sqrt(S); a correct projector misses the truth by more than 5 SE
    # with probability below 1e-6 under the normal approximation. For d = 8,
    # Var(||Px||^2) = 2 (||x||^4 - sum x_i^4) / d, so 5 SE is about 12 % of ||x||^2 and
    # a scale error such as 1 / d in place of 1 / sqrt(d) fails.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(60, generator=generator, dtype=torch.float64)
    y = 0.6 * x + torch.randn(60, generator=generator, dtype=torch.float64)
    squared_norms = []
    inner_products = []
    for seed in range(400):
        projector = RademacherProjector(60, 8, seed=seed, block_rows=16)
        px, py = projector(torch.stack([x, y])).double()
        squared_norms.append(float(px @ px))
        inner_products.append(float(px @ py))
    for samples, truth in [(squared_norms, float(x @ x)), (inner_products, float(x @ y))]:
        samples = np.asarray(samples)
        standard_error = samples.std(ddof=1) / math.sqrt(samples.size)
        assert standard_error > 0
        assert abs(samples.mean() - truth) < 5 * standard_error, (samples.mean(), truth)


@settings(max_examples=20, deadline=None)
@given(
    input_dim=st.integers(1, 200),
    proj_dim=st.integers(1, 40),
    block_rows=st.integers(1, 250),
    seed=st.integers(0, 2**63 - 1),
)
def test_projector_linear_property(input_dim, proj_dim, block_rows, seed):
    """Property: P(a x + y) = a P x + P y and P x = R x / sqrt(d) for any block size."""
    projector = RademacherProjector(input_dim, proj_dim, seed=seed, block_rows=block_rows)
    generator = torch.Generator().manual_seed(seed % 1000)
    x = torch.randn(input_dim, generator=generator, dtype=torch.float64)
    y = torch.randn(input_dim, generator=generator, dtype=torch.float64)
    # float32 rounding: each output sums N terms, error <= N * eps32 * (|x| + |y|)_1 * 4 / sqrt(d).
    eps = float(torch.finfo(torch.float32).eps)
    atol = 4 * input_dim * eps * float((x.abs() + y.abs()).sum() * 3) / math.sqrt(proj_dim)
    combined = projector(2.0 * x + y).double()
    parts = 2.0 * projector(x).double() + projector(y).double()
    torch.testing.assert_close(combined, parts, rtol=0, atol=atol)
    torch.testing.assert_close(
        projector(x).double(), reference_matrix(projector) @ x, rtol=0, atol=atol
    )


def test_projector_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="block_rows"):
        RademacherProjector(10, 2, seed=0, block_rows=0)
    with pytest.raises(InvalidInputError, match="proj_dim"):
        RademacherProjector(10, 0, seed=0)
    projector = RademacherProjector(10, 2, seed=0)
    with pytest.raises(InvalidInputError, match=r"got shape \(11,\)"):
        projector(torch.zeros(11))
    with pytest.raises(InvalidInputError, match="bool"):
        projector(torch.zeros(10, dtype=torch.bool))
    bad = torch.zeros(10)
    bad[3] = float("-inf")
    with pytest.raises(InvalidInputError, match="got 1 NaN or infinite"):
        projector(bad)
