import pytest
import torch
from torch import nn

from gradients.blocks import find_layout, num_blocks, truncated_base_model
from idopt.errors import InvalidInputError
from tests.tiny_models import tiny_model

KINDS = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
def test_layout_found_for_known_models(kind):
    model = tiny_model(kind, layers=3)
    assert num_blocks(model) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_view_matches_manual_forward(kind):
    """The view's output equals norm(block_K(...block_1(embeddings))) computed from the full model."""
    model = tiny_model(kind, layers=3)
    ids = torch.randint(0, 64, (2, 5))
    view = truncated_base_model(model, 2)
    with torch.no_grad():
        got = view(input_ids=ids, use_cache=False).last_hidden_state
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        layout = find_layout(model)
        base = model.get_submodule(layout.base_path)
        expected = getattr(base, layout.norm_attr)(hidden)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_truncated_view_shares_parameters():
    model = tiny_model("llama", layers=3)
    view = truncated_base_model(model, 1)
    full = {id(p) for p in model.parameters()}
    names = [name for name, _ in view.named_parameters()]
    assert all(id(p) in full for p in view.parameters())
    assert not any(name.startswith("layers.1.") for name in names)
    assert len(model.model.layers) == 3


def test_truncated_view_rejects_bad_depth():
    model = tiny_model("llama", layers=2)
    with pytest.raises(InvalidInputError, match="num_layers=3"):
        truncated_base_model(model, 3)


class _Unknown(nn.Module):
    """A model type missing from the registry: blocks in a ModuleList, a LayerNorm after them."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])
        self.backbone.final_norm = nn.LayerNorm(4)


def test_layout_search_fallback():
    layout = find_layout(_Unknown())
    assert (layout.base_path, layout.layers_attr, layout.norm_attr) == ("backbone", "stack", "final_norm")
