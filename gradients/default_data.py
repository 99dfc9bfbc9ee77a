"""Default target and training pool built from BIG-bench tasks and HumanEval.

The default target is a few examples from three reasoning tasks. The default pool
mixes 30 BIG-bench JSON tasks of BIG-bench 1.0.0 (the three target tasks included,
minus the target examples) with HumanEval, so that selection has related and
unrelated samples to choose from.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tqdm.auto import tqdm

from gradients.data import Sample, load_bigbench_task, load_humaneval
from idopt.errors import AssetError, InvalidInputError

if TYPE_CHECKING:
    from gradients.assets import AssetPaths

logger = logging.getLogger(__name__)

TARGET_TASKS = ("date_understanding", "navigate", "object_counting")

# JSON tasks of BIG-bench 1.0.0 with mostly short examples, chosen to span date and
# spatial reasoning, counting, logic, arithmetic, language, commonsense, science
# and code. Together they take about 15 MB unpacked.
POOL_TASKS = TARGET_TASKS + (
    "logical_deduction",
    "tracking_shuffled_objects",
    "temporal_sequences",
    "reasoning_about_colored_objects",
    "penguins_in_a_table",
    "sports_understanding",
    "disambiguation_qa",
    "geometric_shapes",
    "ruin_names",
    "snarks",
    "movie_recommendation",
    "causal_judgment",
    "word_sorting",
    "arithmetic",
    "chinese_remainder_theorem",
    "cs_algorithms",
    "logical_fallacy_detection",
    "strategyqa",
    "social_iqa",
    "implicatures",
    "anachronisms",
    "physics",
    "tense",
    "operators",
    "general_knowledge",
    "code_line_description",
    "auto_debugging",
)

# Task folders that fetch_assets extracts by default.
BIGBENCH_TASKS = POOL_TASKS

HUMANEVAL_SOURCE = "humaneval"

# Examples whose input plus answer exceed this many characters are skipped, which
# keeps sequences short and the demo fast.
MAX_EXAMPLE_CHARS = 1500


def input_text(sample: Sample) -> str:
    """Return the non-assistant text of a sample: its user messages joined by newlines."""
    return "\n".join(message["content"] for message in sample.messages if message["role"] == "user")


def _is_short(sample: Sample) -> bool:
    return sum(len(message["content"]) for message in sample.messages) <= MAX_EXAMPLE_CHARS


def _task_rng(seed: int, task: str) -> np.random.Generator:
    """Return a generator that depends on the seed and the task name only."""
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])


def _load_task(assets: AssetPaths, task: str) -> list[Sample]:
    if task == HUMANEVAL_SOURCE:
        return load_humaneval(assets.humaneval)
    if not (assets.bigbench / task).is_dir():
        raise AssetError(
            f"BIG-bench task {task!r} is not in {assets.bigbench}; fetch it with "
            f"fetch_assets(bigbench_tasks=[..., {task!r}])"
        )
    return load_bigbench_task(assets.bigbench, task)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")


def default_target(
    assets: AssetPaths,
    per_task: int = 3,
    tasks: Sequence[str] = TARGET_TASKS,
    seed: int = 0,
) -> list[Sample]:
    """Sample the default target set: a few short examples from each target task.

    Parameters
    ----------
    assets : AssetPaths
        From :func:`gradients.assets.fetch_assets` or ``find_assets``.
    per_task : int
        Examples drawn from each task, without replacement.
    tasks : sequence of str
        BIG-bench task folder names.
    seed : int
        Seed of the sampling. Each task's draw depends only on the seed and the task
        name.

    Returns
    -------
    list of Sample
        ``len(tasks) * per_task`` samples, grouped by task in the order of ``tasks``.

    Raises
    ------
    InvalidInputError
        When ``per_task`` is not positive or exceeds the short examples of a task.
    AssetError
        When a task was not extracted.
    """
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise InvalidInputError(f"per_task must be a positive integer, got {per_task!r}")
    if isinstance(tasks, str) or not tasks:
        raise InvalidInputError(f"tasks must be a non-empty sequence of task names, got {tasks!r}")
    _check_seed(seed)

    target = []
    for task in tasks:
        candidates = [sample for sample in _load_task(assets, task) if _is_short(sample)]
        if per_task > len(candidates):
            raise InvalidInputError(
                f"per_task={per_task} exceeds the {len(candidates)} short examples of task {task!r}"
            )
        chosen = _task_rng(seed, task).choice(len(candidates), size=per_task, replace=False)
        target.extend(candidates[index] for index in sorted(chosen))
    logger.info("Default target: %d samples from %d tasks", len(target), len(tasks))
    return target


def _quotas(available: list[int], size: int) -> list[int]:
    """Split ``size`` over tasks as evenly as their ``available`` counts allow.

    Tasks with fewer than an equal share give all they have. The rest get the equal
    share, and the first tasks in list order get one more each until the sum is
    ``size``. When ``sum(available) <= size`` every task gives all it has.
    """
    quotas = [0] * len(available)
    active = list(range(len(available)))
    remaining = size
    while active:
        share = remaining // len(active)
        small = [task for task in active if available[task] <= share]
        if not small:
            break
        for task in small:
            quotas[task] = available[task]
            remaining -= available[task]
        active = [task for task in active if task not in small]
    if active:
        share, extra = divmod(remaining, len(active))
        for position, task in enumerate(active):
            quotas[task] = share + (1 if position < extra else 0)
    return quotas


def default_pool(
    assets: AssetPaths,
    size: int = 1200,
    seed: int = 0,
    exclude: Sequence[Sample] | None = None,
    per_task_cap: int = 60,
    tasks: Sequence[str] = POOL_TASKS,
    include_humaneval: bool = True,
    progress: bool = True,
) -> list[Sample]:
    """Sample the default training pool from many BIG-bench tasks and HumanEval.

    Each task (HumanEval counts as one, source ``"humaneval"``) contributes short
    examples whose input text differs from every excluded sample's, at most
    ``per_task_cap`` of them. The quota of each task is as even as the tasks allow
    (see ``_quotas``), and the examples are drawn without replacement with a
    generator seeded by ``(seed, task name)``. Duplicate input texts across the
    pool are kept once.

    Parameters
    ----------
    assets : AssetPaths
        From :func:`gradients.assets.fetch_assets` or ``find_assets``.
    size : int
        Number of samples requested. Fewer come back, with a warning, when the tasks
        cannot supply that many under ``per_task_cap``.
    seed : int
        Seed of the sampling.
    exclude : sequence of Sample, optional
        Samples whose input text (see :func:`input_text`) must not appear in the
        pool. None means ``default_target(assets, seed=seed)``; pass ``[]`` to
        exclude nothing.
    per_task_cap : int
        Maximum number of samples taken from one task.
    tasks : sequence of str
        BIG-bench task folder names; default :data:`POOL_TASKS`.
    include_humaneval : bool
        Add HumanEval as one more task.
    progress : bool
        Show a tqdm progress bar while loading tasks.

    Returns
    -------
    list of Sample
        Grouped by task in the order of ``tasks``, HumanEval last.
    """
    for name, value in (("size", size), ("per_task_cap", per_task_cap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(tasks, str):
        raise InvalidInputError(f"tasks must be a sequence of task names, got the string {tasks!r}")
    _check_seed(seed)
    if exclude is None:
        exclude = default_target(assets, seed=seed)
    excluded_inputs = {input_text(sample) for sample in exclude}

    sources = list(tasks) + ([HUMANEVAL_SOURCE] if include_humaneval else [])
    if not sources:
        raise InvalidInputError("tasks is empty and include_humaneval is False: the pool has no source")

    seen_inputs = set(excluded_inputs)
    candidates: list[list[Sample]] = []
    for task in tqdm(sources, desc="Loading pool tasks", disable=not progress):
        kept = []
        for sample in _load_task(assets, task):
            text = input_text(sample)
            if _is_short(sample) and text not in seen_inputs:
                seen_inputs.add(text)
                kept.append(sample)
        order = _task_rng(seed, task).permutation(len(kept))
        candidates.append([kept[index] for index in order])

    available = [min(len(kept), per_task_cap) for kept in candidates]
    quotas = _quotas(available, size)
    pool = []
    for task, kept, quota in zip(sources, candidates, quotas):
        pool.extend(kept[:quota])
        logger.info("Pool: %d of %d eligible samples from %s", quota, len(kept), task)

    if len(pool) < size:
        logger.warning(
            "Pool has %d samples, fewer than the requested size %d: raise per_task_cap or add tasks",
            len(pool),
            size,
        )
    logger.info("Default pool: %d samples from %d sources", len(pool), len(sources))
    return pool
