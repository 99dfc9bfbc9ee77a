import numpy as np
import pytest
import torch

from gradients.jvp import JVPConfig, JVPEmbedder, last_token_index
from gradients.tokenize import TokenizedSample
from idopt.errors import InvalidInputError
from tests.tiny_models import tiny_model


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def test_last_token_index_both_paddings():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(left).tolist() == [3, 3, 3]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_batched_equals_one_at_a_time(kind):
    """Each row of a padded batch equals the sample embedded alone without padding."""
    model = tiny_model(kind, layers=3, dtype=torch.float64)
    embedder = JVPEmbedder(model, JVPConfig(num_blocks=2, num_directions=2, proj_dim=4096))
    ids, mask = _batch()
    with torch.no_grad():
        batched = embedder.embed_batch(ids, mask)
        for row in range(3):
            length = int(mask[row].sum())
            alone = embedder.embed_batch(ids[row:row + 1, :length], mask[row:row + 1, :length])
            torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-6)


def test_jvp_matches_central_differences():
    """J v from forward-mode AD equals (h(theta + t v) - h(theta - t v)) / 2t up to O(t^2).

    In float64 with t = 1e-4 the truncation error (t^2 times third derivatives) and the
    rounding error (about 1e-16 / t times the output scale) are both far below 1e-4 relative.
    """
    model = tiny_model("llama", layers=2, dtype=torch.float64)
    embedder = JVPEmbedder(model, JVPConfig(num_blocks=2, num_directions=1, proj_dim=4096))
    ids, mask = _batch()
    step = 1e-4
    direction = embedder.directions[0]
    with torch.no_grad():
        exact = embedder.embed_batch(ids, mask).double()
        plus = embedder._hidden_last({k: v + step * direction[k] for k, v in embedder.params.items()}, ids, mask)
        minus = embedder._hidden_last({k: v - step * direction[k] for k, v in embedder.params.items()}, ids, mask)
    numeric = (plus - minus) / (2 * step)
    error = (numeric - exact).abs().max() / exact.abs().max()
    assert error < 1e-4


def test_embedding_is_deterministic_and_seeded():
    model = tiny_model("llama", layers=2)
    ids, mask = _batch()
    with torch.no_grad():
        first = JVPEmbedder(model, JVPConfig(num_blocks=1, seed=3)).embed_batch(ids, mask)
        again = JVPEmbedder(model, JVPConfig(num_blocks=1, seed=3)).embed_batch(ids, mask)
        other = JVPEmbedder(model, JVPConfig(num_blocks=1, seed=4)).embed_batch(ids, mask)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_projection_applies_above_proj_dim():
    """Hidden 16 x 3 directions = 48 raw values: proj_dim 8 projects, proj_dim 64 keeps all 48."""
    model = tiny_model("llama", layers=2)
    ids, mask = _batch()
    with torch.no_grad():
        small = JVPEmbedder(model, JVPConfig(num_blocks=1, num_directions=3, proj_dim=8)).embed_batch(ids, mask)
        full = JVPEmbedder(model, JVPConfig(num_blocks=1, num_directions=3, proj_dim=64)).embed_batch(ids, mask)
    assert small.shape == (3, 8)
    assert full.shape == (3, 48)


def test_embed_keeps_sample_order():
    """embed() sorts by length internally but returns rows in the order of the input."""
    model = tiny_model("llama", layers=2)
    lengths = [7, 2, 5, 3]
    samples = [
        TokenizedSample(f"s{i}", "t", list(range(2, 2 + n)), [-100] * (n - 1) + [5]) for i, n in enumerate(lengths)
    ]
    embedder = JVPEmbedder(model, JVPConfig(num_blocks=1, batch_size=2))
    all_rows = embedder.embed(samples, pad_token_id=1)
    for i, sample in enumerate(samples):
        ids = torch.tensor([sample.input_ids])
        with torch.no_grad():
            alone = embedder.embed_batch(ids, torch.ones_like(ids)).numpy()
        np.testing.assert_allclose(all_rows[i], alone[0], rtol=1e-4, atol=1e-5)


def test_bad_settings_rejected():
    model = tiny_model("llama", layers=2)
    with pytest.raises(InvalidInputError, match="num_directions"):
        JVPEmbedder(model, JVPConfig(num_directions=0))
    with pytest.raises(InvalidInputError, match="num_layers=9"):
        JVPEmbedder(model, JVPConfig(num_blocks=9))


def test_vmap_over_directions_equals_loop():
    model = tiny_model("llama", layers=2, dtype=torch.float64)
    ids, mask = _batch()
    embedder = JVPEmbedder(model, JVPConfig(num_blocks=2, num_directions=3, proj_dim=4096))
    with torch.no_grad():
        batched = embedder.embed_batch(ids, mask)
        embedder._use_vmap = False
        looped = embedder.embed_batch(ids, mask)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
