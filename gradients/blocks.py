"""Find the transformer blocks of a causal LM and build a truncated view of its first K blocks.

Known layouts are looked up in a small registry. Any other model falls back to a search for the
longest ``nn.ModuleList`` of identical modules and a final normalization module beside it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from torch import nn

from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

# (attribute path of the base model, attribute of the block list, attribute of the final norm).
# The base model is the module whose forward returns ``last_hidden_state`` after the final norm.
KNOWN_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "llama": ("model", "layers", "norm"),
    "mistral": ("model", "layers", "norm"),
    "mixtral": ("model", "layers", "norm"),
    "qwen2": ("model", "layers", "norm"),
    "qwen3": ("model", "layers", "norm"),
    "gemma": ("model", "layers", "norm"),
    "gemma2": ("model", "layers", "norm"),
    "phi3": ("model", "layers", "norm"),
    "olmo": ("model", "layers", "norm"),
    "gpt2": ("transformer", "h", "ln_f"),
    "gpt_neox": ("gpt_neox", "layers", "final_layer_norm"),
    "falcon": ("transformer", "h", "ln_f"),
    "gptj": ("transformer", "h", "ln_f"),
    "opt": ("model.decoder", "layers", "final_layer_norm"),
}


@dataclass(frozen=True)
class BlockLayout:
    """Location of a model's blocks: base model path, block list attribute, final norm attribute."""

    base_path: str
    layers_attr: str
    norm_attr: str


def _get_path(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _search_layout(model: nn.Module) -> BlockLayout:
    """Find the longest ModuleList of same-class modules and a norm module that is its sibling."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise InvalidInputError(
            f"no transformer block list found in {type(model).__name__}; "
            f"add its layout to gradients.blocks.KNOWN_LAYOUTS"
        )
    full_name = best[0]
    base_path, _, layers_attr = full_name.rpartition(".")
    base = _get_path(model, base_path) if base_path else model
    norms = [name for name, child in base.named_children() if _is_norm(child)]
    if not norms:
        raise InvalidInputError(
            f"found blocks at {full_name!r} in {type(model).__name__} but no final norm beside them; "
            f"add its layout to gradients.blocks.KNOWN_LAYOUTS"
        )
    return BlockLayout(base_path, layers_attr, norms[-1])


def find_layout(model: nn.Module) -> BlockLayout:
    """Return the block layout of ``model``, from the registry or by a structural search."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in KNOWN_LAYOUTS:
        layout = BlockLayout(*KNOWN_LAYOUTS[model_type])
        try:
            _get_path(_get_path(model, layout.base_path), layout.layers_attr)
            return layout
        except AttributeError:
            logger.warning("Model type %s does not match its registered layout; searching instead", model_type)
    layout = _search_layout(model)
    logger.info("Found blocks of %s by search: %s", type(model).__name__, layout)
    return layout


def num_blocks(model: nn.Module) -> int:
    """Return the number of transformer blocks of ``model``."""
    layout = find_layout(model)
    return len(getattr(_get_path(model, layout.base_path), layout.layers_attr))


def truncated_base_model(model: nn.Module, num_layers: int) -> nn.Module:
    """Return a view of the base model that runs only its first ``num_layers`` blocks.

    The view shares every parameter with ``model`` (no copy of weights): it is a shallow copy
    of the base module whose block list holds the first ``num_layers`` blocks. Its forward keeps
    the embeddings and applies the final norm, so ``view(input_ids=...).last_hidden_state`` is
    norm(block_K(...block_1(embed(x)))). Its ``named_parameters()`` are the truncated model's
    parameter space.
    """
    layout = find_layout(model)
    base = _get_path(model, layout.base_path)
    layers = getattr(base, layout.layers_attr)
    total = len(layers)
    if not 1 <= num_layers <= total:
        raise InvalidInputError(f"num_layers={num_layers} is out of range; the model has {total} blocks (use 1..{total})")
    view = copy.copy(base)
    view._modules = dict(base._modules)
    view._modules[layout.layers_attr] = nn.ModuleList(list(layers)[:num_layers])
    return view
