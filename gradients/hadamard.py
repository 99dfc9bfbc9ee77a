"""Fast Walsh-Hadamard transform and the subsampled randomized Hadamard projection.

Conventions. H_1 = [[1]] and H_{2m} = [[H_m, H_m], [H_m, -H_m]] (Sylvester construction,
natural order, the same matrix as ``scipy.linalg.hadamard``). H_D is symmetric and
H_D H_D = D I, so H_D / sqrt(D) is orthonormal. Because H_{2^(a+b)} = H_{2^a} kron H_{2^b},
transforming a row-major (2^a, 2^b) matrix X along both axes gives

    H_{2^a} X H_{2^b} = reshape(H_D vec(X), (2^a, 2^b)),    D = 2^(a+b),

where vec flattens in row-major order: the two-sided transform equals the 1-D transform
of length D exactly, and the permutation between them is the identity.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from gradients.projection import (
    BackendUnavailableError,
    Projector,
    _check_int,
    rows_per_chunk,
)
from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

# The largest dense Hadamard matrix that hadamard_matrix builds: 2^14 x 2^14 float32 is 1 GiB.
MAX_DENSE_SIZE = 2**14

# fast_hadamard_transform transforms a last dimension of at most 2^15 entries, so the
# kernel path splits D = R * C with R, C <= 2^15.
KERNEL_MAX_LAST_DIM = 2**15

# The torch transform applies RADIX_LEVELS butterfly levels per pass as one matmul with
# H_{2^RADIX_LEVELS}. On 2 CPU cores with torch 2.13 and a (8, 2^20) float32 input, 4
# levels per pass ran about 3x faster than one level per pass (one measurement of a
# prototype of _fwht_unnormalized).
RADIX_LEVELS = 4

# Default size of the two (rows, D) float32 work buffers of HadamardProjector, each.
DEFAULT_CHUNK_BYTES = 1 << 28

_KERNEL_PACKAGE = "fast_hadamard_transform"
_KERNEL_INSTALL = "pip install fast-hadamard-transform"
_BACKENDS = ("auto", "torch", "cuda_kernel")


def kernel_available() -> bool:
    """Return whether the ``fast_hadamard_transform`` package can be imported."""
    return importlib.util.find_spec(_KERNEL_PACKAGE) is not None


def _check_power_of_two(name: str, value: int) -> int:
    """Return log2(value) for a power of two >= 1; raise InvalidInputError otherwise."""
    if value < 1 or value & (value - 1):
        raise InvalidInputError(f"{name} must be a power of two >= 1, got {value}")
    return value.bit_length() - 1


def hadamard_matrix(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build the unnormalized Sylvester Hadamard matrix H_size.

    H_1 = [[1]], H_{2m} = [[H_m, H_m], [H_m, -H_m]]. Entries are +1 or -1, and
    H^T H = size * I.

    Parameters
    ----------
    size : int
        D, a power of two in [1, 2^14].
    dtype : torch.dtype, optional
        dtype of the result. Default: float32.

    Returns
    -------
    torch.Tensor, shape (D, D)
        H_D on the CPU. It equals ``scipy.linalg.hadamard(D)``.

    Raises
    ------
    InvalidInputError
        If ``size`` is not a power of two in [1, 2^14].
    """
    _check_int("size", size, 1, MAX_DENSE_SIZE)
    _check_power_of_two("size", size)
    matrix = torch.ones((1, 1), dtype=dtype)
    while matrix.shape[0] < size:
        matrix = torch.cat(
            [torch.cat([matrix, matrix], dim=1), torch.cat([matrix, -matrix], dim=1)], dim=0
        )
    return matrix


@functools.lru_cache(maxsize=16)
def _radix_matrix(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard_matrix(size, dtype).to(device)


def _fwht_unnormalized(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Apply H_n to each row of ``src`` (shape (rows, n), contiguous), using ``dst`` as scratch.

    Both buffers are overwritten; the returned tensor is one of them. Each pass applies
    the Hadamard matrix of ``2^RADIX_LEVELS`` (or fewer) to one axis of a reshaped view,
    so the loop runs ceil(log2(n) / RADIX_LEVELS) times and no other memory is allocated.
    """
    rows, n = src.shape
    stride = 1
    while stride < n:
        radix = min(2**RADIX_LEVELS, n // stride)
        h_radix = _radix_matrix(radix, src.dtype, src.device)
        if stride == 1:
            torch.matmul(src.view(-1, radix), h_radix, out=dst.view(-1, radix))
        else:
            # Axis 2 of this view contains the `radix` entries that differ in bits
            # log2(stride) .. log2(stride * radix) - 1 of the index.
            shape = (rows, n // (radix * stride), radix, stride)
            torch.matmul(h_radix, src.view(shape), out=dst.view(shape))
        src, dst = dst, src
        stride *= radix
    return src


def fwht(x: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """Compute the fast Walsh-Hadamard transform along the last dimension.

    y = H_n x / sqrt(n) if ``normalized`` else y = H_n x, for every vector x along the last
    dimension, with H_n the Sylvester Hadamard matrix (see :func:`hadamard_matrix`).
    Takes O(n log n) operations per vector. The normalized transform is orthonormal and
    its own inverse.

    Parameters
    ----------
    x : torch.Tensor, shape (..., n)
        Floating-point input on any device; n must be a power of two >= 1.
    normalized : bool, optional
        Whether to divide by sqrt(n). Default: True.

    Returns
    -------
    torch.Tensor, shape (..., n)
        A new tensor on x's device. float16 and bfloat16 inputs are computed and returned
        in float32; float32 and float64 keep their dtype.

    Raises
    ------
    InvalidInputError
        If ``x`` is not a floating tensor with at least one dimension, or n is not a
        power of two.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise InvalidInputError(
            f"x must be a torch.Tensor with at least one dimension, got {type(x).__name__}"
            + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else "")
        )
    if not x.dtype.is_floating_point:
        raise InvalidInputError(f"x must have a floating-point dtype, got {x.dtype}")
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise InvalidInputError(
            f"x must have a last dimension that is a power of two, got shape {tuple(x.shape)}"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    src = x.reshape(-1, n).to(dtype=dtype, copy=True)
    result = _fwht_unnormalized(src, torch.empty_like(src))
    if normalized:
        result.mul_(1.0 / math.sqrt(n))
    return result.view(x.shape)


def two_sided_hadamard(x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Apply the orthonormal Hadamard transform to both axes of the last two dimensions.

    Y = H_R X H_C / sqrt(R C) for each (R, C) matrix X; R and C are powers of two. With
    D = R C this equals ``fwht(X.flatten(-2)).view_as(X)``, the 1-D transform of the
    row-major flattening (module docstring).

    Parameters
    ----------
    x : torch.Tensor, shape (..., R, C)
        Floating-point input. With ``backend="cuda_kernel"`` it must be on a CUDA device
        and R, C <= 2^15.
    backend : {"torch", "cuda_kernel"}, optional
        ``"torch"`` runs :func:`fwht` along each axis; ``"cuda_kernel"`` runs
        ``fast_hadamard_transform.hadamard_transform``. Default: "torch".

    Returns
    -------
    torch.Tensor, shape (..., R, C)
        float32 (float64 for float64 input with the torch backend).

    Raises
    ------
    InvalidInputError
        If ``x`` has fewer than two dimensions, R or C is not a power of two, or the
        backend is unknown or cannot run on x's device.
    BackendUnavailableError
        If ``backend="cuda_kernel"`` and ``fast_hadamard_transform`` is not installed.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise InvalidInputError(
            "x must be a torch.Tensor with at least two dimensions (..., R, C), got "
            + (f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__)
        )
    _check_power_of_two("R = x.shape[-2]", x.shape[-2])
    _check_power_of_two("C = x.shape[-1]", x.shape[-1])
    if backend == "torch":
        along_columns = fwht(x)
        return fwht(along_columns.transpose(-1, -2)).transpose(-1, -2).contiguous()
    if backend == "cuda_kernel":
        transform = _load_kernel()
        _check_kernel_device(x.device)
        rows, cols = x.shape[-2], x.shape[-1]
        if max(rows, cols) > KERNEL_MAX_LAST_DIM:
            raise InvalidInputError(
                f"backend 'cuda_kernel' transforms axes of at most {KERNEL_MAX_LAST_DIM} "
                f"entries, got shape {tuple(x.shape)}"
            )
        x32 = x.to(torch.float32).contiguous()
        along_columns = transform(x32, 1.0 / math.sqrt(cols))
        swapped = along_columns.transpose(-1, -2).contiguous()
        return transform(swapped, 1.0 / math.sqrt(rows)).transpose(-1, -2).contiguous()
    raise InvalidInputError(f"backend must be 'torch' or 'cuda_kernel', got {backend!r}")


def _load_kernel() -> Any:
    """Import and return ``fast_hadamard_transform.hadamard_transform``; raise if missing."""
    if not kernel_available():
        raise BackendUnavailableError(
            f"backend 'cuda_kernel' needs the {_KERNEL_PACKAGE} package, which is not "
            f"installed; install it on a CUDA machine with `{_KERNEL_INSTALL}` "
            f"or use backend='torch'"
        )
    from fast_hadamard_transform import hadamard_transform

    return hadamard_transform


def _check_kernel_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise InvalidInputError(
            f"backend 'cuda_kernel' runs only on CUDA devices, got device '{device}'; "
            f"use backend='torch' or a CUDA device"
        )


def sample_subset(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``count`` distinct indices from range(size), uniformly without replacement.

    Parameters
    ----------
    size : int
        D, the number of indices to choose from.
    count : int
        d, the number of indices to draw, in [1, D].
    generator : torch.Generator
        CPU generator; its state advances.

    Returns
    -------
    torch.Tensor, shape (d,)
        Sorted int64 indices on the CPU. Every d-subset has the same probability.

    Raises
    ------
    InvalidInputError
        If ``size`` < 1 or ``count`` is outside [1, size].

    Notes
    -----
    For d >= D / 4 the indices are the first d of a random permutation. Otherwise
    uniform draws with replacement are repeated and duplicates are dropped, keeping the
    first occurrence, until d distinct indices exist. This keeps memory at O(d) for
    D up to 2^30, where a full permutation would take 8 GiB.
    """
    _check_int("size", size, 1)
    _check_int("count", count, 1, size)
    if 4 * count >= size:
        return torch.randperm(size, generator=generator)[:count].sort().values
    picked = torch.empty(0, dtype=torch.int64)
    while picked.numel() < count:
        missing = count - picked.numel()
        draws = torch.randint(size, (2 * missing,), generator=generator)
        candidates = torch.cat([picked, draws])
        unique, inverse = torch.unique(candidates, return_inverse=True)
        positions = torch.arange(candidates.numel())
        first = torch.full((unique.numel(),), candidates.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, positions, reduce="amin")
        picked = candidates[first.sort().values][:count]
    return picked.sort().values


class HadamardProjector(Projector):
    """Subsampled randomized Hadamard projection from R^N to R^d.

    With k = ceil(log2 N) and D = 2^k,

        P x = sqrt(D / d) * S (H_D / sqrt(D)) diag(s) pad(x),

    where pad appends D - N zeros, s in {-1, +1}^D are seeded random signs, H_D is the
    Sylvester Hadamard matrix and S keeps a seeded random subset of d of the D
    coordinates (drawn without replacement, in increasing index order). The signs and
    the subset are drawn once, on the CPU, from ``torch.Generator().manual_seed(seed)``,
    so the same seed gives the same P on every device. Since H_D diag(s) / sqrt(D) is
    orthonormal and each coordinate is kept with probability d / D,
    E ||P x||^2 = ||x||^2 and E <P x, P y> = <x, y>.

    The CUDA kernel computes the two-sided transform of x reshaped to
    (2^ceil(k/2), 2^floor(k/2)). That equals the 1-D transform of length D exactly
    (module docstring), so the torch backend runs the 1-D transform directly.

    Parameters
    ----------
    input_dim : int
        N >= 1.
    proj_dim : int
        d in [1, D]; d may exceed N when N is not a power of two.
    seed : int
        Seed in [0, 2^63 - 1].
    device : str or torch.device, optional
        Device of the computation and of the outputs. Default: CPU.
    backend : {"auto", "torch", "cuda_kernel"}, optional
        ``"torch"``: the pure-torch transform on any device. ``"cuda_kernel"``: the
        ``fast_hadamard_transform`` CUDA kernel; needs that package, a CUDA device and
        D <= 2^30. ``"auto"`` (default): the kernel when all of that holds, else torch.
    chunk_bytes : int, optional
        Size in bytes of each float32 work buffer of shape (rows, D). Rows of the batch
        are processed in chunks that fit, at least one row at a time. The projection
        allocates two such buffers at a time. Default: 2^28.

    Attributes
    ----------
    padded_dim : int
        D = 2^ceil(log2 N).
    grid_shape : tuple of int
        (2^ceil(k/2), 2^floor(k/2)), the shape of the two-sided transform.
    signs : torch.Tensor, shape (D,)
        int8 signs s on :attr:`device`.
    subset : torch.Tensor, shape (d,)
        Sorted int64 indices kept by S, on :attr:`device`.
    backend : str
        The backend in use, ``"torch"`` or ``"cuda_kernel"``.
    """

    def __init__(
        self,
        input_dim: int,
        proj_dim: int,
        seed: int,
        device: Any = None,
        backend: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__(input_dim, 1, seed, device)
        log2_dim = (self.input_dim - 1).bit_length()
        self.padded_dim = 2**log2_dim
        self.proj_dim = _check_int("proj_dim", proj_dim, 1, self.padded_dim)
        self.grid_shape = (2 ** ((log2_dim + 1) // 2), 2 ** (log2_dim // 2))
        self.chunk_bytes = _check_int("chunk_bytes", chunk_bytes, 1)
        self.backend = self._choose_backend(backend)

        generator = torch.Generator().manual_seed(self.seed)
        signs = torch.randint(0, 2, (self.padded_dim,), generator=generator, dtype=torch.int8)
        self.signs = (2 * signs - 1).to(self.device)
        subset = sample_subset(self.padded_dim, self.proj_dim, generator)
        self.subset = subset.to(self.device)
        # The kernel path ends with the transposed grid (C, R), where entry (i, j) of the
        # grid sits at flat position j * R + i.
        rows, cols = self.grid_shape
        self._subset_transposed = ((subset % cols) * rows + subset // cols).to(self.device)

    def _choose_backend(self, backend: str) -> str:
        if backend not in _BACKENDS:
            raise InvalidInputError(
                f"backend must be one of {', '.join(repr(b) for b in _BACKENDS)}, got {backend!r}"
            )
        fits_kernel = max(self.grid_shape) <= KERNEL_MAX_LAST_DIM
        if backend == "cuda_kernel":
            _load_kernel()
            _check_kernel_device(self.device)
            if not fits_kernel:
                raise InvalidInputError(
                    f"backend 'cuda_kernel' supports padded dimensions D <= 2^30, got "
                    f"D = {self.padded_dim} for input_dim = {self.input_dim}; use backend='torch'"
                )
            return "cuda_kernel"
        if backend == "auto" and self.device.type == "cuda":
            if not kernel_available():
                logger.info(
                    "%s is not installed, so the Hadamard projection on %s uses the torch "
                    "transform; `%s` installs the faster CUDA kernel",
                    _KERNEL_PACKAGE, self.device, _KERNEL_INSTALL,
                )
            elif not fits_kernel:
                logger.info(
                    "padded dimension %s exceeds the CUDA kernel's 2^30 limit; using the "
                    "torch transform", self.padded_dim,
                )
            else:
                return "cuda_kernel"
        return "torch"

    def _project_batch(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        out = torch.empty((batch_size, self.proj_dim), dtype=torch.float32, device=self.device)
        chunk = rows_per_chunk(4 * self.padded_dim, self.chunk_bytes)
        starts = range(0, batch_size, chunk)
        for start in tqdm(starts, desc="Hadamard projection", disable=len(starts) < 2, leave=False):
            rows = x[start : start + chunk]
            out[start : start + rows.shape[0]] = self._project_chunk(rows)
        return out

    def _project_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """Project a (rows, N) chunk; returns (rows, d) float32 on self.device."""
        rows = x.shape[0]
        buffer = torch.zeros((rows, self.padded_dim), dtype=torch.float32, device=self.device)
        head = buffer[:, : self.input_dim]
        head.copy_(x)
        # The padding is zero, so only the first N signs change anything.
        head.mul_(self.signs[: self.input_dim])

        # The unnormalized transform H_D followed by sqrt(D / d) / sqrt(D) = 1 / sqrt(d).
        scale = 1.0 / math.sqrt(self.proj_dim)
        if self.backend == "cuda_kernel":
            transformed = self._kernel_transform(buffer)
            selected = transformed.index_select(1, self._subset_transposed)
        else:
            transformed = _fwht_unnormalized(buffer, torch.empty_like(buffer))
            selected = transformed.index_select(1, self.subset)
        return selected.mul_(scale)

    def _kernel_transform(self, buffer: torch.Tensor) -> torch.Tensor:
        """Return the unnormalized two-sided transform, flattened as the (C, R) transposed grid."""
        # NOTE: checked on CPU with a torch stand-in for the kernel only; the real kernel
        # has not run in the tests yet (tests/test_hadamard.py::test_cuda_kernel_matches_torch).
        transform = _load_kernel()
        rows_grid, cols_grid = self.grid_shape
        batch = buffer.shape[0]
        # A transform of length 1 is the identity, so axes of size 1 skip the kernel. The
        # transposed grid is written back into `buffer`, so at most two (rows, D) buffers
        # are alive at once.
        if cols_grid > 1:
            along_columns = transform(buffer.view(batch * rows_grid, cols_grid), 1.0)
            grid = along_columns.view(batch, rows_grid, cols_grid).transpose(1, 2)
            buffer.view(batch, cols_grid, rows_grid).copy_(grid)
            del along_columns, grid
        # With one column the transposed grid has the same flat layout, so no copy is needed.
        if rows_grid == 1:
            return buffer
        along_rows = transform(buffer.view(batch * cols_grid, rows_grid), 1.0)
        return along_rows.view(batch, self.padded_dim)
