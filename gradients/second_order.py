"""Landmark scores and curvature in full parameter space, for second-order and Adam-aware selection.

For L landmarks with step directions D_L (L x N: per-sample gradients of the selected, masked
parameters, each multiplied elementwise by the optimizer's scale a; a = 1 for plain SGD) and
target gradients U (m x N) shifted by the optimizer's constant step b0,

    U_j = g_j - eta H_T b0,    P_L = D_L U^T   (L x m),    Q_L = D_L H_T D_L^T   (L x L),

with H_T the Hessian (or Gauss-Newton matrix) of the mean target loss over all target samples.
The pool's curvature is then Q = C Q_L C^T with C (n x L) the kernel ridge coefficients;
``idopt`` keeps it factored as A^T H A with A = C^T and H = Q_L.

What lives where, with N the selected (masked) parameter count:

* full space, float32: D_L (4 L N bytes, held in memory), the m target gradients (4 m N), one
  block of ``hvp_chunk`` products H_T D_L (4 hvp_chunk N);
* never projected: a product H_T v needs v in parameter space, so the second-order path skips
  the Hadamard projection and P_L is exact;
* small: P_L, Q_L (saved as stage checkpoints).

For the full SmolLM2-135M (N = 1.3e8) and L = 64, D_L alone takes 34 GiB; ``--grad-mask`` or
``--params`` bring N down (N = 2^22 takes 1 GiB for L = 64).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from idopt.errors import InvalidInputError

from .hessian import TargetCurvature
from .params import ParameterMask

logger = logging.getLogger(__name__)

BYTES_PER_VALUE = 4


def physical_memory_bytes() -> int | None:
    """Return the machine's physical memory in bytes, or None where the OS does not report it."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(num_landmarks: int, num_targets: int, dim: int, hvp_chunk: int, device: torch.device) -> int:
    """Return the bytes the full-space arrays need; raise when they exceed 80% of the machine's memory.

    bytes = 4 N (L + m + hvp_chunk) for N selected (masked) parameters.
    """
    needed = BYTES_PER_VALUE * dim * (num_landmarks + num_targets + hvp_chunk)
    available = physical_memory_bytes()
    logger.info(
        "Full-space gradients: %d landmarks + %d targets + %d products x %d parameters = %.2f GiB",
        num_landmarks, num_targets, hvp_chunk, dim, needed / 2**30,
    )
    if device.type == "cpu" and available is not None and needed > 0.8 * available:
        raise InvalidInputError(
            f"the second-order and Adam-aware path keeps {num_landmarks + num_targets + hvp_chunk} gradients of "
            f"{dim} parameters in memory ({needed / 2**30:.1f} GiB), more than 80% of this machine's "
            f"{available / 2**30:.1f} GiB; lower N with --grad-mask (e.g. 4194304) or --params, or use fewer landmarks"
        )
    return needed


def step_gradients(
    model, batch, params, mask: ParameterMask | None, *, normalize: bool = False, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the rows a * g_i / ||a * g_i|| of one collated batch, shape (B, N), float32.

    g_i is sample i's gradient over the selected (masked) parameters (``gradients.per_sample``),
    a is ``scale`` (1 when None) and the division happens only when ``normalize``.
    """
    from gradients.per_sample import per_sample_gradients

    grads = per_sample_gradients(model, batch, params, mask=mask, normalize=normalize and scale is None)
    if scale is None:
        return grads
    grads = grads * scale.to(grads.device)
    if normalize:
        grads = grads / torch.linalg.vector_norm(grads, dim=1, keepdim=True).clamp_min(torch.finfo(grads.dtype).tiny)
    return grads


def full_gradients(
    model, samples: Sequence, params, mask: ParameterMask | None, pad_token_id: int, batch_size: int, desc: str,
    *, normalize: bool = False, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return :func:`step_gradients` of ``samples`` batch by batch, shape (len, N), float32 on the CPU."""
    from gradients.tokenize import collate

    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        batch = collate(list(samples[start:start + batch_size]), pad_token_id)
        rows.append(step_gradients(model, batch, params, mask, normalize=normalize, scale=scale).cpu())
    return torch.cat(rows)


def landmark_curvature(
    curvature: TargetCurvature, directions: torch.Tensor, hvp_chunk: int,
) -> np.ndarray:
    """Return Q_L = D_L H_T D_L^T, (L, L) float64, symmetrized, from L Hessian-vector products.

    Products are taken ``hvp_chunk`` directions at a time, so only one (hvp_chunk, N) block of
    H_T D_L exists at once.
    """
    count = directions.shape[0]
    result = np.empty((count, count))
    device = next(curvature.model.parameters()).device
    for start in tqdm(range(0, count, hvp_chunk), desc="Hessian-vector products", unit="chunk"):
        block = directions[start:start + hvp_chunk].to(device)
        products = curvature.matmul(block)
        result[start:start + block.shape[0]] = (products.double().cpu() @ directions.double().T).numpy()
        del products
    asymmetry = float(np.max(np.abs(result - result.T)))
    scale = max(float(np.max(np.abs(result))), 1e-300)
    if asymmetry > 1e-3 * scale:
        logger.warning("Q_L is far from symmetric (max |Q - Q^T| = %.3g of max |Q| = %.3g); using (Q + Q^T)/2",
                       asymmetry, scale)
    return 0.5 * (result + result.T)


def shifted_targets(
    target_rows: torch.Tensor, curvature: TargetCurvature | None, offset: torch.Tensor | None, eta: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (U, H_T b0): U = target_rows - eta H_T b0 row by row, or the rows unchanged without b0.

    target_rows: (m, N); offset b0: (N,). H_T b0 costs one Hessian-vector product.
    """
    if offset is None or curvature is None:
        return target_rows, None
    device = next(curvature.model.parameters()).device
    curved = curvature.matmul(offset[None].to(device))[0].float().cpu()
    logger.info("Momentum and weight-decay shift: ||eta H_T b0|| = %.3g, ||mean target gradient|| = %.3g",
                eta * float(curved.norm()), float(target_rows.mean(dim=0).norm()))
    return target_rows - eta * curved[None], curved


def quadratic_terms(problem, weights: np.ndarray) -> list[dict]:
    """Return, per target column j, T1 = p_j^T w_j, T2 = (eta/2c) w_j^T Q w_j and |T2| / (|T1| + |T2|).

    weights: (n, m) the targets' own solutions. The share is the part of the modeled objective
    -T1 + T2 (before the l2 term) that the second-order term carries.
    """
    p = problem.p if problem.p.ndim == 2 else problem.p[:, None]
    rows = []
    for j in range(weights.shape[1]):
        w = weights[:, j]
        # One weight column for several targets means the "mean" aggregate, solved on mean p.
        column = p.mean(axis=1) if weights.shape[1] < p.shape[1] else p[:, j]
        first = float(column @ w)
        second = 0.5 * problem.curvature * float(w @ problem.quad_matvec(w))
        total = abs(first) + abs(second)
        rows.append({"T1": first, "T2": second, "second_order_share": abs(second) / total if total > 0 else 0.0})
    return rows
