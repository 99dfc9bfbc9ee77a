"""Settings of the selection pipeline, with their defaults and units."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from idopt.errors import InvalidInputError
from idopt.kernel_ridge import DEFAULT_DAMPING

# Learning rate of the modeled plain gradient-descent step when neither --lr nor an
# optimizer state gives one. It matters only for the second-order term.
DEFAULT_SGD_LR = 1e-4


@dataclass
class SelectConfig:
    """Every setting of ``idopt select``; the defaults run on the built-in real assets.

    Model: ``model`` (None = SmolLM2-135M-Instruct), ``gguf_file`` inside it, and ``tokenizer``, a
    folder of tokenizer files when the model folder has none (None = the model folder).
    Data: ``pool`` and ``target`` are files or saved datasets (None = the built-in BIG-bench and
    HumanEval default); ``pool_size`` caps the built-in pool; ``max_length`` is in tokens.
    Selection: ``k`` samples are chosen; ``aggregate`` is "round_robin" (targets take turns) or
    "mean" (mean score over targets); ``target_grouping`` is "source" (one target per task: the
    mean of its samples' unit gradients) or "sample" (one target per sample).
    JVP embeddings: ``jvp_blocks`` blocks, ``jvp_directions`` directions, ``jvp_dim`` output size.
    Gradients: ``params`` is "all", a name fragment or "re:<regex>"; ``grad_mask`` keeps that many
    random elements before projection (None = all); ``proj_dim`` is the projected dimension;
    ``projection`` is "hadamard" or "rademacher".
    Landmarks: ``num_landmarks`` pool samples; kernel ridge damping relative to the mean kernel
    diagonal; bandwidth None = median heuristic. ``holdout`` other pool samples also get exact
    projected gradients, written with their landmark approximations for ``idopt bounds``.
    Optimizer and order: ``optimizer_state`` is a folder from ``idopt warmup``, a Trainer
    checkpoint folder or a ``torch.optim`` Adam/AdamW state dict file (None = plain gradient
    descent). ``lr`` is the learning rate eta of the modeled step (None = the state's lr, or
    ``DEFAULT_SGD_LR`` without a state). ``order`` 2 adds the curvature term with Q = C Q_L C^T
    from Hessian-vector products (``curvature`` "hessian" or "gauss_newton") over target
    batches of ``hvp_batch_size`` samples, ``hvp_chunk`` vectors at a time. ``normalize``
    scales every gradient to unit norm (None = only for first order without a state, where
    only the ranking matters). ``second_moment`` sets Adam's next v: "uniform" adds the landmarks'
    mean gradient as the step would at w = 1, "frozen" keeps v / (1 - beta2^s).
    Checkpoints: with ``resume`` the JVP embeddings and projected gradients are saved in
    ``<output>/checkpoints`` and reused by a later run whose inputs are identical.
    """

    model: str | None = None
    gguf_file: str | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    device: str | None = None
    pool: list[str] | None = None
    target: list[str] | None = None
    pool_size: int = 1000
    target_per_task: int = 3
    max_length: int = 512
    k: int = 100
    aggregate: str = "round_robin"
    target_grouping: str = "source"
    jvp_blocks: int = 4
    jvp_directions: int = 2
    jvp_dim: int = 4096
    jvp_batch_size: int = 16
    num_landmarks: int = 64
    holdout: int = 0
    params: str = "all"
    grad_mask: int | None = None
    proj_dim: int = 8192
    projection: str = "hadamard"
    grad_batch_size: int = 4
    damping: float = DEFAULT_DAMPING
    bandwidth: float | None = None
    order: int = 1
    optimizer_state: str | None = None
    lr: float | None = None
    curvature: str = "hessian"
    normalize: bool | None = None
    second_moment: str = "uniform"
    hvp_batch_size: int = 4
    hvp_chunk: int = 8
    seed: int = 0
    output: str = "runs/select"
    resume: bool = True
    cache: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> "SelectConfig":
        """Check value ranges; raise InvalidInputError naming the first bad setting."""
        positive = {
            "pool_size": self.pool_size, "target_per_task": self.target_per_task,
            "max_length": self.max_length, "k": self.k, "jvp_blocks": self.jvp_blocks,
            "jvp_directions": self.jvp_directions, "jvp_dim": self.jvp_dim,
            "jvp_batch_size": self.jvp_batch_size, "num_landmarks": self.num_landmarks,
            "proj_dim": self.proj_dim, "grad_batch_size": self.grad_batch_size,
            "hvp_batch_size": self.hvp_batch_size, "hvp_chunk": self.hvp_chunk,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.holdout, int) or self.holdout < 0:
            raise InvalidInputError(f"holdout={self.holdout!r} must be an integer >= 0")
        if self.grad_mask is not None and self.grad_mask < 1:
            raise InvalidInputError(f"grad_mask={self.grad_mask!r} must be a positive integer or None")
        choices = {
            "aggregate": ("round_robin", "mean"),
            "target_grouping": ("source", "sample"),
            "projection": ("hadamard", "rademacher"),
            "dtype": ("float32", "bfloat16", "float16"),
            "curvature": ("hessian", "gauss_newton"),
            "second_moment": ("uniform", "frozen"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidInputError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.order not in (1, 2):
            raise InvalidInputError(f"order={self.order!r} must be 1 (first order) or 2 (with the curvature term)")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise InvalidInputError(
                f"lr={self.lr!r} is invalid: pass a finite learning rate > 0, or leave it unset to use the optimizer "
                "state's learning rate (or the plain gradient-descent default)"
            )
        if self.order == 2 and self.holdout:
            raise InvalidInputError(
                f"holdout={self.holdout} works with order=1 only (it checks projected first-order gradients); "
                "drop --holdout or use --order 1"
            )
        if self.optimizer_state is not None and not Path(self.optimizer_state).exists():
            raise InvalidInputError(
                f"optimizer_state {self.optimizer_state!r} does not exist; pass an `idopt warmup` optimizer folder, "
                "a Trainer checkpoint folder or a torch.optim state dict file"
            )
        if not self.damping > 0:
            raise InvalidInputError(f"damping={self.damping!r} must be > 0")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise InvalidInputError(f"bandwidth={self.bandwidth!r} must be > 0 or None for the median heuristic")
        for name in ("pool", "target"):
            for path in getattr(self, name) or []:
                if not Path(path).exists():
                    raise InvalidInputError(f"{name} file {path!r} does not exist")
        return self

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        return dataclasses.asdict(self)
