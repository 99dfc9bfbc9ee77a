"""Dense Rademacher projection, regenerated block by block from seeds.

P = R / sqrt(d) with R in {-1, +1}^(d x N) i.i.d. uniform. Each entry has mean 0 and
variance 1, so E[R^T R] = d I and E <P x, P y> = <x, y>. The matrix is never held whole:
it is cut into blocks of ``block_rows`` input coordinates, and block j is regenerated on
every call from its own seed, the j-th child of ``numpy.random.SeedSequence(seed).spawn``.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gradients.projection import Projector, _check_int

logger = logging.getLogger(__name__)

# Default block size: the float32 block of R (block_rows x d) takes about this many bytes.
DEFAULT_BLOCK_BYTES = 1 << 26

# Blocks per call from which a progress bar is shown.
_PROGRESS_MIN_BLOCKS = 64


@functools.lru_cache(maxsize=1)
def _byte_to_signs() -> torch.Tensor:
    """Return the (256, 8) float32 table whose row b contains 2 * bit_i(b) - 1 for i = 0..7."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return (2 * bits - 1).to(torch.float32)


def block_seed(seed: int, index: int) -> int:
    """Return the seed of block ``index``, drawn from child ``index`` of SeedSequence(seed).

    The seed is the first uint64 word of the child's state shifted right by one bit, so it
    fits torch's manual_seed as a non-negative int below 2^63.

    SeedSequence(seed, spawn_key=(index,)) is the same sequence as
    ``SeedSequence(seed).spawn(index + 1)[index]``, built in O(1).
    """
    child = np.random.SeedSequence(seed, spawn_key=(index,))
    return int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def rademacher_block(seed: int, index: int, rows: int, cols: int) -> torch.Tensor:
    """Generate the signs of block ``index`` as a (rows, cols) float32 CPU tensor.

    Entries are +1 or -1, each with probability 1/2, independent. Eight entries come from
    one random byte drawn by ``torch.Generator().manual_seed(block_seed(seed, index))``.

    Parameters
    ----------
    seed : int
        Projector seed.
    index : int
        Block number j >= 0.
    rows, cols : int
        Shape of the block.

    Returns
    -------
    torch.Tensor, shape (rows, cols)
        float32 signs on the CPU.
    """
    generator = torch.Generator().manual_seed(block_seed(seed, index))
    count = rows * cols
    random_bytes = torch.randint(0, 256, ((count + 7) // 8,), generator=generator)
    signs = _byte_to_signs().index_select(0, random_bytes).view(-1)
    return signs[:count].view(rows, cols)


class RademacherProjector(Projector):
    """Dense Rademacher projection P = R / sqrt(d), R in {-1, +1}^(d x N).

    P x = R x / sqrt(d), so E ||P x||^2 = ||x||^2 and E <P x, P y> = <x, y>. Block j of
    R^T, rows j * block_rows to min((j + 1) * block_rows, N) - 1 (input coordinates),
    equals :func:`rademacher_block` (seed, j, rows, d). A call costs O(B N d) operations
    plus generating N d random signs, whatever the batch size B, so project gradients in
    large batches.

    Parameters
    ----------
    input_dim : int
        N >= 1.
    proj_dim : int
        d >= 1.
    seed : int
        Seed in [0, 2^63 - 1].
    device : str or torch.device, optional
        Device of the matrix product and of the outputs. Default: CPU.
    block_rows : int, optional
        Input coordinates per block, >= 1. It is part of the matrix definition: changing
        it changes R. Default: about 2^26 bytes of float32 per block, at most N.
    show_progress : bool, optional
        Whether to show a tqdm bar over blocks when a call has at least 64 blocks.
        Default: True.

    Notes
    -----
    The signs are generated on the CPU so the same seed gives the same R on every
    device.
    """

    def __init__(
        self,
        input_dim: int,
        proj_dim: int,
        seed: int,
        device: Any = None,
        block_rows: int | None = None,
        show_progress: bool = True,
    ) -> None:
        super().__init__(input_dim, proj_dim, seed, device)
        if block_rows is None:
            block_rows = min(self.input_dim, max(1, DEFAULT_BLOCK_BYTES // (4 * self.proj_dim)))
        self.block_rows = _check_int("block_rows", block_rows, 1)
        self.show_progress = bool(show_progress)

    @property
    def num_blocks(self) -> int:
        """Number of blocks of input coordinates, ceil(N / block_rows)."""
        return -(-self.input_dim // self.block_rows)

    def _project_batch(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        out = torch.zeros((batch_size, self.proj_dim), dtype=torch.float32, device=self.device)
        if batch_size == 0:
            return out
        blocks = range(self.num_blocks)
        hide = not self.show_progress or self.num_blocks < _PROGRESS_MIN_BLOCKS
        for index in tqdm(blocks, desc="Rademacher projection", disable=hide, leave=False):
            start = index * self.block_rows
            stop = min(start + self.block_rows, self.input_dim)
            # NOTE: the signs are generated on the CPU for every device (so R is the same
            # everywhere), which likely bounds CUDA runs by the CPU; not measured on a GPU.
            block = rademacher_block(self.seed, index, stop - start, self.proj_dim)
            block = block.to(self.device)
            columns = x[:, start:stop].to(device=self.device, dtype=torch.float32)
            out.addmm_(columns, block)
        return out.mul_(1.0 / math.sqrt(self.proj_dim))
