"""Random linear maps that compress per-sample gradients before inner products are taken.

A projector P maps a vector x of length N (``input_dim``) to P x of length d
(``proj_dim``), with d much smaller than N, such that

    E ||P x||^2 = ||x||^2    and    E <P x, P y> = <x, y>

over the random draw of P. P is fixed by ``seed``: the same projector object, or a new
one built with the same arguments, maps the same x to the same P x.

Two kinds exist:

* ``"hadamard"``: :class:`gradients.hadamard.HadamardProjector`, a subsampled randomized
  Hadamard transform, O(D log D) time per vector and O(D) memory, D = 2^ceil(log2 N).
* ``"rademacher"``: :class:`gradients.rademacher.RademacherProjector`, a dense i.i.d.
  sign matrix regenerated block by block, O(N d) time per call. It is the reference for
  comparisons.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from idopt.errors import IdoptError, InvalidInputError

# The finiteness check scans the input in row chunks of about this many bytes (counted
# at 4 bytes an entry), so its boolean mask never covers a whole huge batch at once.
_CHECK_CHUNK_BYTES = 1 << 28


class BackendUnavailableError(IdoptError, ImportError):
    """A requested compute backend needs a package or device that is not available."""


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int after checking its type and range; raise InvalidInputError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            f"{name} must be an int, got {value!r} of type {type(value).__name__}"
        )
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InvalidInputError(f"{name} must be {allowed}, got {value}")
    return value


def _resolve_device(device: Any) -> torch.device:
    """Return ``device`` as a torch.device (CPU when None); raise InvalidInputError."""
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidInputError(
            f"device must be None, a torch.device or a string such as 'cpu' or 'cuda:0', "
            f"got {device!r}"
        ) from error


class Projector(ABC):
    """Seeded random linear map from R^N to R^d, applied to single vectors or batches.

    Parameters
    ----------
    input_dim : int
        N, the length of the input vectors (>= 1).
    proj_dim : int
        d, the length of the projected vectors (>= 1). Subclasses may set an upper bound.
    seed : int
        Seed of the random map, an int in [0, 2^63 - 1].
    device : str or torch.device, optional
        Device where the projection is computed and where outputs are returned. Inputs
        on other devices are moved there chunk by chunk. Default: CPU.

    Attributes
    ----------
    input_dim, proj_dim, seed : int
        The constructor arguments.
    device : torch.device
        Device of the computation and of the outputs.
    """

    def __init__(self, input_dim: int, proj_dim: int, seed: int, device: Any = None) -> None:
        self.input_dim = _check_int("input_dim", input_dim, 1)
        self.proj_dim = _check_int("proj_dim", proj_dim, 1)
        self.seed = _check_int("seed", seed, 0, 2**63 - 1)
        self.device = _resolve_device(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x``; same as :meth:`project`."""
        return self.project(x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_dim={self.input_dim}, proj_dim={self.proj_dim}, "
            f"seed={self.seed}, device='{self.device}')"
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Compute y = P x for one vector or for each row of a batch.

        Parameters
        ----------
        x : torch.Tensor, shape (N,) or (B, N)
            Floating-point input (float16, bfloat16, float32 or float64) with finite
            entries, on any device. B may be 0.

        Returns
        -------
        torch.Tensor, shape (d,) or (B, d)
            float32 on :attr:`device` (float64 inputs also give float32). Row b of the
            output is P x[b].

        Raises
        ------
        InvalidInputError
            If ``x`` is not a tensor, has the wrong number of dimensions or last
            dimension, has an integer or complex dtype, or contains NaN or infinity.
        """
        batch = self._check_input(x)
        out = self._project_batch(batch)
        if x.ndim == 1:
            return out[0]
        return out

    @abstractmethod
    def _project_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Map a validated (B, N) floating tensor to a (B, d) float32 tensor on ``self.device``."""

    def _check_input(self, x: Any) -> torch.Tensor:
        """Validate ``x`` and return it as a (B, N) view; raise InvalidInputError."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(
                f"x must be a torch.Tensor of shape (N,) or (B, N) with N = {self.input_dim}, "
                f"got an object of type {type(x).__name__}"
            )
        if x.ndim not in (1, 2):
            raise InvalidInputError(
                f"x must have shape (N,) or (B, N) with N = {self.input_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_dim:
            raise InvalidInputError(
                f"x must have last dimension input_dim = {self.input_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        if not x.dtype.is_floating_point:
            raise InvalidInputError(
                f"x must have a floating-point dtype (float16, bfloat16, float32 or float64), "
                f"got {x.dtype}"
            )
        batch = x.reshape(1, -1) if x.ndim == 1 else x
        nonfinite = count_nonfinite(batch)
        if nonfinite:
            raise InvalidInputError(
                f"x must contain only finite values, got {nonfinite} NaN or infinite "
                f"entries out of {batch.numel()} in a tensor of shape {tuple(x.shape)}"
            )
        return batch


def count_nonfinite(x: torch.Tensor) -> int:
    """Count the NaN and infinite entries of a (B, N) tensor, a few rows at a time.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N)
        Floating-point tensor.

    Returns
    -------
    int
        Number of entries e with isfinite(e) false. The temporary boolean mask covers
        about 2^26 entries at a time, or one row if a row is longer.
    """
    rows_per_chunk = max(1, _CHECK_CHUNK_BYTES // (4 * max(1, x.shape[1])))
    total = 0
    for start in range(0, x.shape[0], rows_per_chunk):
        chunk = x[start : start + rows_per_chunk]
        total += int(chunk.numel() - torch.isfinite(chunk).sum().item())
    return total


def rows_per_chunk(row_bytes: int, max_bytes: int) -> int:
    """Return how many rows of ``row_bytes`` bytes fit in ``max_bytes``, at least 1."""
    return max(1, max_bytes // max(1, row_bytes))


def make_projector(
    kind: str,
    input_dim: int,
    proj_dim: int,
    seed: int,
    device: Any = None,
    **options: Any,
) -> Projector:
    """Build a seeded projector from R^N to R^d by name.

    Parameters
    ----------
    kind : {"hadamard", "rademacher"}
        ``"hadamard"`` builds :class:`gradients.hadamard.HadamardProjector`
        (P x = sqrt(D / d) * S H diag(s) pad(x), D = 2^ceil(log2 N));
        ``"rademacher"`` builds :class:`gradients.rademacher.RademacherProjector`
        (P x = R x / sqrt(d), R in {-1, +1}^(d x N)).
    input_dim : int
        N, the length of the input vectors.
    proj_dim : int
        d, the length of the projected vectors. For ``"hadamard"`` it must lie in
        [1, D]; it may exceed N.
    seed : int
        Seed in [0, 2^63 - 1] that fixes the random map.
    device : str or torch.device, optional
        Device of the computation and of the outputs. Default: CPU.
    **options
        Keyword arguments of the chosen class, for example ``backend`` and
        ``chunk_bytes`` for ``"hadamard"`` or ``block_rows`` for ``"rademacher"``.

    Returns
    -------
    Projector
        The projector, with ``E ||P x||^2 = ||x||^2`` over seeds.

    Raises
    ------
    InvalidInputError
        If ``kind`` is unknown or an argument is out of range.
    """
    # Imported here because both modules import this one for the base class.
    if kind == "hadamard":
        from gradients.hadamard import HadamardProjector

        return HadamardProjector(input_dim, proj_dim, seed, device=device, **options)
    if kind == "rademacher":
        from gradients.rademacher import RademacherProjector

        return RademacherProjector(input_dim, proj_dim, seed, device=device, **options)
    raise InvalidInputError(f"kind must be 'hadamard' or 'rademacher', got {kind!r}")

