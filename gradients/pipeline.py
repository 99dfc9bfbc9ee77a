"""First-order Influence Distillation with landmarks, from a model and datasets to a selection.

Stages, for a pool S of n samples and targets T:

1. JVP embeddings e_i of every pool sample (``gradients.jvp``).
2. L landmark samples chosen uniformly at random. The landmarks and the target samples get
   unit-norm per-sample gradients over the chosen parameters, optionally masked, projected to
   d coordinates: G_L (L x d), G_T (m x d). Per target task, g_t is the mean of its samples' rows.
3. Landmark scores P_L = G_L G_T^T (L x m), carried to the pool by kernel ridge regression on the
   embeddings: P = K(E, E_L)(K_LL + delta I)^-1 P_L (n x m).
4. First-order weights w = max(p + nu, 0)/lam per target, lam set for exactly k non-zeros, and the
   targets' selections merged by round robin (or the mean of P).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from gradients.checkpoint import StageCache, model_fingerprint, stage_key, tokens_fingerprint
from gradients.config import SelectConfig
from gradients.modeled_step import model_step
from gradients.second_order import (
    check_memory, full_gradients, landmark_curvature, quadratic_terms, shifted_targets, step_gradients,
)
from idopt.errors import InvalidInputError
from idopt.kernel_ridge import KernelRidge, choose_landmarks

logger = logging.getLogger(__name__)


@dataclass
class SelectionResult:
    """Everything the pipeline computed; ``write_outputs`` turns it into files.

    pool, targets: the tokenized samples used (excluded ones are listed in the reports).
    target_names: one name per column of ``scores``. scores: (n, m) propagated scores P.
    landmark_indices: (L,) pool indices. landmark_scores: (L, m) exact P_L.
    embeddings: (n, e) JVP embeddings. selection: the ``idopt.selection.Selection``.
    timings: seconds per stage. reports: tokenization reports of pool and target.
    originals: sample id -> loaded ``Sample`` of the pool, for writing the selected samples.
    holdout: exact and approximated gradients of held-out pool samples (``config.holdout`` > 0).
    method_report: order, learning rate, optimizer state and, for order 2, the Q_L spectrum
    and each target's first- and second-order terms. landmark_curvature: (L, L) Q_L for order 2.
    """

    config: SelectConfig
    pool: list
    targets: list
    target_names: list[str]
    scores: np.ndarray
    landmark_indices: np.ndarray
    landmark_scores: np.ndarray
    embeddings: np.ndarray
    selection: object
    timings: dict[str, float] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    originals: dict = field(default_factory=dict)
    holdout: "HoldoutGradients | None" = None
    method_report: dict = field(default_factory=dict)
    landmark_curvature: np.ndarray | None = None


@dataclass
class HoldoutGradients:
    """Exact projected gradients of held-out pool samples and their landmark approximations.

    indices: (h,) pool indices, none of them a landmark. exact: (h, d) unit-norm projected
    gradients. approx: (h, d) kernel ridge approximations C G_L. targets: (m, d) target rows.
    """

    indices: np.ndarray
    exact: np.ndarray
    approx: np.ndarray
    targets: np.ndarray


def choose_holdout(n: int, landmark_indices: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Choose ``count`` pool indices outside the landmarks uniformly at random, sorted (fewer if short)."""
    candidates = np.setdiff1d(np.arange(n), landmark_indices)
    if count > len(candidates):
        logger.warning("holdout=%d exceeds the %d non-landmark samples; using all of them", count, len(candidates))
        count = len(candidates)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    logger.info("Stage %s started", name)
    yield
    timings[name] = time.perf_counter() - start
    logger.info("Stage %s finished in %.1f s", name, timings[name])


def load_samples_for(config: SelectConfig):
    """Return (pool samples, target samples) from the config's files or the built-in default."""
    from gradients.data import load_samples

    if config.target:
        target = [s for path in config.target for s in load_samples(path)]
    else:
        from gradients.assets import find_assets
        from gradients.default_data import default_target

        target = default_target(find_assets(config.cache), per_task=config.target_per_task, seed=config.seed)
    if config.pool:
        pool = [s for path in config.pool for s in load_samples(path)]
        overlap = {s.id for s in pool} & {s.id for s in target}
        if overlap:
            logger.warning("%d target sample ids also appear in the pool, e.g. %s", len(overlap), sorted(overlap)[:3])
    else:
        from gradients.assets import find_assets
        from gradients.default_data import default_pool

        pool = default_pool(find_assets(config.cache), size=config.pool_size, seed=config.seed, exclude=target)
    if not pool:
        raise InvalidInputError("the pool is empty; pass a pool file with at least one sample")
    if not target:
        raise InvalidInputError("the target set is empty; pass a target file with at least one sample")
    return pool, target


def _report_dict(report) -> dict:
    return {
        "kept": len(report.kept),
        "truncated": int(report.num_truncated),
        "excluded_no_label_tokens": list(report.excluded_ids),
    }


def project_gradients(
    model, samples: Sequence, params, mask, projector, pad_token_id: int, batch_size: int, desc: str,
    *, normalize: bool = True, scale: torch.Tensor | None = None,
) -> np.ndarray:
    """Return the projected per-sample gradients of ``samples`` as an (len, d) array.

    Row i is R (a * g_i) / ||a * g_i|| with R the projection, a the optimizer's elementwise
    scale (``scale``, 1 when None) and the division only when ``normalize``.
    """
    from gradients.tokenize import collate

    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        batch = collate(list(samples[start:start + batch_size]), pad_token_id)
        grads = step_gradients(model, batch, params, mask, normalize=normalize, scale=scale)
        rows.append(projector.project(grads).cpu().double().numpy())
        del grads
    return np.concatenate(rows, axis=0)


def target_matrix(target_grads: np.ndarray, targets: Sequence, grouping: str) -> tuple[np.ndarray, list[str]]:
    """Return (G_T as (m, d), names): one row per target sample, or the mean row per source task."""
    if grouping == "sample":
        return target_grads, [t.sample_id for t in targets]
    names = sorted({t.source for t in targets})
    rows = [target_grads[[i for i, t in enumerate(targets) if t.source == name]].mean(axis=0) for name in names]
    if isinstance(target_grads, torch.Tensor):
        return torch.stack(rows), names
    return np.stack(rows), names


def _projected_stage(config, model, params, mask, step, landmark_samples, targets, holdout_samples, pad_id,
                     checkpoints, settings):
    """First order: projected landmark rows R(a g_l), target rows R(g_t - eta H_T b0), held-out rows."""
    from gradients.projection import make_projector

    grad_dim = mask.size if mask is not None else sum(p.numel() for p in params.values())
    projector = make_projector(
        config.projection, grad_dim, config.proj_dim, settings["proj_seed"], device=next(model.parameters()).device
    )

    def rows_of(samples, desc, scale):
        return project_gradients(
            model, samples, params, mask, projector, pad_id, config.grad_batch_size, desc,
            normalize=step.normalize, scale=scale,
        )

    landmark_grads = checkpoints.get_or_compute(
        "landmark_gradients", stage_key(**settings, samples=tokens_fingerprint(landmark_samples)),
        lambda: rows_of(landmark_samples, "landmark gradients", step.scale),
    )
    target_grads = checkpoints.get_or_compute(
        "target_gradients", stage_key(**settings, samples=tokens_fingerprint(targets)),
        lambda: rows_of(targets, "target gradients", None),
    )
    target_rows, target_names = target_matrix(target_grads, targets, config.target_grouping)
    if step.offset is not None:
        # p = D^T (g_T - eta H_T b0); the projection is linear, so the shift is projected alone.
        def projected_shift() -> np.ndarray:
            curved = step.curvature.matmul(step.offset[None])  # (1, N): H_T b0
            return projector.project(curved.float()).cpu().double().numpy()[0]

        shift = checkpoints.get_or_compute(
            "momentum_shift", stage_key(**settings, targets=tokens_fingerprint(targets), curvature=config.curvature),
            projected_shift,
        )
        target_rows = target_rows - step.eta * shift[None]
    holdout_grads = None
    if holdout_samples:
        holdout_grads = checkpoints.get_or_compute(
            "holdout_gradients", stage_key(**settings, samples=tokens_fingerprint(holdout_samples)),
            lambda: rows_of(holdout_samples, "held-out gradients", step.scale),
        )
    return landmark_grads, target_rows, target_names, holdout_grads


def _full_space_stage(config, model, params, mask, step, landmark_samples, targets, pad_id, checkpoints, settings):
    """Second order: exact P_L = D_L U^T and Q_L = D_L H_T D_L^T in the selected parameter space."""
    names = target_matrix(np.zeros((len(targets), 1)), targets, config.target_grouping)[1]
    dim = mask.size if mask is not None else sum(p.numel() for p in params.values())
    device = next(model.parameters()).device

    def compute() -> np.ndarray:
        check_memory(len(landmark_samples), len(targets), dim, config.hvp_chunk, device)
        directions = full_gradients(
            model, landmark_samples, params, mask, pad_id, config.grad_batch_size, "landmark gradients",
            normalize=step.normalize, scale=step.scale,
        )
        target_grads = full_gradients(
            model, targets, params, mask, pad_id, config.grad_batch_size, "target gradients", normalize=step.normalize,
        )
        target_rows, _ = target_matrix(target_grads, targets, config.target_grouping)
        del target_grads
        shifted, _ = shifted_targets(target_rows, step.curvature, step.offset, step.eta)
        scores = (directions.double() @ shifted.double().T).numpy()
        curvature = landmark_curvature(step.curvature, directions, config.hvp_chunk)
        return np.concatenate([scores, curvature], axis=1)

    stacked = checkpoints.get_or_compute(
        "landmark_quadratic",
        stage_key(**settings, landmarks=tokens_fingerprint(landmark_samples), targets=tokens_fingerprint(targets)),
        compute,
    )
    return stacked[:, :len(names)], stacked[:, len(names):], names


def _solve_second_order(config, ridge, embeddings, scores, landmark_q, eta, target_names):
    """Solve with Q = C Q_L C^T kept factored (A = C^T, H = Q_L); return the selection and a report."""
    from idopt.problem import WeightingProblem
    from idopt.selection import select_quadratic

    coefficients = ridge.weights(embeddings)
    n = scores.shape[0]
    problem = WeightingProblem.create(scores, 1.0, eta=eta, c=n, A=coefficients.T, H=landmark_q, check_psd=False)
    eigenvalues = np.linalg.eigvalsh(landmark_q)
    logger.info("Q_L eigenvalues in [%.3g, %.3g]; eta/c = %.3g", eigenvalues[0], eigenvalues[-1], eta / n)
    selection = select_quadratic(problem, config.k, aggregate=config.aggregate)
    terms = quadratic_terms(problem, selection.weights_per_target)
    names = ["mean over targets"] if config.aggregate == "mean" else list(target_names)
    for name, row in zip(names, terms):
        row["target"] = name
        logger.info("Target %s: T1 = p^T w = %.4g, T2 = (eta/2c) w^T Q w = %.4g, second-order share %.3f",
                    name, row["T1"], row["T2"], row["second_order_share"])
    return selection, {
        "curvature": config.curvature,
        "landmark_curvature_eigenvalues": [float(eigenvalues[0]), float(eigenvalues[-1])],
        "objective_terms": terms,
    }


def run_selection(config: SelectConfig, model=None, tokenizer=None) -> SelectionResult:
    """Run first-order landmark Influence Distillation end to end; see the module docstring.

    ``model`` and ``tokenizer`` may be passed in to reuse a loaded model; otherwise they are
    loaded from ``config.model`` (or the default SmolLM2-135M-Instruct).
    """
    from gradients.jvp import JVPConfig, JVPEmbedder
    from gradients.model import load_model
    from gradients.params import ParameterMask, select_parameters
    from gradients.tokenize import tokenize_samples
    from idopt.selection import select

    config.validate()
    timings: dict[str, float] = {}
    seeds = np.random.SeedSequence(config.seed).spawn(5)
    landmark_seed, mask_seed, proj_seed, jvp_seed, holdout_seed = (int(s.generate_state(1)[0]) for s in seeds)

    with _stage(timings, "load"):
        # Data first: a malformed file fails before the model load.
        pool_samples, target_samples = load_samples_for(config)
        if model is None or tokenizer is None:
            model, tokenizer = load_model(
                config.model, gguf_file=config.gguf_file, dtype=config.dtype, device=config.device, cache=config.cache,
                tokenizer=config.tokenizer,
            )
        # Checked here so that a bad --params or optimizer state fails before the JVP stage.
        params = select_parameters(model, config.params)
        optimizer_state = None
        if config.optimizer_state is not None:
            from gradients.optimizer_state import load_optimizer_state

            optimizer_state = load_optimizer_state(config.optimizer_state, model)
            optimizer_state.require(list(params))

    with _stage(timings, "tokenize"):
        pool_report = tokenize_samples(pool_samples, tokenizer, config.max_length)
        target_report = tokenize_samples(target_samples, tokenizer, config.max_length)
        pool, targets = list(pool_report.kept), list(target_report.kept)
        for name, kept, total in (("pool", pool, pool_samples), ("target", targets, target_samples)):
            if not kept:
                raise InvalidInputError(
                    f"no {name} sample has an assistant token left after tokenization ({len(total)} loaded); "
                    f"increase max_length={config.max_length} (the chat template adds a system prompt of "
                    "about 20 tokens) or give the samples assistant answers"
                )
    if config.k > len(pool):
        raise InvalidInputError(f"k={config.k} exceeds the {len(pool)} usable pool samples; lower k")
    num_landmarks = min(config.num_landmarks, len(pool))
    if num_landmarks < config.num_landmarks:
        logger.warning(
            "num_landmarks=%d exceeds the %d usable pool samples; using every pool sample as a landmark",
            config.num_landmarks, len(pool),
        )
    pad_id = tokenizer.pad_token_id

    checkpoints = StageCache(Path(config.output) / "checkpoints" if config.resume else None)
    common = {"model": model_fingerprint(model), "torch": torch.__version__, "max_length": config.max_length}
    pool_tokens = tokens_fingerprint(pool)

    with _stage(timings, "jvp_embeddings"):
        jvp_config = JVPConfig(config.jvp_blocks, config.jvp_directions, config.jvp_dim, jvp_seed, config.jvp_batch_size)
        embeddings = checkpoints.get_or_compute(
            "embeddings",
            stage_key(**common, pool=pool_tokens, jvp=[config.jvp_blocks, config.jvp_directions, config.jvp_dim, jvp_seed]),
            lambda: JVPEmbedder(model, jvp_config).embed(pool, pad_id),
        )

    with _stage(timings, "gradients"):
        landmark_indices = choose_landmarks(len(pool), num_landmarks, landmark_seed)
        mask = None
        if config.grad_mask is not None:
            mask = ParameterMask.for_params(params, count=config.grad_mask, seed=mask_seed)
        landmark_samples = [pool[i] for i in landmark_indices]
        step = model_step(config, model, params, mask, targets, pad_id, landmark_samples, optimizer_state)
        gradient_settings = dict(
            **common, params=config.params, grad_mask=config.grad_mask, mask_seed=mask_seed,
            normalize=step.normalize, optimizer=step.fingerprint, eta=step.eta,
        )
        holdout_indices = choose_holdout(len(pool), landmark_indices, config.holdout, holdout_seed)
        holdout_grads = quadratic = None
        if config.order == 1:
            landmark_grads, target_rows, target_names, holdout_grads = _projected_stage(
                config, model, params, mask, step, landmark_samples, targets, [pool[i] for i in holdout_indices],
                pad_id, checkpoints, dict(gradient_settings, projection=config.projection, proj_dim=config.proj_dim,
                                          proj_seed=proj_seed),
            )
            landmark_scores = landmark_grads @ target_rows.T
        else:
            landmark_scores, quadratic, target_names = _full_space_stage(
                config, model, params, mask, step, landmark_samples, targets, pad_id, checkpoints,
                dict(gradient_settings, curvature=config.curvature),
            )

    with _stage(timings, "propagate"):
        ridge = KernelRidge.fit(
            embeddings[landmark_indices], landmark_scores, bandwidth=config.bandwidth, damping=config.damping
        )
        scores = ridge.predict(embeddings)
        holdout = None
        if holdout_grads is not None:
            # Landmark approximation g_hat = C G_L, with C from the embeddings alone.
            approx = ridge.weights(embeddings[holdout_indices]) @ landmark_grads
            holdout = HoldoutGradients(holdout_indices, holdout_grads, approx, target_rows)

    report = {"order": config.order, **step.report()}
    with _stage(timings, "solve"):
        if config.order == 1:
            selection = select(scores, config.k, aggregate=config.aggregate)
        else:
            selection, quadratic_report = _solve_second_order(
                config, ridge, embeddings, scores, quadratic, step.eta, target_names
            )
            report.update(quadratic_report)

    return SelectionResult(
        config=config,
        pool=pool,
        targets=targets,
        target_names=target_names,
        scores=scores,
        landmark_indices=landmark_indices,
        landmark_scores=landmark_scores,
        embeddings=embeddings,
        selection=selection,
        timings=timings,
        reports={"pool": _report_dict(pool_report), "target": _report_dict(target_report)},
        originals={sample.id: sample for sample in pool_samples},
        holdout=holdout,
        method_report=report,
        landmark_curvature=quadratic,
    )

