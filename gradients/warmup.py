"""Short AdamW warm-up on a random subset of the pool, saved for Adam-aware selection.

Real fine-tuning runs Adam, whose step depends on its moments m and v. Adam-aware selection
reads them from a saved optimizer state (``gradients.optimizer_state``), and ``run_warmup``
makes one. It draws ``num_samples`` pool samples at random, takes ``steps`` AdamW steps on
them and writes, in the output folder,

* ``model/``: the trained weights (safetensors) and the tokenizer, loadable with
  ``idopt select --model <output>/model``;
* ``optimizer/``: the AdamW state by parameter name (``optimizer_state.json`` and
  ``optimizer_state.safetensors``), loadable with ``load_optimizer_state``;
* ``warmup.json``: every setting, the loss and learning rate of every step, the ids of the
  samples trained on and the seconds taken.

The training loss of a batch B is the mean of the per-sample losses,

    L_B(theta) = (1 / |B|) sum over i in B of loss_i(theta),

with loss_i the mean label-token cross-entropy of sample i in nats
(``gradients.per_sample.sample_loss``), the same loss whose gradients the selection takes.

The model stays in eval mode during the warm-up: dropout is off, so a step depends only on
the data order (seeded) and float rounding. For SmolLM2 nothing changes, because its config
sets ``attention_dropout`` to 0.

This module imports torch only inside its functions, so that ``idopt --help`` works without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idopt.errors import AssetError, InvalidInputError

if TYPE_CHECKING:
    import torch

    from gradients.data import Sample
    from gradients.optimizer_state import OptimizerState
    from gradients.tokenize import TokenizedSample

logger = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("float32", "bfloat16", "float16")
MODEL_DIR = "model"
OPTIMIZER_DIR = "optimizer"
SUMMARY_FILE = "warmup.json"
_RUNNING_WINDOW = 10


@dataclass
class WarmupConfig:
    """Every setting of ``idopt warmup``, with its unit.

    Model: ``model`` is a local safetensors folder or a ``.gguf`` file (None = the default
    SmolLM2-135M-Instruct), ``gguf_file`` a GGUF name inside ``model``, ``dtype`` one of
    float32 / bfloat16 / float16, ``device`` a torch device (None = CUDA when available).
    Data: ``pool`` files (None = the built-in pool of ``pool_size`` samples, the same one
    ``idopt select`` builds from the same ``seed``, ``pool_size`` and ``target_per_task``).
    ``target`` files, or else the built-in default target, are kept out of the warm-up.
    ``num_samples`` pool samples are drawn at random and trained on; ``max_length`` is in tokens.
    Optimizer: ``steps`` AdamW steps of ``batch_size`` samples. ``lr`` is the peak learning
    rate. ``schedule`` is "constant", "linear" or "cosine"; ``warmup_steps`` of linear ramp-up
    come first (see :func:`schedule_factor`). ``weight_decay`` is the AdamW coefficient of all
    parameters except biases and norm weights, as in the transformers Trainer.
    ``betas`` and ``eps`` are Adam's. ``grad_clip`` is the largest Euclidean norm of the gradient
    over all trained parameters (None = no clipping). ``params`` chooses the trained parameters:
    "all", a name fragment or "re:<regex>" (``gradients.params.select_parameters``); the others
    stay frozen and get no optimizer state.
    Output: ``output`` folder; ``overwrite`` replaces an earlier warm-up there. ``cache`` is
    the asset cache folder (None = $IDOPT_CACHE, else ~/.cache/idopt).
    """

    model: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str | None = None
    pool: list[str] | None = None
    target: list[str] | None = None
    pool_size: int = 1000
    target_per_task: int = 3
    num_samples: int = 256
    max_length: int = 512
    steps: int = 50
    batch_size: int = 8
    lr: float = 2e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None
    params: str = "all"
    seed: int = 0
    output: str = "runs/warmup"
    overwrite: bool = False
    cache: str | None = None

    def validate(self) -> WarmupConfig:
        """Check every setting and raise InvalidInputError naming the first invalid one and the fix."""
        positive = {
            "pool_size": self.pool_size, "target_per_task": self.target_per_task,
            "num_samples": self.num_samples, "max_length": self.max_length,
            "steps": self.steps, "batch_size": self.batch_size,
        }
        for name, value in positive.items():
            if not _is_int(value) or value < 1:
                raise InvalidInputError(f"{name}={value!r} must be an integer >= 1; set {_flag(name)} to 1 or more")

        if not _is_int(self.seed) or self.seed < 0:
            raise InvalidInputError(f"seed={self.seed!r} must be an integer >= 0; set --seed to 0 or more")
        if not _is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.steps:
            raise InvalidInputError(
                f"warmup_steps={self.warmup_steps!r} must be an integer from 0 to steps={self.steps}; "
                "set --warmup-steps within that range"
            )

        if not _is_real(self.lr) or not self.lr > 0:
            raise InvalidInputError(f"lr={self.lr!r} must be a finite number > 0; set --lr to a positive learning rate such as 2e-5")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise InvalidInputError(f"weight_decay={self.weight_decay!r} must be a finite number >= 0; set --weight-decay to 0 or more")
        if len(tuple(self.betas)) != 2 or not all(_is_real(b) and 0 <= b < 1 for b in self.betas):
            raise InvalidInputError(f"betas={self.betas!r} must be two numbers in [0, 1), such as (0.9, 0.999)")
        if not _is_real(self.eps) or not self.eps > 0:
            raise InvalidInputError(f"eps={self.eps!r} must be a finite number > 0, such as 1e-8")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or not self.grad_clip > 0):
            raise InvalidInputError(
                f"grad_clip={self.grad_clip!r} must be a finite number > 0 (a gradient norm) or None; "
                "set --grad-clip to a positive value such as 1.0, or leave it out"
            )

        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule={self.schedule!r} is not one of {SCHEDULES}; set --schedule to one of them")
        if self.dtype not in DTYPES:
            raise InvalidInputError(f"dtype={self.dtype!r} is not one of {DTYPES}; set --dtype to one of them")
        if not isinstance(self.params, str) or not self.params:
            raise InvalidInputError(
                f"params={self.params!r} must be 'all', a parameter name fragment or 're:<regex>'; set --params"
            )
        if not isinstance(self.output, (str, Path)) or not str(self.output):
            raise InvalidInputError(f"output={self.output!r} must be a folder path; set -o/--output")

        for name in ("pool", "target"):
            paths = getattr(self, name)
            if paths is not None and (isinstance(paths, (str, Path)) or len(paths) == 0):
                raise InvalidInputError(f"{name}={paths!r} must be a non-empty list of files, or None for the built-in default")
            for path in paths or []:
                if not Path(path).exists():
                    raise InvalidInputError(f"{name} file {str(path)!r} does not exist; pass an existing file with --{name}")
        return self

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        settings = dataclasses.asdict(self)
        settings["betas"] = list(self.betas)
        settings["output"] = str(self.output)
        for name in ("pool", "target"):
            if settings[name] is not None:
                settings[name] = [str(path) for path in settings[name]]
        return settings


@dataclass
class WarmupResult:
    """Outcome of :func:`run_warmup`: the training record, the saved paths and the trained objects.

    Attributes
    ----------
    config : WarmupConfig
    losses : list of float
        Training loss L_B of every step, in nats, before that step's update.
    learning_rates : list of float
        Learning rate each step used (schedule applied).
    grad_norms : list of float
        Euclidean norm of the gradient over all trained parameters at every step, before clipping.
    sample_ids : list of str
        Ids of the pool samples trained on, in the order they were drawn.
    seconds : float
        Wall time of the whole call, loading and saving included.
    output, model_dir, optimizer_dir : Path
        The output folder, its ``model`` and its ``optimizer`` subfolders.
    state : OptimizerState
        The saved AdamW state, by parameter name.
    model, tokenizer, optimizer
        The trained model, its tokenizer and the live ``torch.optim.AdamW``.
    """

    config: WarmupConfig
    losses: list[float]
    learning_rates: list[float]
    grad_norms: list[float]
    sample_ids: list[str]
    seconds: float
    output: Path
    model_dir: Path
    optimizer_dir: Path
    state: OptimizerState
    model: Any = None
    tokenizer: Any = None
    optimizer: Any = None
    trained_parameters: list[str] = field(default_factory=list)

    @property
    def next_lr(self) -> float:
        """Learning rate the schedule gives the step after the last one (0 when it decayed to zero)."""
        return schedule_factor(self.config.steps, self.config.steps, self.config.warmup_steps,
                               self.config.schedule) * self.config.lr


def schedule_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Return the learning-rate multiplier f(s) of 0-based step s; the step uses lr * f(s).

    With T = ``steps`` and W = ``warmup_steps``, as in transformers'
    ``get_constant_schedule_with_warmup``, ``get_linear_schedule_with_warmup`` and
    ``get_cosine_schedule_with_warmup`` (half a cosine period):

    * ramp-up, s < W: f(s) = s / W (so step 0 has learning rate 0 when W > 0);
    * "constant": f(s) = 1;
    * "linear": f(s) = max(0, (T - s) / max(1, T - W));
    * "cosine": f(s) = max(0, (1 + cos(pi * p)) / 2) with p = (s - W) / max(1, T - W).

    Linear and cosine reach 0 at s = T, the step after the last one, so the optimizer state
    saved after T steps carries lr = 0 and the configured lr as ``initial_lr``.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def load_warmup_pool(config: WarmupConfig) -> list[Sample]:
    """Return the pool samples the warm-up may train on, with every target sample left out.

    The pool is ``config.pool`` (files) or the built-in default pool, built as ``idopt select``
    builds it. The target is ``config.target`` (files), else the built-in default target that
    ``idopt select`` uses without ``--target`` (skipped with a log line when the assets are not
    fetched, since that select run could not happen either). A pool sample is dropped when its
    user text (or, without user turns, its whole conversation) equals a target sample's.
    """
    from gradients.assets import find_assets
    from gradients.data import load_samples
    from gradients.default_data import default_pool, default_target

    target: list = []
    if config.target:
        target = [sample for path in config.target for sample in load_samples(path)]
    else:
        try:
            target = default_target(find_assets(config.cache), per_task=config.target_per_task, seed=config.seed)
        except AssetError as error:
            if not config.pool:
                raise
            logger.info("The built-in target is not available (%s); no target samples to leave out", error)
    if config.pool:
        pool = [sample for path in config.pool for sample in load_samples(path)]
    else:
        pool = default_pool(find_assets(config.cache), size=config.pool_size, seed=config.seed, exclude=target)
    forbidden = {_content_key(sample) for sample in target}
    allowed = [sample for sample in pool if _content_key(sample) not in forbidden]
    if len(allowed) < len(pool):
        logger.warning("Left %d target samples out of the warm-up pool", len(pool) - len(allowed))
    if not allowed:
        raise InvalidInputError("the warm-up pool is empty (after leaving out target samples); pass a pool file with --pool")
    return allowed


def choose_subset(
    pool: Sequence[Sample], tokenizer, count: int, max_length: int, seed: int
) -> list[TokenizedSample]:
    """Draw ``count`` pool samples uniformly at random without replacement and tokenize them.

    Samples are taken in a seeded random order. A sample with no assistant token within
    ``max_length`` tokens is skipped, and the next one in that order takes its place. When the
    pool runs out, fewer samples come back, with a warning.
    """
    from gradients.tokenize import tokenize_samples

    if count > len(pool):
        logger.warning("num_samples=%d exceeds the %d pool samples; training on the whole pool", count, len(pool))
        count = len(pool)
    order = np.random.default_rng(seed).permutation(len(pool))
    tokenized: list = []
    position = 0
    while len(tokenized) < count and position < len(order):
        chunk = [pool[int(i)] for i in order[position:position + count - len(tokenized)]]
        position += len(chunk)
        tokenized.extend(tokenize_samples(chunk, tokenizer, max_length, progress=False).kept)
    if not tokenized:
        raise InvalidInputError(
            f"no pool sample has an assistant token within max_length={max_length} tokens; raise --max-length"
        )
    if len(tokenized) < count:
        logger.warning("Only %d pool samples have assistant tokens within max_length=%d; training on those",
                       len(tokenized), max_length)
    return tokenized


def trainer_parameter_groups(model: torch.nn.Module, trained: Sequence[str], weight_decay: float) -> list[dict]:
    """Split the trained parameters into the transformers Trainer's two AdamW groups.

    Group 0 has weight decay ``weight_decay``: every trained parameter except biases, norm
    weights and ``torch.nn.LayerNorm`` parameters. Group 1 contains those, with weight decay 0.
    Each group lists ``(name, parameter)`` pairs in ``model.named_parameters()`` order (torch
    2.6 and later record the names in the optimizer's state dict), or bare parameters on
    older torch. Empty groups are dropped.
    """
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    from gradients.optimizer_state import _TRAINER_NO_DECAY_PATTERNS

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], _TRAINER_NO_DECAY_PATTERNS))
    chosen = set(trained)
    named = [(name, param) for name, param in model.named_parameters() if name in chosen]
    groups = [
        {"params": [(n, p) for n, p in named if n in decay], "weight_decay": float(weight_decay)},
        {"params": [(n, p) for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    if not _optimizer_takes_names():
        for group in groups:
            group["params"] = [param for _, param in group["params"]]
    return [group for group in groups if group["params"]]


def run_warmup(config: WarmupConfig, model=None, tokenizer=None, progress: bool = True) -> WarmupResult:
    """Train the model for ``config.steps`` AdamW steps on a random pool subset and save it.

    The subset (``num_samples`` samples, :func:`choose_subset`) is cycled through in shuffled
    epochs; each step takes the next ``batch_size`` samples of the epoch (the last batch of an
    epoch may be smaller), computes L_B (module docstring), clips the gradient norm when
    ``grad_clip`` is set, steps ``torch.optim.AdamW`` and then the ``LambdaLR`` schedule
    (:func:`schedule_factor`), which records ``initial_lr`` = ``lr`` in every group. The
    parameters outside ``config.params`` are frozen for the call and restored afterwards.

    ``model`` and ``tokenizer`` may be passed to reuse a loaded pair (the model is trained in
    place); otherwise they are loaded from ``config.model``. Files written: see the module
    docstring. Returns a :class:`WarmupResult`.

    Raises
    ------
    InvalidInputError
        For a bad setting, an output folder that contains a warm-up while ``overwrite`` is off, or
        a loss that stops being finite (lower ``lr``).
    """
    import torch
    from tqdm.auto import tqdm

    from gradients.model import load_model
    from gradients.optimizer_state import OptimizerState
    from gradients.params import flat_dim, select_parameters
    from gradients.per_sample import sample_loss
    from gradients.tokenize import collate

    start = time.perf_counter()
    config.validate()
    output = Path(config.output)
    check_output(output, config.overwrite)
    subset_seed, order_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(config.seed).spawn(2))

    # Data first, so that a malformed file fails before the model load.
    pool = load_warmup_pool(config)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(
            config.model, gguf_file=config.gguf_file, dtype=config.dtype, device=config.device, cache=config.cache
        )
    trained = select_parameters(model, config.params)
    subset = choose_subset(pool, tokenizer, config.num_samples, config.max_length, subset_seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    trained_ids = {id(param) for param in trained.values()}
    for param in model.parameters():
        param.requires_grad_(id(param) in trained_ids)
    model.eval()
    try:
        optimizer = torch.optim.AdamW(
            trainer_parameter_groups(model, list(trained), config.weight_decay),
            lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(schedule_factor, steps=config.steps, warmup_steps=config.warmup_steps,
                               schedule=config.schedule)
        )
        logger.info(
            "Warm-up started: %d AdamW steps of %d samples on %d pool samples, %d parameter tensors (%d elements), "
            "lr %.3g with a %s schedule (%d ramp-up steps), weight decay %.3g",
            config.steps, config.batch_size, len(subset), len(trained), flat_dim(trained), config.lr,
            config.schedule, config.warmup_steps, config.weight_decay,
        )
        losses, rates, norms = [], [], []
        batches = _batches(len(subset), config.batch_size, order_seed)
        with tqdm(range(config.steps), desc="Warm-up", unit="step", disable=not progress) as bar:
            for step in bar:
                batch = collate([subset[i] for i in next(batches)], pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss = sample_loss(model, batch).mean()
                value = float(loss.detach())
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(
                    list(trained.values()), config.grad_clip if config.grad_clip is not None else float("inf")
                ))
                if not (math.isfinite(value) and math.isfinite(norm)):
                    raise InvalidInputError(
                        f"the warm-up loss ({value}) or its gradient norm ({norm}) is not finite at step {step}; "
                        f"lower lr={config.lr:g} (--lr), set --grad-clip, or use dtype float32"
                    )
                rates.append(float(optimizer.param_groups[0]["lr"]))
                optimizer.step()
                scheduler.step()
                losses.append(value)
                norms.append(norm)
                logger.debug("step %d: loss %.4f, lr %.3g, gradient norm %.3g", step, value, rates[-1], norm)
                window = losses[-_RUNNING_WINDOW:]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{rates[-1]:.2g}")
        optimizer.zero_grad(set_to_none=True)
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])

    sample_ids = [sample.sample_id for sample in subset]
    state = OptimizerState.from_optimizer(optimizer, model)
    state.extra = {
        "written_by": "idopt warmup",
        "steps": config.steps, "lr": config.lr, "schedule": config.schedule, "warmup_steps": config.warmup_steps,
        "batch_size": config.batch_size, "weight_decay": config.weight_decay, "grad_clip": config.grad_clip,
        "params": config.params, "max_length": config.max_length, "seed": config.seed,
        "num_samples": len(subset), "sample_ids": sample_ids,
        "first_loss": losses[0], "final_loss": losses[-1],
    }
    model_dir, optimizer_dir = output / MODEL_DIR, output / OPTIMIZER_DIR
    _remove(check_output(output, config.overwrite))
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    state.save(optimizer_dir)
    seconds = time.perf_counter() - start
    result = WarmupResult(
        config=config, losses=losses, learning_rates=rates, grad_norms=norms, sample_ids=sample_ids,
        seconds=seconds, output=output, model_dir=model_dir, optimizer_dir=optimizer_dir, state=state,
        model=model, tokenizer=tokenizer, optimizer=optimizer, trained_parameters=list(trained),
    )
    write_summary(result)
    logger.info(
        "Warm-up finished in %.1f s: loss %.4f at the first step, %.4f at the last; model in %s, optimizer state in %s",
        seconds, losses[0], losses[-1], model_dir, optimizer_dir,
    )
    return result


def check_output(output: Path, overwrite: bool) -> list[Path]:
    """Return what an earlier warm-up left in ``output``; raise when there is some and ``overwrite`` is off.

    A warm-up writes ``model/``, ``optimizer/`` and ``warmup.json``; :func:`run_warmup` removes
    those (and nothing else in the folder) just before it saves, so a failed run keeps them.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"output {str(output)!r} is a file; pass a folder with -o/--output")
    earlier = [output / name for name in (MODEL_DIR, OPTIMIZER_DIR, SUMMARY_FILE) if (output / name).exists()]
    if earlier and not overwrite:
        raise InvalidInputError(
            f"output folder {str(output)!r} already contains a warm-up ({', '.join(p.name for p in earlier)}); "
            "pass --overwrite (overwrite=True) to replace it, or choose another folder with -o/--output"
        )
    return earlier


def _remove(paths: list[Path]) -> None:
    for path in paths:
        logger.warning("Replacing %s from an earlier warm-up", path)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_summary(result: WarmupResult) -> Path:
    """Write ``warmup.json`` into the output folder and return its path."""
    from gradients.outputs import package_versions
    from idopt.json_report import json_safe

    summary = {
        "settings": result.config.to_dict(),
        "steps": len(result.losses),
        "losses": result.losses,
        "learning_rates": result.learning_rates,
        "grad_norms": result.grad_norms,
        "next_lr": result.next_lr,
        "initial_lr": result.config.lr,
        "seconds": result.seconds,
        "num_samples": len(result.sample_ids),
        "sample_ids": result.sample_ids,
        "trained_parameters": result.trained_parameters,
        "model_dir": MODEL_DIR,
        "optimizer_dir": OPTIMIZER_DIR,
        "versions": package_versions(),
    }
    path = result.output / SUMMARY_FILE
    path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return path


def _batches(size: int, batch_size: int, seed: int):
    """Yield index lists of ``batch_size`` (the last of an epoch may be shorter), reshuffled every epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(size)
        for begin in range(0, size, batch_size):
            yield [int(i) for i in order[begin:begin + batch_size]]


def _content_key(sample) -> str:
    from gradients.default_data import input_text

    text = input_text(sample)
    return text if text else json.dumps(sample.messages, sort_keys=True)


def _optimizer_takes_names() -> bool:
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


_FLAGS = {"pool_size": "--pool-size", "target_per_task": "--target-per-task", "num_samples": "--num-samples",
          "max_length": "--max-length", "steps": "--steps", "batch_size": "--batch-size"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))
