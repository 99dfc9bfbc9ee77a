"""First- against second-order term of the target-loss change for one step on random source sets.

One weighted step on the pool loss (1/c) sum_i w_i loss_i moves the parameters by
-(eta/c) D w (- eta b0 with an Adam state). The columns of D = a * G_S are the per-sample
gradients of the c source samples times the optimizer's elementwise preconditioner a
(a = 1, b0 = 0 for plain gradient descent). A second-order Taylor expansion of the mean target
loss L_T gives the change

    delta = -(eta/c) [T1 - T2],   T1 = p^T w,   T2 = (eta/2c) w^T Q w,
    p = D^T u,   u = g_T - eta H_T b0,   Q = D^T H_T D,

with g_T and H_T the gradient and Hessian (or Gauss-Newton matrix) of L_T (the constant
-eta g_T^T b0 + (eta^2/2) b0^T H_T b0 does not depend on w and is left out). |T2/T1| measures
how much the second-order term matters at learning rate eta.

Both terms need only the single vector D w, because p and Q are linear in the columns of D:

    p^T w = (D w)^T u,   w^T Q w = (D w)^T H_T (D w),   D w = a * grad(sum_i w_i loss_i).

So one backward pass per source batch (no per-sample gradients), the target gradient and one
Hessian-vector product per source draw give the same numbers as forming p (c entries) and Q
(c x c, c Hessian-vector products) explicitly. ``explicit_terms`` does the latter as a check.
For plain gradient descent T1 does not depend on eta and T2/T1 is exactly linear in eta. With
an Adam state, T1 = (D w)^T g_T - eta (D w)^T H_T b0 needs one more product, H_T b0, shared by
all draws.

Units: losses are in nats per label token and delta is in nats. For plain gradient descent
T1 and T2 are in nats^2 per squared parameter unit. Vectors have the length N of the selected (masked) parameters.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tqdm.auto import tqdm

from idopt.errors import IdoptError, InvalidInputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_LRS = tuple(float(eta) for eta in np.geomspace(1e-6, 1e-2, 9))
# |T2/T1| at which the report locates the learning rate: the second-order term is 10% of the first.
RATIO_LEVEL = 0.1
CURVATURES = ("hessian", "gauss_newton")
DTYPES = ("float32", "bfloat16", "float16")
# Entries per chunk of the float64 dot products of full-length vectors (128 MiB of float64 each).
_DOT_CHUNK = 2**24


@dataclass
class OrderRatioConfig:
    """Settings of ``idopt order-ratio``, whose defaults run on the built-in real assets.

    Data: ``num_source`` source samples are drawn at random from the pool (the built-in
    BIG-bench + HumanEval pool of ``pool_size`` samples, or the ``pool`` files) in each of
    ``repeats`` independent draws. The target is ``num_target`` samples of task ``target_task``.
    For the built-in data that is a BIG-bench task name, by default the first built-in target
    task. With ``target`` files it is a ``source`` value of the records, by default any.
    ``max_length`` is in tokens.
    Step: ``lrs`` are the learning rates eta of the grid. ``optimizer_state`` (an ``idopt warmup``
    folder, a Trainer checkpoint or a torch.optim Adam/AdamW state dict) models an Adam step;
    without it the step is plain gradient descent. ``curvature`` is "hessian" or "gauss_newton".
    Gradients: ``params`` is "all", a name fragment or "re:<regex>", and ``grad_mask`` keeps that
    many random parameter elements (None = all). ``batch_size`` samples per forward pass.
    ``explicit`` also forms p and Q from per-sample gradients (c x N floats in memory) and
    reports the largest relative difference to the fast path, taking ``hvp_chunk`` vectors per block
    of its Hessian-vector products.
    """

    model: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str | None = None
    pool: list[str] | None = None
    target: list[str] | None = None
    target_task: str | None = None
    pool_size: int = 1000
    num_source: int = 128
    num_target: int = 4
    max_length: int = 256
    lrs: tuple[float, ...] = DEFAULT_LRS
    repeats: int = 3
    curvature: str = "hessian"
    params: str = "all"
    grad_mask: int | None = None
    optimizer_state: str | None = None
    batch_size: int = 4
    explicit: bool = False
    hvp_chunk: int = 8
    seed: int = 0
    output: str = "runs/order_ratio"
    cache: str | None = None

    def validate(self) -> "OrderRatioConfig":
        """Check value ranges and raise InvalidInputError naming the first bad setting and its fix."""
        positive = {
            "pool_size": self.pool_size, "num_source": self.num_source, "num_target": self.num_target,
            "max_length": self.max_length, "repeats": self.repeats, "batch_size": self.batch_size,
            "hvp_chunk": self.hvp_chunk,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}={value!r} is invalid. Pass a positive integer")
        if self.grad_mask is not None and (
            isinstance(self.grad_mask, bool) or not isinstance(self.grad_mask, int) or self.grad_mask < 1
        ):
            raise InvalidInputError(f"grad_mask={self.grad_mask!r} is invalid. Pass a positive integer, or None for all elements")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"seed={self.seed!r} is invalid. Pass an integer >= 0")
        self._validate_lrs()
        for name, allowed in (("curvature", CURVATURES), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise InvalidInputError(f"{name}={getattr(self, name)!r} is invalid. Pass one of {allowed}")
        if self.target_task is not None and (not isinstance(self.target_task, str) or not self.target_task.strip()):
            raise InvalidInputError(
                f"target_task={self.target_task!r} is empty. Pass a task name such as 'date_understanding', "
                "or leave it unset for the default"
            )
        if self.optimizer_state is not None and not Path(self.optimizer_state).exists():
            raise InvalidInputError(
                f"optimizer_state {self.optimizer_state!r} does not exist. Pass an `idopt warmup` optimizer folder, "
                "a Trainer checkpoint folder or a torch.optim state dict file"
            )
        for name in ("pool", "target"):
            for path in getattr(self, name) or []:
                if not Path(path).exists():
                    raise InvalidInputError(f"{name} file {path!r} does not exist. Check the path")
        return self

    def _validate_lrs(self) -> None:
        if isinstance(self.lrs, (str, bytes)) or not isinstance(self.lrs, Sequence) or len(self.lrs) == 0:
            raise InvalidInputError(f"lrs={self.lrs!r} is invalid. Pass at least one learning rate > 0")
        for eta in self.lrs:
            if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta > 0):
                raise InvalidInputError(
                    f"lrs contains {eta!r}, but every learning rate must be a finite number > 0, such as 1e-4"
                )

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        settings = asdict(self)
        settings["lrs"] = [float(eta) for eta in self.lrs]
        return settings


@dataclass
class TermPieces:
    """The eta-independent scalars of T1 and T2 for k weight vectors w, each an array of shape (k,).

    first = (D w)^T g_T, momentum = (D w)^T H_T b0 (0 without an offset b0) and
    quadratic = (D w)^T H_T (D w) = w^T Q w, with c the pool size of the step. Then
    T1(eta) = first - eta momentum and T2(eta) = (eta / 2c) quadratic.
    """

    first: np.ndarray
    momentum: np.ndarray
    quadratic: np.ndarray
    count: int

    def t1(self, eta: float) -> np.ndarray:
        """Return T1 = p^T w = first - eta momentum, shape (k,)."""
        return self.first - eta * self.momentum

    def t2(self, eta: float) -> np.ndarray:
        """Return T2 = (eta / 2c) w^T Q w, shape (k,)."""
        return eta / (2.0 * self.count) * self.quadratic

    def ratio(self, eta: float) -> np.ndarray:
        """Return |T2 / T1|, shape (k,), with inf where T1 is 0 and T2 is not."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.t2(eta)) / np.abs(self.t1(eta))


@dataclass
class OrderRatioResult:
    """Output of :func:`run_order_ratio`.

    lrs: (E,) learning rates, ascending. terms: the pieces of the R draws (k = R).
    source_ids: the sample ids of each draw. target_ids: the target sample ids. target_task:
    their task (None for mixed target files). num_parameters: N, the selected (masked)
    parameter count. optimizer: "SGD", "Adam" or "AdamW". state_learning_rate: the optimizer
    state's own learning rate (None without a state), to locate it on the grid. explicit: the
    largest relative differences of the explicit check, or None. seconds: wall time per stage.
    """

    config: OrderRatioConfig
    lrs: np.ndarray
    terms: TermPieces
    source_ids: list[list[str]]
    target_ids: list[str]
    target_task: str | None
    num_parameters: int
    pool_size: int
    optimizer: str
    optimizer_source: str
    state_learning_rate: float | None
    explicit: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary_rows(self) -> list[dict]:
        """Return one dict per learning rate: medians of T1 and T2, median, min and max of |T2/T1| over the draws."""
        rows = []
        for eta in self.lrs:
            ratio = self.terms.ratio(float(eta))
            rows.append({
                "learning_rate": float(eta),
                "T1_median": float(np.median(self.terms.t1(float(eta)))),
                "T2_median": float(np.median(self.terms.t2(float(eta)))),
                "ratio_median": float(np.median(ratio)),
                "ratio_min": float(np.min(ratio)),
                "ratio_max": float(np.max(ratio)),
            })
        return rows

    def learning_rates_at_level(self, level: float = RATIO_LEVEL) -> list[float | None]:
        """Return, per draw, the smallest eta with |T2/T1| = level (None where no eta > 0 reaches it)."""
        return [
            learning_rate_at_ratio(first, momentum, quadratic, self.terms.count, level)
            for first, momentum, quadratic in zip(self.terms.first, self.terms.momentum, self.terms.quadratic)
        ]


# ---------------------------------------------------------------------------------------------- terms


def learning_rate_at_ratio(first: float, momentum: float, quadratic: float, count: int,
                           level: float = RATIO_LEVEL) -> float | None:
    """Return the smallest eta > 0 at which |T2/T1| = level, or None when no eta > 0 reaches it.

    With T1 = first - eta momentum and T2 = eta quadratic / (2c), solve
    eta k = level |first - eta momentum| for k = |quadratic| / (2c): one root per sign of T1.
    For plain gradient descent (momentum = 0) this is eta = level |first| / k. Units: those of eta.
    """
    slope = abs(quadratic) / (2.0 * count)
    if slope == 0 or first == 0:
        return None
    candidates = []
    # T1 >= 0 at the root: eta k = level (first - eta momentum).
    denominator = slope + level * momentum
    if denominator != 0:
        eta = level * first / denominator
        if eta > 0 and first - eta * momentum >= 0:
            candidates.append(eta)
    # T1 <= 0 at the root: eta k = -level (first - eta momentum).
    denominator = slope - level * momentum
    if denominator != 0:
        eta = -level * first / denominator
        if eta > 0 and first - eta * momentum <= 0:
            candidates.append(eta)
    return min(candidates) if candidates else None


def summed_source_gradient(
    model, samples: Sequence, params, mask=None, pad_token_id: int = 0, batch_size: int = 4, *,
    weights: "torch.Tensor | None" = None, desc: str = "source gradient", progress: bool = True,
) -> "torch.Tensor":
    """Return G_S w = grad of sum_i w_i loss_i over the selected (masked) parameters, shape (N,).

    loss_i is sample i's mean label-token cross-entropy (``gradients.per_sample.sample_loss``)
    and w defaults to ones. Each batch of ``batch_size`` tokenized samples costs one forward
    and one backward pass, and no per-sample gradient is formed. The result is in the model's
    float dtype (float32 for half precision), on the model's device. Dropout is off during
    the call, and only the selected parameters take gradients.
    """
    import torch

    from .hessian import flatten_selected, only_selected_require_grad
    from .per_sample import _eval_mode, sample_loss
    from .tokenize import collate

    if not samples:
        raise InvalidInputError("samples is empty. Pass at least one tokenized source sample")
    if weights is not None and tuple(weights.shape) != (len(samples),):
        raise InvalidInputError(f"weights has shape {tuple(weights.shape)}. Pass one weight per sample, shape ({len(samples)},)")
    tensors = list(params.values())
    device = tensors[0].device
    local = None if mask is None else [index.to(device) for index in mask.split([int(p.numel()) for p in tensors])]
    total = None
    with _eval_mode(model), only_selected_require_grad(model, params), torch.enable_grad():
        for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = collate(list(samples[start:start + batch_size]), pad_token_id)
            losses = sample_loss(model, batch)
            if weights is not None:
                losses = losses * weights[start:start + batch_size].to(device=losses.device, dtype=losses.dtype)
            grads = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
            flat = flatten_selected(grads, tensors, local)
            total = flat if total is None else total + flat
    return total


def _dot(left: "torch.Tensor", right: "torch.Tensor") -> float:
    """Return left^T right accumulated in float64, chunk by chunk so no full float64 copy exists."""
    total = 0.0
    for start in range(0, left.numel(), _DOT_CHUNK):
        stop = start + _DOT_CHUNK
        total += float(left[start:stop].double() @ right[start:stop].double().to(left.device))
    return total


def order_terms(
    curvature, directions: "torch.Tensor", target_gradient: "torch.Tensor", count: int,
    offset: "torch.Tensor | None" = None, *, progress: bool = True,
) -> tuple[TermPieces, "torch.Tensor | None"]:
    """Return the pieces of T1 and T2 for every row d = D w of ``directions``, and H_T b0.

    first = d^T g_T, quadratic = d^T H_T d (= w^T Q w, since Q = D^T H_T D) and, with an
    offset b0, momentum = d^T H_T b0. ``count`` is c. One ``curvature.matmul`` call takes
    the k rows and b0 together (k + 1 Hessian-vector products for each target batch).

    Parameters
    ----------
    curvature : gradients.hessian.TargetCurvature
        H_T (or the Gauss-Newton matrix) of the mean target loss.
    directions : (k, N) tensor
        D w = a * G_S w per row, in the selected (masked) parameter space.
    target_gradient : (N,) tensor
        g_T, the gradient of the mean target loss.
    offset : (N,) tensor, optional
        The optimizer's constant step b0 (None for plain gradient descent).

    Returns
    -------
    (TermPieces with k entries, H_T b0 as an (N,) tensor or None)
    """
    import torch

    if directions.ndim != 2 or directions.shape[1] != target_gradient.shape[0]:
        raise InvalidInputError(
            f"directions has shape {tuple(directions.shape)}. Pass (k, {target_gradient.shape[0]}) rows of D w"
        )
    vectors = directions if offset is None else torch.cat([directions, offset[None].to(directions)])
    products = curvature.matmul(vectors, progress=progress, desc="Hessian-vector products")
    count_rows = directions.shape[0]
    first = np.array([_dot(row, target_gradient) for row in directions])
    quadratic = np.array([_dot(directions[k], products[k]) for k in range(count_rows)])
    offset_product = None if offset is None else products[count_rows]
    if offset_product is None:
        momentum = np.zeros(count_rows)
    else:
        momentum = np.array([_dot(row, offset_product) for row in directions])
    return TermPieces(first, momentum, quadratic, count), offset_product


def explicit_terms(
    model, samples: Sequence, params, mask, pad_token_id: int, batch_size: int, curvature,
    target_gradient: "torch.Tensor", *, scale: "torch.Tensor | None" = None,
    offset_product: "torch.Tensor | None" = None, hvp_chunk: int = 8, weights: np.ndarray | None = None,
) -> TermPieces:
    """Return the pieces of T1 and T2 for one weight vector w from an explicitly formed p and Q.

    The rows of D (c x N) are the per-sample gradients a * g_i (``second_order.full_gradients``, float32),
    p_first = D g_T, p_momentum = D H_T b0 and Q = D H_T D^T (c Hessian-vector products,
    ``second_order.landmark_curvature``). Then first = p_first^T w, momentum = p_momentum^T w
    and quadratic = w^T Q w, with w = 1 by default. Memory: 4 c N bytes for D, so use a small
    c or a small N (--params, --grad-mask). The float32 per-sample gradients limit the
    agreement with :func:`order_terms` to about 1e-6 relative.
    """
    from .second_order import check_memory, full_gradients, landmark_curvature

    device = next(model.parameters()).device
    check_memory(len(samples), 1, int(target_gradient.shape[0]), hvp_chunk, device)
    directions = full_gradients(model, samples, params, mask, pad_token_id, batch_size,
                                "per-sample gradients (explicit check)", scale=scale)
    w = np.ones(len(samples)) if weights is None else np.asarray(weights, dtype=float)
    p_first = (directions.double() @ target_gradient.double().cpu()).numpy()
    p_momentum = np.zeros(len(samples))
    if offset_product is not None:
        p_momentum = (directions.double() @ offset_product.double().cpu()).numpy()
    q_matrix = landmark_curvature(curvature, directions, hvp_chunk)
    return TermPieces(np.array([p_first @ w]), np.array([p_momentum @ w]), np.array([w @ q_matrix @ w]), len(samples))


def relative_differences(fast: TermPieces, explicit: TermPieces, lrs: np.ndarray) -> dict:
    """Return the largest |fast - explicit| / |explicit| of T1 and of T2 over the draws and learning rates."""
    tiny = np.finfo(float).tiny
    t1 = max(float(np.max(np.abs(fast.t1(eta) - explicit.t1(eta)) / np.maximum(np.abs(explicit.t1(eta)), tiny)))
             for eta in lrs)
    t2 = float(np.max(np.abs(fast.quadratic - explicit.quadratic) / np.maximum(np.abs(explicit.quadratic), tiny)))
    return {"T1": t1, "T2": t2, "max": max(t1, t2)}


# ---------------------------------------------------------------------------------------------- data


def _load_targets(config: OrderRatioConfig, target_seed: int):
    """Return (target samples, task name or None) from the target files or the built-in tasks."""
    from gradients.data import load_samples

    if not config.target:
        from gradients.assets import find_assets
        from gradients.default_data import TARGET_TASKS, default_target

        task = config.target_task or TARGET_TASKS[0]
        return default_target(find_assets(config.cache), per_task=config.num_target, seed=config.seed, tasks=(task,)), task

    samples = [sample for path in config.target for sample in load_samples(path)]
    if config.target_task is not None:
        sources = sorted({sample.source for sample in samples})
        samples = [sample for sample in samples if sample.source == config.target_task]
        if not samples:
            raise InvalidInputError(
                f"target_task={config.target_task!r} matches no record of the target files, whose sources are "
                f"{sources[:10]}. Pass one of them or leave --target-task unset"
            )
    if not samples:
        raise InvalidInputError("the target files contain no sample. Pass a target file with at least one record")
    if len(samples) > config.num_target:
        chosen = np.sort(np.random.default_rng(target_seed).choice(len(samples), config.num_target, replace=False))
        samples = [samples[index] for index in chosen]
    elif len(samples) < config.num_target:
        logger.warning("num_target=%d exceeds the %d target samples, so all of them are used", config.num_target, len(samples))
    sources = {sample.source for sample in samples}
    return samples, (sources.pop() if len(sources) == 1 else None)


def _load_pool(config: OrderRatioConfig, targets: list):
    from gradients.data import load_samples

    if config.pool:
        pool = [sample for path in config.pool for sample in load_samples(path)]
        overlap = {sample.id for sample in pool} & {sample.id for sample in targets}
        if overlap:
            logger.warning("%d target sample ids also appear in the pool, e.g. %s", len(overlap), sorted(overlap)[:3])
        return pool
    from gradients.assets import find_assets
    from gradients.default_data import default_pool

    return default_pool(find_assets(config.cache), size=config.pool_size, seed=config.seed, exclude=targets)


def _tokenize(samples, tokenizer, max_length: int, name: str) -> list:
    from gradients.tokenize import tokenize_samples

    kept = list(tokenize_samples(samples, tokenizer, max_length).kept)
    if not kept:
        raise InvalidInputError(
            f"no {name} sample has an assistant token left after tokenization ({len(samples)} loaded). Increase "
            f"max_length={max_length} (the chat template adds a system prompt of about 20 tokens) or give the "
            "samples assistant answers"
        )
    return kept


def _draw_sources(pool: list, count: int, repeats: int, draw_seeds) -> list[list]:
    """Return ``repeats`` random subsets of ``count`` pool samples, each sorted by length to save padding."""
    draws = []
    for seed in draw_seeds[:repeats]:
        chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
        draws.append(sorted((pool[index] for index in chosen), key=lambda sample: len(sample.input_ids)))
    return draws


# ---------------------------------------------------------------------------------------------- run


def _load_inputs(config: OrderRatioConfig, model, tokenizer, target_seed):
    """Return (tokenized pool, tokenized targets, task, model, tokenizer), loading the data before the model.

    Data first, so that a malformed file fails before the model load.
    """
    from gradients.model import load_model

    targets, task = _load_targets(config, target_seed)
    pool_samples = _load_pool(config, targets)
    if not pool_samples:
        raise InvalidInputError("the pool is empty. Pass a pool file with at least one sample")
    if model is None or tokenizer is None:
        model, tokenizer = load_model(config.model, gguf_file=config.gguf_file, dtype=config.dtype,
                                      device=config.device, cache=config.cache)
    pool = _tokenize(pool_samples, tokenizer, config.max_length, "pool")
    targets = _tokenize(targets, tokenizer, config.max_length, "target")
    return pool, targets, task, model, tokenizer


def _explicit_check(config, model, draws, params, mask, pad_id, curvature, target_gradient, scale, offset_product,
                    terms: TermPieces, lrs: np.ndarray) -> dict:
    """Form p and Q for every draw and return the largest relative differences to ``terms``."""
    checks = [
        explicit_terms(model, draw, params, mask, pad_id, config.batch_size, curvature, target_gradient,
                       scale=scale, offset_product=offset_product, hvp_chunk=config.hvp_chunk)
        for draw in draws
    ]
    reference = TermPieces(
        np.concatenate([check.first for check in checks]),
        np.concatenate([check.momentum for check in checks]),
        np.concatenate([check.quadratic for check in checks]),
        terms.count,
    )
    explicit = relative_differences(terms, reference, lrs)
    explicit["explicit_first"] = reference.first.tolist()
    explicit["explicit_quadratic"] = reference.quadratic.tolist()
    logger.info("Explicit p and Q: largest relative difference %.3g (T1) and %.3g (T2)", explicit["T1"], explicit["T2"])
    return explicit


def _modeled_step(config, model, params, mask):
    """Return (scale a, offset b0, optimizer name, source, state lr) for the Adam state or plain descent.

    The eta grid is the learning rate of the step, so a and b0 must not depend on it. They are
    built at the largest learning rate among the selected parameters' groups, which keeps
    every other group's lr at its ratio to that one.
    """
    import torch

    from gradients.optimizer_state import load_optimizer_state

    if config.optimizer_state is None:
        return None, None, "SGD", "none (plain gradient descent)", None

    state = load_optimizer_state(config.optimizer_state, model)
    names = list(params)
    state.require(names)
    reference = max(state.settings[name].lr for name in names)
    try:
        state_lr = state.learning_rate(names)
    except InvalidInputError:
        state_lr = None
    split = None if mask is None else mask.split([int(p.numel()) for p in params.values()])
    scale, offset = state.step_vectors(params, split, reference if reference > 0 else 1.0)
    # The gradients are float64 for a float64 model and float32 otherwise; a and b0 follow them.
    first = next(iter(params.values()))
    vector_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    scale = scale.to(device=first.device, dtype=vector_dtype)
    offset = None if offset is None else offset.to(device=first.device, dtype=vector_dtype)
    optimizer = "AdamW" if state.decoupled_weight_decay else "Adam"
    logger.info("Modeling an %s step at t = %d. The state's learning rate is %s", optimizer, state.step + 1,
                "unknown" if state_lr is None else f"{state_lr:.3g}")
    return scale, offset, optimizer, state.source, state_lr


def run_order_ratio(config: OrderRatioConfig, model=None, tokenizer=None) -> OrderRatioResult:
    """Compute T1, T2 and |T2/T1| on the learning-rate grid for ``config.repeats`` random source draws.

    Loads the data and the model (unless ``model`` and ``tokenizer`` are passed), takes the
    target gradient, one summed source gradient per draw, and one batch of Hessian-vector
    products for all draws (see the module docstring). With ``config.explicit`` it also forms
    p and Q per draw and stores the largest relative difference in ``result.explicit``.
    """
    import torch

    from gradients.hessian import TargetCurvature
    from gradients.params import ParameterMask, flat_dim, select_parameters
    from gradients.tokenize import collate

    config.validate()
    seconds: dict[str, float] = {}
    lrs = np.array(sorted(float(eta) for eta in config.lrs))
    draw_sequence, mask_sequence, target_sequence = np.random.SeedSequence(config.seed).spawn(3)
    draw_seeds = draw_sequence.spawn(config.repeats)

    start = time.perf_counter()
    pool, targets, task, model, tokenizer = _load_inputs(config, model, tokenizer, target_sequence)
    params = select_parameters(model, config.params)
    seconds["load"] = time.perf_counter() - start

    num_source, repeats = config.num_source, config.repeats
    if num_source > len(pool):
        logger.warning("num_source=%d exceeds the %d usable pool samples, so all of them are used", num_source, len(pool))
        num_source = len(pool)
    if num_source == len(pool) and repeats > 1:
        logger.warning("Every draw contains the whole pool, so the %d repeats would be identical. Running one draw", repeats)
        repeats = 1
    mask = None
    if config.grad_mask is not None:
        mask = ParameterMask.for_params(params, count=min(config.grad_mask, flat_dim(params)),
                                        seed=int(mask_sequence.generate_state(1)[0]))
    dim = flat_dim(params) if mask is None else mask.size
    pad_id = tokenizer.pad_token_id
    logger.info("%d source samples x %d draws, %d targets (%s), %d parameters, %s curvature",
                num_source, repeats, len(targets), task or "mixed", dim, config.curvature)

    start = time.perf_counter()
    scale, offset, optimizer, optimizer_source, state_lr = _modeled_step(config, model, params, mask)
    batches = [collate(targets[i:i + config.batch_size], pad_id) for i in range(0, len(targets), config.batch_size)]
    curvature = TargetCurvature(model, batches, params, mask, config.curvature)
    target_gradient = curvature.gradient()
    logger.info("||g_T|| = %.4g", float(target_gradient.double().norm()))
    seconds["target_gradient"] = time.perf_counter() - start

    start = time.perf_counter()
    draws = _draw_sources(pool, num_source, repeats, draw_seeds)
    rows = []
    for index, draw in enumerate(draws):
        summed = summed_source_gradient(model, draw, params, mask, pad_id, config.batch_size,
                                        desc=f"source gradient, draw {index + 1}/{repeats}")
        rows.append(summed if scale is None else summed * scale.to(summed))
    directions = torch.stack(rows)
    del rows
    seconds["source_gradients"] = time.perf_counter() - start

    start = time.perf_counter()
    terms, offset_product = order_terms(curvature, directions, target_gradient, num_source, offset)
    seconds["hessian_vector_products"] = time.perf_counter() - start
    for index in range(repeats):
        logger.info("Draw %d: (D w)^T g_T = %.4g, (D w)^T H_T b0 = %.4g, w^T Q w = %.4g", index,
                    terms.first[index], terms.momentum[index], terms.quadratic[index])

    explicit = None
    if config.explicit:
        start = time.perf_counter()
        del directions
        explicit = _explicit_check(config, model, draws, params, mask, pad_id, curvature, target_gradient,
                                   scale, offset_product, terms, lrs)
        seconds["explicit_check"] = time.perf_counter() - start

    return OrderRatioResult(
        config=config, lrs=lrs, terms=terms, source_ids=[[s.sample_id for s in draw] for draw in draws],
        target_ids=[s.sample_id for s in targets], target_task=task, num_parameters=dim, pool_size=len(pool),
        optimizer=optimizer, optimizer_source=optimizer_source, state_learning_rate=state_lr,
        explicit=explicit, seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------- output


def format_order_ratio_table(result: OrderRatioResult) -> str:
    """Return the per-learning-rate table as aligned text: medians of T1 and T2, and |T2/T1| over the draws."""
    header = ["eta", "median T1", "median T2", "median |T2/T1|", "min |T2/T1|", "max |T2/T1|"]
    table = [header]
    for row in result.summary_rows():
        table.append([f"{row['learning_rate']:.3g}", f"{row['T1_median']:.4g}", f"{row['T2_median']:.4g}",
                      f"{row['ratio_median']:.3g}", f"{row['ratio_min']:.3g}", f"{row['ratio_max']:.3g}"])
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in table)


def describe_level(result: OrderRatioResult, level: float = RATIO_LEVEL) -> str:
    """Return one sentence with the learning rate at which |T2/T1| reaches ``level`` (median and range over draws)."""
    etas = [eta for eta in result.learning_rates_at_level(level) if eta is not None]
    if not etas:
        return f"|T2/T1| reaches {level:g} at no learning rate > 0 (T1 or w^T Q w is zero)."
    grid = np.asarray(result.config.lrs, dtype=float)
    outside = bool(grid.size) and (min(etas) < grid.min() or max(etas) > grid.max())
    note = " This eta is solved from T1 and T2 as functions of eta and lies outside the grid." if outside else ""
    if len(etas) == 1:
        return f"|T2/T1| reaches {level:g} at eta = {etas[0]:.3g}.{note}"
    return (f"|T2/T1| reaches {level:g} at eta = {float(np.median(etas)):.3g} (median over {len(etas)} draws, "
            f"range {min(etas):.3g} to {max(etas):.3g}).{note}")


def _report(result: OrderRatioResult) -> dict:
    from gradients.outputs import package_versions

    draws = []
    for index, ids in enumerate(result.source_ids):
        draws.append({
            "draw": index,
            "source_ids": ids,
            "first": float(result.terms.first[index]),
            "momentum": float(result.terms.momentum[index]),
            "quadratic": float(result.terms.quadratic[index]),
            "T1": [float(result.terms.t1(eta)[index]) for eta in result.lrs],
            "T2": [float(result.terms.t2(eta)[index]) for eta in result.lrs],
            "ratio": [float(result.terms.ratio(eta)[index]) for eta in result.lrs],
            "predicted_change": [float(-(eta / result.terms.count) * (result.terms.t1(eta)[index]
                                                                      - result.terms.t2(eta)[index]))
                                 for eta in result.lrs],
        })
    level = result.learning_rates_at_level(RATIO_LEVEL)
    return {
        "settings": result.config.to_dict(),
        "optimizer": result.optimizer,
        "optimizer_state": result.optimizer_source,
        "state_learning_rate": result.state_learning_rate,
        "num_parameters": result.num_parameters,
        "num_source": result.terms.count,
        "usable_pool_samples": result.pool_size,
        "target_task": result.target_task,
        "target_ids": result.target_ids,
        "learning_rates": [float(eta) for eta in result.lrs],
        "summary": result.summary_rows(),
        "learning_rate_at_ratio": {"level": RATIO_LEVEL, "per_draw": level, "text": describe_level(result)},
        "draws": draws,
        "explicit_check": result.explicit,
        "seconds": result.seconds,
        "versions": package_versions(),
        "definitions": {
            "T1": "p^T w = (D w)^T (g_T - eta H_T b0)",
            "T2": "(eta / 2c) w^T Q w = (eta / 2c) (D w)^T H_T (D w)",
            "predicted_change": "-(eta / c) (T1 - T2), nats, without the w-independent momentum term",
            "first, momentum, quadratic": "(D w)^T g_T, (D w)^T H_T b0, (D w)^T H_T (D w)",
        },
    }


def plot_order_ratio(result: OrderRatioResult, path) -> Path:
    """Write a log-log PNG of |T2/T1| against eta: the median over draws, the min-max band and the 10% level."""
    try:
        import matplotlib
    except ImportError as error:
        raise IdoptError("the plot needs matplotlib: pip install 'idopt[dev]' or pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.summary_rows()
    etas = np.array([row["learning_rate"] for row in rows])
    median = np.array([row["ratio_median"] for row in rows])
    low = np.array([row["ratio_min"] for row in rows])
    high = np.array([row["ratio_max"] for row in rows])

    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    axes.fill_between(etas, low, high, alpha=0.25, label=f"min to max over {len(result.source_ids)} draws")
    axes.plot(etas, median, "o-", label="median")
    axes.axhline(RATIO_LEVEL, color="gray", linestyle="--", linewidth=1, label=f"|T2/T1| = {RATIO_LEVEL:g}")
    if result.state_learning_rate is not None:
        axes.axvline(result.state_learning_rate, color="gray", linestyle=":", linewidth=1, label="optimizer state lr")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("learning rate eta")
    axes.set_ylabel("|T2 / T1|")
    target = result.target_task or "target files"
    axes.set_title(f"Second- vs first-order term: {result.terms.count} sources, target {target}, "
                   f"{result.optimizer}", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def write_order_ratio(result: OrderRatioResult, folder) -> dict[str, Path]:
    """Write order_ratio.json (settings, every draw, summary), order_ratio.csv (one row per eta) and order_ratio.png.

    The JSON and CSV are written before the plot, so they exist even when matplotlib is missing.
    """
    from idopt.json_report import json_safe

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "order_ratio.json", "csv": out / "order_ratio.csv", "png": out / "order_ratio.png"}
    paths["json"].write_text(json.dumps(json_safe(_report(result)), indent=2, allow_nan=False) + "\n")

    summary = result.summary_rows()
    draws = len(result.source_ids)
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = list(summary[0])
        for index in range(draws):
            header += [f"T1_draw{index}", f"T2_draw{index}", f"ratio_draw{index}"]
        writer.writerow(header)
        for row in summary:
            eta = row["learning_rate"]
            cells = [repr(value) for value in row.values()]
            t1, t2, ratio = result.terms.t1(eta), result.terms.t2(eta), result.terms.ratio(eta)
            for index in range(draws):
                cells += [repr(float(t1[index])), repr(float(t2[index])), repr(float(ratio[index]))]
            writer.writerow(cells)

    plot_order_ratio(result, paths["png"])
    logger.info("Wrote %s, %s and %s", paths["json"], paths["csv"], paths["png"])
    return paths
