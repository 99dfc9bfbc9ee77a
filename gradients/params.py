"""Choose the parameters whose per-sample gradients are taken, and subsample their elements.

A per-sample gradient is the flattened concatenation of the gradients of the selected
parameters, in the order of :func:`select_parameters`. :class:`ParameterMask` keeps a fixed,
seeded subset of the elements of that flat vector so every sample is reduced the same way.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch

from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

_REGEX_PREFIX = "re:"
_NAMES_SHOWN = 8


def select_parameters(model: torch.nn.Module, spec: str) -> OrderedDict[str, torch.nn.Parameter]:
    """Select trainable parameters of ``model`` by name.

    Parameters
    ----------
    model : torch.nn.Module
        The model, for example a Hugging Face causal LM.
    spec : str
        ``"all"`` selects every parameter. ``"re:<regex>"`` selects the parameters whose
        full name matches ``<regex>`` (``re.fullmatch``). Any other string is a name
        fragment: it selects the parameters whose name contains it, e.g. ``"down_proj"``.

    Returns
    -------
    OrderedDict[str, torch.nn.Parameter]
        Name -> parameter in ``model.named_parameters()`` order. Only parameters with
        ``requires_grad=True`` are kept. A weight shared by several modules (tied input and
        output embeddings) appears once, under the name ``named_parameters()`` reports first,
        and it is selected when any of its names matches.

    Raises
    ------
    InvalidInputError
        If ``spec`` is not a non-empty string, is an invalid regex, or matches no trainable
        parameter. The message lists some available names.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidInputError(
            f"spec must be a non-empty string ('all', a name fragment or 're:<regex>'), got {spec!r}"
        )
    matches = _build_matcher(spec)

    canonical_name: dict[int, str] = {}
    for name, param in model.named_parameters():
        canonical_name[id(param)] = name

    selected: OrderedDict[str, torch.nn.Parameter] = OrderedDict()
    for name, param in model.named_parameters(remove_duplicate=False):
        if not param.requires_grad or not matches(name):
            continue
        first_name = canonical_name[id(param)]
        if first_name not in selected:
            selected[first_name] = param

    if not selected:
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        shown = ", ".join(trainable[:_NAMES_SHOWN])
        more = f" and {len(trainable) - _NAMES_SHOWN} more" if len(trainable) > _NAMES_SHOWN else ""
        raise InvalidInputError(
            f"spec={spec!r} matches no trainable parameter of {type(model).__name__}; "
            f"available names: {shown or '(none)'}{more}"
        )
    logger.debug("spec %r selected %s tensors with %s elements", spec, len(selected), flat_dim(selected))
    return selected


def _build_matcher(spec: str):
    if spec == "all":
        return lambda name: True
    if spec.startswith(_REGEX_PREFIX):
        pattern = spec[len(_REGEX_PREFIX):]
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise InvalidInputError(f"spec={spec!r} is an invalid regex: {error}") from error
        return lambda name: compiled.fullmatch(name) is not None
    return lambda name: spec in name


def flat_dim(params: Mapping[str, torch.Tensor]) -> int:
    """Count the elements of the flattened concatenation of ``params``.

    N = sum over selected tensors p of p.numel().
    """
    return sum(int(p.numel()) for p in params.values())


def flat_slices(params: Mapping[str, torch.Tensor]) -> OrderedDict[str, slice]:
    """Locate each parameter in the flat gradient vector.

    Returns name -> ``slice(start, start + p.numel())`` into a vector of length
    ``flat_dim(params)``, in the iteration order of ``params``.
    """
    slices: OrderedDict[str, slice] = OrderedDict()
    start = 0
    for name, param in params.items():
        stop = start + int(param.numel())
        slices[name] = slice(start, stop)
        start = stop
    return slices


class ParameterMask:
    """A fixed, seeded random subset of the elements of a flat gradient vector.

    The indices are drawn once, without replacement, by ``torch.randperm`` on a
    ``torch.Generator`` seeded with ``seed``, and then sorted. Equal ``(total_dim, size,
    seed)`` give equal indices on every machine that runs the same torch version.

    Parameters
    ----------
    total_dim : int
        N, the length of the flat vector (see :func:`flat_dim`).
    fraction : float, optional
        Share of the N elements to keep, in (0, 1]. The mask keeps
        m = max(1, round(fraction * N)) elements. Give exactly one of ``fraction`` and ``count``.
    count : int, optional
        m, the number of elements to keep, 1 <= m <= N.
    seed : int
        Seed of the generator.

    Attributes
    ----------
    indices : torch.Tensor
        Shape (m,), int64, sorted ascending, on the CPU.
    total_dim : int
        N.
    """

    def __init__(
        self,
        total_dim: int,
        *,
        fraction: float | None = None,
        count: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(total_dim, bool) or not isinstance(total_dim, int) or total_dim < 1:
            raise InvalidInputError(f"total_dim must be a positive int, got {total_dim!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"seed must be an int, got {seed!r}")
        size = _mask_size(total_dim, fraction, count)

        generator = torch.Generator(device="cpu").manual_seed(seed)
        chosen = torch.randperm(total_dim, generator=generator)[:size]
        self.indices = torch.sort(chosen).values
        self.total_dim = total_dim
        self.seed = seed
        self._indices_by_device: dict[torch.device, torch.Tensor] = {self.indices.device: self.indices}

    @classmethod
    def for_params(
        cls,
        params: Mapping[str, torch.Tensor],
        *,
        fraction: float | None = None,
        count: int | None = None,
        seed: int = 0,
    ) -> ParameterMask:
        """Build a mask over the flat concatenation of ``params`` (N = ``flat_dim(params)``)."""
        return cls(flat_dim(params), fraction=fraction, count=count, seed=seed)

    @property
    def size(self) -> int:
        """m, the number of kept elements."""
        return int(self.indices.numel())

    def apply(self, flat_grads: torch.Tensor) -> torch.Tensor:
        """Keep the masked columns of a batch of flat gradients.

        Parameters
        ----------
        flat_grads : torch.Tensor
            Shape (B, N).

        Returns
        -------
        torch.Tensor
            Shape (B, m): out[b, j] = flat_grads[b, indices[j]], same dtype and device.
        """
        if not isinstance(flat_grads, torch.Tensor) or flat_grads.ndim != 2 or flat_grads.shape[1] != self.total_dim:
            shape = tuple(flat_grads.shape) if isinstance(flat_grads, torch.Tensor) else type(flat_grads).__name__
            raise InvalidInputError(
                f"flat_grads must be a 2-D tensor of shape (B, {self.total_dim}), got {shape}"
            )
        indices = self._indices_by_device.get(flat_grads.device)
        if indices is None:
            indices = self.indices.to(flat_grads.device)
            self._indices_by_device[flat_grads.device] = indices
        return flat_grads.index_select(1, indices)

    def split(self, sizes: list[int]) -> list[torch.Tensor]:
        """Split the mask over consecutive blocks of the flat vector.

        For blocks of lengths ``sizes`` (summing to N), entry i holds the kept indices that
        fall in block i, shifted to be local to that block. Concatenating
        ``block_i[:, split[i]]`` over i gives the same columns as :meth:`apply` on the
        concatenated vector, without building the (B, N) vector.
        """
        if sum(sizes) != self.total_dim:
            raise InvalidInputError(f"block sizes sum to {sum(sizes)}, but the mask covers {self.total_dim} elements")
        offsets = torch.tensor([0] + list(sizes)).cumsum(0)
        bounds = torch.searchsorted(self.indices, offsets)
        return [
            self.indices[int(bounds[i]):int(bounds[i + 1])] - int(offsets[i]) for i in range(len(sizes))
        ]

    def __repr__(self) -> str:
        return f"ParameterMask(total_dim={self.total_dim}, size={self.size}, seed={self.seed})"


def _mask_size(total_dim: int, fraction: float | None, count: int | None) -> int:
    if (fraction is None) == (count is None):
        raise InvalidInputError(
            f"give exactly one of fraction and count, got fraction={fraction!r}, count={count!r}"
        )
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total_dim:
            raise InvalidInputError(f"count must be an int in [1, {total_dim}], got {count!r}")
        return count
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return max(1, round(fraction * total_dim))
