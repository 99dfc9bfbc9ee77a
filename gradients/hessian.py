"""Hessian-vector products of the mean target loss, exact or Gauss-Newton, over selected parameters.

The target loss is the mean over the m target samples of each sample's mean label-token
cross-entropy (``gradients.per_sample.sample_loss``):

    L_T(theta) = (1/m) sum_j loss_j(theta)

Vectors live in the flat space of the selected parameters (``gradients.params``), restricted
to a ``ParameterMask`` when one is given. Then H v means H_MM v for the rows and columns M that
the mask keeps, which is the curvature seen by a step that moves only those coordinates.

* ``"hessian"``: H_T v by double backward. The gradient is built once per batch with
  ``create_graph=True``; each vector then costs one more backward pass through that graph.
* ``"gauss_newton"``: G v = J^T H_out J v, with J the Jacobian of the logits and H_out the
  Hessian of the cross-entropy in the logits, per token (diag(pi) - pi pi^T) times the token's
  loss weight. It is positive semidefinite, unlike H_T far from a minimum. J v comes from the
  double-vjp identity J v = d/du (J^T u) . v, so no forward-mode support is needed.

Projected gradients cannot be used here: a product H v needs v in parameter space, so every
vector passed in has the full selected (masked) length N, stored as float32 (4 N bytes each).
The retained graph costs about two to three times the activations of an ordinary backward pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from idopt.errors import InvalidInputError

from .model import attention_implementation
from .params import ParameterMask, flat_dim
from .per_sample import IGNORE_INDEX, _eval_mode, _validate_batch, _vocab_size, _check_label_counts

logger = logging.getLogger(__name__)

CURVATURES = ("hessian", "gauss_newton")


@contextlib.contextmanager
def only_selected_require_grad(model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Switch ``requires_grad`` off for the unselected parameters for the duration, then restore it."""
    selected = {id(p) for p in params.values()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(id(param) in selected)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def flatten_selected(
    grads: Sequence[torch.Tensor | None], tensors: Sequence[torch.Tensor], local: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Concatenate per-parameter tensors into one flat (N,) vector of the selected (masked) parameters.

    grads[i] belongs to tensors[i]; None (a parameter the loss does not reach) counts as zeros.
    local[i] holds the kept indices within tensors[i] (``ParameterMask.split``), or local is None
    for all of them. Half-precision values are upcast to float32.
    """
    pieces = []
    for position, (grad, param) in enumerate(zip(grads, tensors)):
        flat = torch.zeros(param.numel(), dtype=param.dtype, device=param.device) if grad is None else grad.reshape(-1)
        if local is not None:
            flat = flat[local[position]]
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        pieces.append(flat)
    return torch.cat(pieces)


class TargetCurvature:
    """Curvature of the mean target loss L_T, applied to vectors of the selected parameters.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM (see ``gradients.per_sample``); run in eval mode during each call.
    batches : sequence of batches
        Collated target batches (``gradients.tokenize.collate``), m samples in all.
    params : Mapping[str, Parameter]
        Selected parameters in flat order (``gradients.params.select_parameters``).
    mask : ParameterMask, optional
        Element subset of the flat vector; vectors then have length ``mask.size``.
    curvature : {"hessian", "gauss_newton"}
        Exact Hessian or the Gauss-Newton matrix (see the module docstring).
    """

    def __init__(self, model, batches: Sequence[Mapping[str, torch.Tensor]], params, mask: ParameterMask | None = None,
                 curvature: str = "hessian") -> None:
        if curvature not in CURVATURES:
            raise InvalidInputError(f"curvature={curvature!r} is not one of {CURVATURES}")
        if not batches:
            raise InvalidInputError("TargetCurvature needs at least one target batch")
        self.model = model
        self.params = params
        self.curvature = curvature
        self.total_dim = flat_dim(params)
        self.mask = mask
        if mask is not None and mask.total_dim != self.total_dim:
            raise InvalidInputError(f"mask covers {mask.total_dim} elements but the selected parameters have {self.total_dim}")
        self.dim = self.total_dim if mask is None else mask.size
        device = next(model.parameters()).device
        self.batches = []
        for batch in batches:
            input_ids, lengths, labels = _validate_batch(batch, _vocab_size(model), device)
            _check_label_counts(labels)
            length = int(lengths.max())
            self.batches.append((input_ids[:, :length], labels[:, :length]))
        self.num_samples = sum(ids.shape[0] for ids, _ in self.batches)
        sizes = [int(p.numel()) for p in params.values()]
        self._local = None if mask is None else [idx.to(device) for idx in mask.split(sizes)]
        self._shapes = [p.shape for p in params.values()]
        self._sizes = sizes

    # ------------------------------------------------------------------ flat <-> per parameter

    def _unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat (dim,) vector into per-parameter tensors, zero outside the mask."""
        blocks, start = [], 0
        for position, (shape, size) in enumerate(zip(self._shapes, self._sizes)):
            param = list(self.params.values())[position]
            if self._local is None:
                block = vector[start:start + size]
                start += size
            else:
                kept = self._local[position]
                block = torch.zeros(size, dtype=param.dtype, device=param.device)
                block[kept] = vector[start:start + kept.numel()].to(param.dtype)
                start += kept.numel()
            blocks.append(block.to(param.dtype).reshape(shape))
        return blocks

    def _flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return flatten_selected(tensors, list(self.params.values()), self._local)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise InvalidInputError(f"vectors must be a (k, {self.dim}) tensor of the selected parameters, got {shape}")
        if not bool(torch.isfinite(vectors).all()):
            raise InvalidInputError("vectors contain NaN or inf")
        return vectors.to(self._device)

    # ------------------------------------------------------------------ products

    def _batch_losses(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (B, L, V), per-token loss weights (B, L-1)) whose weighted loss sums to m L_T's share."""
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        shifted = labels[:, 1:]
        counts = (shifted != IGNORE_INDEX).sum(dim=1, keepdim=True).to(torch.float32)
        weights = (shifted != IGNORE_INDEX).to(torch.float32) / counts / self.num_samples
        return logits, weights

    def _weighted_loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        shifted_logits = logits[:, :-1, :].to(torch.promote_types(logits.dtype, torch.float32))
        token_loss = torch.nn.functional.cross_entropy(
            shifted_logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
        )
        return (token_loss * weights.to(token_loss.dtype)).sum()

    def gradient(self) -> torch.Tensor:
        """Return grad L_T, shape (dim,), in the model's float dtype (float32 for half precision)."""
        tensors = list(self.params.values())
        total = None
        with _eval_mode(self.model), only_selected_require_grad(self.model, self.params), torch.enable_grad():
            for input_ids, labels in self.batches:
                logits, weights = self._batch_losses(input_ids, labels)
                loss = self._weighted_loss(logits, labels, weights)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                flat = self._flatten(grads)
                total = flat if total is None else total + flat
        return total

    def matmul(self, vectors: torch.Tensor, *, progress: bool = False, desc: str = "Hessian-vector products") -> torch.Tensor:
        """Return C V^T as rows: out[i] = C v_i for C = H_T or the Gauss-Newton matrix.

        Parameters
        ----------
        vectors : (k, dim) tensor
            One vector of the selected (masked) parameters per row, any float dtype.
        progress : bool
            Show a progress bar over the k vectors of each batch.

        Returns
        -------
        (k, dim) tensor
            In the model's float dtype (float32 for half precision), on the model's device.
        """
        vectors = self._check_vectors(vectors)
        tensors = list(self.params.values())
        result = None
        # Fused SDPA kernels have no double backward on CPU (torch 2.13), so products run eager attention.
        with _eval_mode(self.model), only_selected_require_grad(self.model, self.params), torch.enable_grad(), \
                attention_implementation(self.model, "eager"):
            for input_ids, labels in self.batches:
                if self.curvature == "hessian":
                    rows = self._hessian_rows(input_ids, labels, vectors, tensors, progress, desc)
                else:
                    rows = self._gauss_newton_rows(input_ids, labels, vectors, tensors, progress, desc)
                result = rows if result is None else result + rows
        return result

    def _hessian_rows(self, input_ids, labels, vectors, tensors, progress, desc) -> torch.Tensor:
        logits, weights = self._batch_losses(input_ids, labels)
        loss = self._weighted_loss(logits, labels, weights)
        del logits
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        rows = []
        for index in tqdm(range(vectors.shape[0]), desc=desc, disable=not progress, unit="vector"):
            products = torch.autograd.grad(
                grads, tensors, grad_outputs=self._unflatten(vectors[index]),
                retain_graph=index + 1 < vectors.shape[0], allow_unused=True,
            )
            rows.append(self._flatten(products))
        return torch.stack(rows)

    def _gauss_newton_rows(self, input_ids, labels, vectors, tensors, progress, desc) -> torch.Tensor:
        logits, weights = self._batch_losses(input_ids, labels)
        shifted = logits[:, :-1, :]
        dummy = torch.zeros_like(shifted, requires_grad=True)
        # J^T u as a function of u; differentiating it along v gives J v.
        transposed = torch.autograd.grad(shifted, tensors, grad_outputs=dummy, create_graph=True, allow_unused=True)
        used = [(t, g) for t, g in zip(tensors, transposed) if g is not None]
        probs = torch.softmax(shifted.detach().to(torch.promote_types(shifted.dtype, torch.float32)), dim=-1)
        token_weights = weights.unsqueeze(-1).to(probs.dtype)
        rows = []
        for index in tqdm(range(vectors.shape[0]), desc=desc, disable=not progress, unit="vector"):
            blocks = self._unflatten(vectors[index])
            by_id = {id(t): b for t, b in zip(tensors, blocks)}
            jv = torch.autograd.grad(
                [g for _, g in used], dummy, grad_outputs=[by_id[id(t)] for t, _ in used], retain_graph=True,
            )[0].to(probs.dtype)
            # H_out z = (diag(pi) - pi pi^T) z, weighted per token.
            curved = token_weights * (probs * jv - probs * (probs * jv).sum(dim=-1, keepdim=True))
            products = torch.autograd.grad(
                shifted, tensors, grad_outputs=curved.to(shifted.dtype),
                retain_graph=index + 1 < vectors.shape[0], allow_unused=True,
            )
            rows.append(self._flatten(products))
        return torch.stack(rows)

    def numpy_hvp(self):
        """Return ``hvp(V)`` mapping a (dim, k) float64 array to C V, the callable ``idopt`` constructors take."""
        def hvp(matrix: np.ndarray) -> np.ndarray:
            vectors = torch.from_numpy(np.ascontiguousarray(np.asarray(matrix).T)).to(next(self.model.parameters()).dtype)
            return self.matmul(vectors).double().cpu().numpy().T
        return hvp
