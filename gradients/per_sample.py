"""Per-sample loss gradients of a causal language model, computed batched.

Loss of sample b (standard causal shift, labels equal to -100 ignored):

    loss_b = (1 / T_b) * sum over t in S_b of -log softmax(logits[b, t - 1])[labels[b, t]]
    S_b = {t >= 1 : labels[b, t] != -100},  T_b = |S_b|

The gradient of loss_b with respect to the selected parameters, flattened and
concatenated in the order of ``params``, is row b of the result.

How padding is handled: batches are right padded, so every real token of a sample sits
before all of its padding. Under causal attention a real token attends only to itself and
to earlier tokens, which are all real. The model is therefore run WITHOUT the 2-D
attention mask and with the default positions 0..L-1. The outputs at real positions are
the same as with the mask. The loss never reads the padding positions because their
labels are -100. This has two consequences:

* ``torch.func.vmap`` can batch the model. Hugging Face mask creation from a 2-D padding
  mask runs data-dependent control flow that vmap rejects (checked with transformers 5.25),
  but with no mask it uses only the sequence length.
* No attention row is fully masked, so fused SDPA kernels cannot produce NaN or
  kernel-dependent values for padded rows. The tests check "eager" and "sdpa".

NOTE: this relies on every token seeing only itself and earlier tokens. A model whose
forward reads the attention mask for anything else (packed sequences, bidirectional
prefixes) gets wrong gradients here without any error.

A sample's result depends on the batch it sits in only through float rounding: each
sample is its own vmap slice, and the batch only sets how many trailing padding
positions the slice carries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from idopt.errors import IdoptError, InvalidInputError

from .params import ParameterMask, flat_dim, select_parameters

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_METHODS = ("vmap", "loop")


def sample_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Compute the mean label-token cross-entropy of every sample in a batch.

    loss_b = (1 / T_b) * sum over label positions t >= 1 of
    -log softmax(logits[b, t - 1])[labels[b, t]], in nats. Half-precision logits are cast
    to float32 first.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM whose forward takes ``input_ids`` (B, L) and returns ``.logits`` (B, L, V).
    batch : Mapping[str, torch.Tensor]
        ``input_ids`` (B, L) int64, ``attention_mask`` (B, L) with 1 for real tokens and
        right padding (optional, all ones when absent), ``labels`` (B, L) int64 with -100 at
        ignored and padding positions.

    Returns
    -------
    torch.Tensor
        Shape (B,), on the model's device, float32 for half-precision models and the model
        dtype otherwise. Autograd tracks it when grad mode is
        on. The model's train/eval mode is used as is, so call ``model.eval()`` first for a
        deterministic loss.

    Raises
    ------
    InvalidInputError
        If the batch is malformed or a row has no label token after position 0.
    """
    device = _model_device(model)
    input_ids, lengths, labels = _validate_batch(batch, _vocab_size(model), device)
    _check_label_counts(labels)
    length = int(lengths.max())
    logits = model(input_ids=input_ids[:, :length], use_cache=False).logits
    return _token_mean_loss(logits, labels[:, :length])


def per_sample_gradients(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.nn.Parameter] | str,
    mask: ParameterMask | None = None,
    normalize: bool = True,
    *,
    chunk_size: int | None = None,
    method: str = "vmap",
) -> torch.Tensor:
    """Compute the flattened loss gradient of every sample in a batch.

    G[b] = concat over selected p of d loss_b / d p, flattened (see the module docstring
    for loss_b), then G[b] = G[b][mask.indices] when a mask is given, and
    G[b] = G[b] / ||G[b]||_2 when ``normalize`` is true.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face style causal LM with causal self-attention. Its dropout is switched
        off during the call (``model.eval()``) and its train/eval mode is restored after.
    batch : Mapping[str, torch.Tensor]
        ``input_ids`` (B, L), ``attention_mask`` (B, L) right padded, ``labels`` (B, L)
        with -100 at ignored and padding positions. Moved to the device of the parameters.
    params : Mapping[str, torch.nn.Parameter] or str
        Parameters to differentiate, as returned by :func:`select_parameters`, or a spec
        string passed to it. The other parameters are held constant.
    mask : ParameterMask, optional
        Element subset of the flat gradient; ``mask.total_dim`` must equal N.
    normalize : bool
        Scale each row to unit Euclidean length.
    chunk_size : int, optional
        Samples differentiated at once. Peak memory grows with chunk_size x N float32 for
        the gradients plus the activations of chunk_size sequences. None means all of B.
    method : {"vmap", "loop"}
        ``"vmap"``: ``torch.func.vmap(torch.func.grad(loss))`` with
        ``torch.func.functional_call``, one batched forward and backward per chunk.
        ``"loop"``: one ``torch.autograd.grad`` per sample, for models vmap cannot trace,
        and as a reference. With torch 2.13 on CPU, vmap has no batching rule for the
        fused SDPA kernel and runs it per sample (torch warns "There is a performance
        drop"), yet it was still faster than "loop" in ``benchmarks/bench_per_sample.py``.

    Returns
    -------
    torch.Tensor
        Shape (B, N) or (B, m) with a mask, float32, on the device of the parameters. For a
        bfloat16 or float16 model the loss is computed in float32 from upcast logits, the
        backward pass runs in the model dtype, and the gradients are upcast afterwards.
        NOTE: the half-precision path is tested with bfloat16 on CPU only, not on CUDA.

    Raises
    ------
    InvalidInputError
        If an argument is malformed, a row has no label token, or ``normalize`` is true and a
        row's gradient is zero (the message names the row).
    IdoptError
        If a gradient contains NaN or inf (the message names the row).
    """
    if isinstance(params, str):
        params = select_parameters(model, params)
    _validate_params(model, params)
    total_dim = flat_dim(params)
    if mask is not None:
        _validate_mask(mask, total_dim)
    if method not in _METHODS:
        raise InvalidInputError(f"method must be one of {_METHODS}, got {method!r}")

    device = _model_device(model)
    input_ids, lengths, labels = _validate_batch(batch, _vocab_size(model), device)
    _check_label_counts(labels)
    batch_size = input_ids.shape[0]
    chunk_size = _validate_chunk_size(chunk_size, batch_size)

    out_dim = total_dim if mask is None else mask.size
    local_indices = None if mask is None else mask.split([int(p.numel()) for p in params.values()])
    result = torch.empty(batch_size, out_dim, dtype=torch.float32, device=device)
    with _eval_mode(model):
        for start in range(0, batch_size, chunk_size):
            stop = min(start + chunk_size, batch_size)
            # Dropping the trailing columns that are padding in every row of the chunk is
            # exact, because no real token attends to a later position.
            length = int(lengths[start:stop].max())
            chunk_ids = input_ids[start:stop, :length]
            chunk_labels = labels[start:stop, :length]
            if method == "vmap":
                grads = _vmap_gradients(model, params, chunk_ids, chunk_labels)
            else:
                grads = _loop_gradients(model, params, chunk_ids, chunk_labels, lengths[start:stop])
            rows = stop - start
            if local_indices is None:
                blocks = [g.reshape(rows, -1) for g in grads]
            else:
                # Masking each parameter's block avoids building the (rows, N) flat gradient.
                blocks = [
                    g.reshape(rows, -1).index_select(1, idx.to(g.device)) for g, idx in zip(grads, local_indices)
                ]
            del grads
            flat = torch.cat([block.float() for block in blocks], dim=1)
            del blocks
            # A finite row norm implies finite entries, so the full scan runs only when a norm is not.
            norms = torch.linalg.vector_norm(flat, dim=1)
            if not bool(torch.isfinite(norms).all()):
                _check_finite(flat, start)
            if normalize:
                flat = _normalize_rows(flat, start)
            result[start:stop] = flat
    return result


def iter_per_sample_gradients(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    params: Mapping[str, torch.nn.Parameter] | str,
    mask: ParameterMask | None = None,
    normalize: bool = True,
    *,
    chunk_size: int | None = None,
    method: str = "vmap",
    desc: str = "per-sample gradients",
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield :func:`per_sample_gradients` for each batch, with a tqdm progress bar.

    Parameters
    ----------
    batches : Iterable[Mapping[str, torch.Tensor]]
        Batches in the format of :func:`per_sample_gradients`. The bar shows a total when
        ``len(batches)`` is defined.
    desc : str
        Label of the progress bar.
    progress : bool
        Show the progress bar.
    model, params, mask, normalize, chunk_size, method
        As in :func:`per_sample_gradients`. A spec string in ``params`` is resolved once.

    Yields
    ------
    torch.Tensor
        Shape (B_i, N) or (B_i, m) float32 for batch i.
    """
    if isinstance(params, str):
        params = select_parameters(model, params)
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    for index, batch in enumerate(tqdm(batches, desc=desc, total=total, disable=not progress, unit="batch")):
        logger.debug("per-sample gradients of batch %s", index)
        yield per_sample_gradients(
            model, batch, params, mask, normalize, chunk_size=chunk_size, method=method
        )


def _vmap_gradients(model, params, input_ids, labels) -> list[torch.Tensor]:
    names = list(params)
    detached = {name: param.detach() for name, param in params.items()}

    def loss_of_one(selected, ids, target):
        logits = functional_call(model, selected, args=(ids.unsqueeze(0),), kwargs={"use_cache": False}).logits
        return _token_mean_loss(logits, target.unsqueeze(0))[0]

    # torch.func.grad ignores an enclosing no_grad for its own inputs, so no_grad only stops
    # ordinary autograd from recording a graph for the parameters held constant.
    with torch.no_grad():
        grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(detached, input_ids, labels)
    return [grads[name] for name in names]


def _loop_gradients(model, params, input_ids, labels, lengths) -> list[torch.Tensor]:
    tensors = list(params.values())
    rows: list[tuple[torch.Tensor, ...]] = []
    with torch.enable_grad():
        for row in range(input_ids.shape[0]):
            length = int(lengths[row])
            logits = model(input_ids=input_ids[row : row + 1, :length], use_cache=False).logits
            loss = _token_mean_loss(logits, labels[row : row + 1, :length])[0]
            rows.append(torch.autograd.grad(loss, tensors))
    return [torch.stack([row_grads[k] for row_grads in rows]) for k in range(len(tensors))]


def _token_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean label-token cross-entropy per row: logits (B, L, V), labels (B, L) -> (B,).

    Half-precision logits are upcast to float32; float32 and float64 logits keep their dtype.
    """
    shifted_logits = logits[:, :-1, :].to(torch.promote_types(logits.dtype, torch.float32))
    shifted_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return token_loss.sum(dim=1) / counts


def _validate_batch(batch, vocab_size: int | None, device: torch.device):
    """Check a batch and return (input_ids, lengths, labels) on ``device``, with lengths of shape (B,)."""
    if not isinstance(batch, Mapping):
        raise InvalidInputError(f"batch must be a mapping of tensors, got {type(batch).__name__}")
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise InvalidInputError(f"batch is missing {key!r}; it has keys {sorted(batch)}")

    input_ids = _integer_matrix(batch, "input_ids")
    labels = _integer_matrix(batch, "labels")
    if "attention_mask" in batch and batch["attention_mask"] is not None:
        attention_mask = _integer_matrix(batch, "attention_mask")
    else:
        attention_mask = torch.ones_like(input_ids)
    for name, tensor in (("labels", labels), ("attention_mask", attention_mask)):
        if tensor.shape != input_ids.shape:
            raise InvalidInputError(
                f"batch[{name!r}] must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    if input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise InvalidInputError(
            f"batch['input_ids'] needs at least 1 row and 2 positions, got shape {tuple(input_ids.shape)}"
        )

    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise InvalidInputError(f"batch['attention_mask'] must contain only 0 and 1, got values {attention_mask.unique().tolist()}")
    not_right_padded = (attention_mask[:, 1:] > attention_mask[:, :-1]).any(dim=1) | (attention_mask[:, 0] == 0)
    if bool(not_right_padded.any()):
        rows = _first_rows(not_right_padded)
        raise InvalidInputError(
            f"batch['attention_mask'] must be right padded (ones, then zeros, starting with a one); rows {rows} are not"
        )
    labelled_padding = (attention_mask == 0) & (labels != IGNORE_INDEX)
    if bool(labelled_padding.any()):
        rows = _first_rows(labelled_padding.any(dim=1))
        raise InvalidInputError(f"batch['labels'] must be {IGNORE_INDEX} at padding positions; rows {rows} are not")

    if vocab_size is not None:
        if bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
            raise InvalidInputError(
                f"batch['input_ids'] must lie in [0, {vocab_size}), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        bad_labels = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
        if bool(bad_labels.any()):
            raise InvalidInputError(
                f"batch['labels'] must be {IGNORE_INDEX} or lie in [0, {vocab_size}); "
                f"rows {_first_rows(bad_labels.any(dim=1))} are not"
            )

    lengths = attention_mask.sum(dim=1)
    return input_ids.to(device), lengths, labels.to(device)


def _integer_matrix(batch, key: str) -> torch.Tensor:
    tensor = batch[key]
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"batch[{key!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 2:
        raise InvalidInputError(f"batch[{key!r}] must be 2-D (B, L), got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise InvalidInputError(f"batch[{key!r}] must have an integer dtype, got {tensor.dtype}")
    return tensor.long()


def _check_label_counts(labels: torch.Tensor) -> None:
    empty = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1) == 0
    if bool(empty.any()):
        raise InvalidInputError(
            f"batch rows {_first_rows(empty)} have no label token after position 0 (all labels are "
            f"{IGNORE_INDEX}), so their loss is undefined; drop these rows"
        )


def _first_rows(row_flags: torch.Tensor, limit: int = 10) -> list[int]:
    return torch.nonzero(row_flags).flatten()[:limit].tolist()


def _validate_params(model: torch.nn.Module, params) -> None:
    if not isinstance(params, Mapping) or not params:
        raise InvalidInputError(
            f"params must be a non-empty mapping name -> parameter (see select_parameters), got {type(params).__name__}"
        )
    model_params = dict(model.named_parameters(remove_duplicate=False))
    for name, param in params.items():
        if model_params.get(name) is not param:
            raise InvalidInputError(
                f"params[{name!r}] is not the parameter of that name in {type(model).__name__}; "
                "build params with select_parameters(model, spec)"
            )
        if not param.is_floating_point():
            raise InvalidInputError(f"params[{name!r}] must be floating point, got {param.dtype}")


def _validate_mask(mask, total_dim: int) -> None:
    if not isinstance(mask, ParameterMask):
        raise InvalidInputError(f"mask must be a ParameterMask or None, got {type(mask).__name__}")
    if mask.total_dim != total_dim:
        raise InvalidInputError(
            f"mask.total_dim={mask.total_dim} does not match the {total_dim} elements of params; "
            "build it with ParameterMask.for_params(params, ...)"
        )


def _validate_chunk_size(chunk_size, batch_size: int) -> int:
    if chunk_size is None:
        return batch_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _check_finite(flat: torch.Tensor, row_offset: int) -> None:
    bad = ~torch.isfinite(flat).all(dim=1)
    if bool(bad.any()):
        rows = [row_offset + row for row in _first_rows(bad)]
        raise IdoptError(f"the gradients of batch rows {rows} contain NaN or inf")


def _normalize_rows(flat: torch.Tensor, row_offset: int) -> torch.Tensor:
    norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    if bool(zero.any()):
        rows = [row_offset + row for row in _first_rows(zero)]
        raise InvalidInputError(
            f"the gradients of batch rows {rows} are zero over the selected parameters (or mask), "
            "so they cannot be normalized; select other parameters, drop these rows or pass normalize=False"
        )
    return flat / norms


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise InvalidInputError(f"model {type(model).__name__} has no parameters") from None


def _vocab_size(model: torch.nn.Module) -> int | None:
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    return getattr(embeddings, "num_embeddings", None)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Switch off dropout for the duration, then restore each module's training flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
