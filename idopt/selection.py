"""Selection of k training samples from one or several targets' scores.

Scores p have shape (n,) for one target or (n, m) with one column per target. Each
target's own weighting is the exact-k solution of :func:`idopt.first_order.solve_exact_k`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from idopt.errors import InvalidInputError, TieWarning
from idopt.first_order import _top_k_order, solve_exact_k
from idopt.validation import check_budget, check_choice, check_k, check_scores

logger = logging.getLogger(__name__)

AGGREGATES = ("round_robin", "mean")


@dataclass(frozen=True)
class Selection:
    """k selected samples with their weights.

    Attributes
    ----------
    indices : numpy.ndarray, shape (k,), int64
        Selected sample indices in selection order.
    weights : numpy.ndarray, shape (k,), float64
        Weight of each selected sample, aligned with ``indices``. For "mean" they are the
        exact-k solution on the mean scores and sum to b. For "round_robin" each weight
        comes from the picking target's own exact-k solution, so their sum is in general
        not b.
    scores : numpy.ndarray, shape (k,), float64
        The score each sample was picked by: the mean score ("mean") or the picking
        target's score ("round_robin").
    picked_by : numpy.ndarray, shape (k,), int64
        Index of the target that picked each sample; -1 for "mean".
    lam : numpy.ndarray, shape (m,) or (1,), float64
        lam of each target's exact-k solution ("round_robin"), or the single lam of the
        mean-score solution ("mean").
    ties_at_boundary : numpy.ndarray, shape (m,) or (1,), int64
        ``Solution.ties_at_boundary`` of the same solutions.
    aggregate : str
        "round_robin" or "mean".
    weights_per_target : numpy.ndarray, shape (n, m), or None
        Every target's full weight vector, from :func:`select_quadratic` ("mean": one column).
    """

    indices: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    picked_by: np.ndarray
    lam: np.ndarray
    ties_at_boundary: np.ndarray
    aggregate: str
    weights_per_target: np.ndarray | None = None

    @property
    def k(self) -> int:
        """Number of selected samples."""
        return int(self.indices.shape[0])


def top_k_indices(scores, k: int) -> np.ndarray:
    """Return the indices of the k largest scores, highest first, lower index first on ties.

    Runs in O(n + k log k) time with a partition instead of a full sort.

    Parameters
    ----------
    scores : array_like, shape (n,)
        Finite float scores.
    k : int
        Number of indices, 1 <= k <= n.

    Returns
    -------
    numpy.ndarray, shape (k,), int64
    """
    scores = check_scores(scores, "scores", ndim=1)
    k = check_k(k, scores.shape[0])
    return _top_k_order(scores, k).astype(np.int64, copy=False)


def select(p, k: int, aggregate: str = "round_robin", budget=None) -> Selection:
    """Select k samples and weight them by the exact-k first-order solution.

    "mean": solve_exact_k on the row mean  p_bar_i = (1/m) sum_j p_ij ; the selection
    order is descending p_bar (lower index first on ties).

    "round_robin": targets take turns 0, 1, ..., m-1, 0, ...; on its turn a target picks
    its highest-scored sample not picked yet (lower index first on ties), until k samples
    are picked. Target j's picks therefore number ceil or floor of k/m. A pick's weight
    is its weight in target j's own solve_exact_k(p[:, j], k, budget) solution, which is
    positive because every pick lies in target j's top k (see the comment in the loop).

    Parameters
    ----------
    p : array_like, shape (n,) or (n, m)
        Scores, one column per target, finite floats.
    k : int
        Number of samples to select, 1 <= k <= n.
    aggregate : {"round_robin", "mean"}
        How the targets are combined; the same for m = 1.
    budget : float, optional
        Budget b > 0 of each exact-k solution; n when None.

    Returns
    -------
    Selection

    Warns
    -----
    TieWarning
        When a target (or the mean) has tied scores at its k-th place; see solve_exact_k.
    """
    p = check_scores(p, "p", ndim=(1, 2))
    if p.ndim == 1:
        p = p[:, None]
    n, m = p.shape
    k = check_k(k, n)
    b = check_budget(budget, n)
    check_choice(aggregate, "aggregate", AGGREGATES)

    if aggregate == "mean":
        mean_scores = p.mean(axis=1)
        solution = solve_exact_k(mean_scores, k, b)
        indices = solution.extras["top_k"].astype(np.int64, copy=False)
        return Selection(
            indices=indices,
            weights=solution.w[indices],
            scores=mean_scores[indices],
            picked_by=np.full(k, -1, dtype=np.int64),
            lam=np.array([solution.lam]),
            ties_at_boundary=np.array([solution.ties_at_boundary], dtype=np.int64),
            aggregate=aggregate,
        )

    weights_per_target = np.empty((n, m))
    orders = []
    lams = np.empty(m)
    ties = np.zeros(m, dtype=np.int64)
    # The bar shows only when the m exact-k solves touch at least 10^7 scores in total,
    # which takes about a second or more.
    targets = tqdm(range(m), desc="exact-k per target", disable=n * m < 10**7, leave=False)
    for target in targets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TieWarning)
            solution = solve_exact_k(p[:, target], k, b)
        for warning in caught:
            warnings.warn(f"target {target}: {warning.message}", TieWarning, stacklevel=2)
        weights_per_target[:, target] = solution.w
        # solve_exact_k's top k uses the same order (descending, lower index on ties).
        orders.append(solution.extras["top_k"])
        lams[target] = solution.lam
        ties[target] = solution.ties_at_boundary

    indices, picked_by = _round_robin(orders, n, k)

    weights = weights_per_target[indices, picked_by]
    scores = p[indices, picked_by]
    logger.debug("round_robin selection: n=%s m=%s k=%s", n, m, k)
    return Selection(
        indices=indices,
        weights=weights,
        scores=scores,
        picked_by=picked_by,
        lam=lams,
        ties_at_boundary=ties,
        aggregate=aggregate,
    )


def select_quadratic(problem, k: int, aggregate: str = "round_robin", *, method: str = "auto", **options) -> Selection:
    """Select k samples by the exact-k solutions of a problem with a quadratic term.

    Each target j's weights solve
        minimize -p_j^T w + (eta/2c) w^T Q w + (lam_j/2)||w||^2   s.t.  w >= 0, 1^T w = b
    with lam_j found by :func:`idopt.lam_search.lam_for_support` so that w has k non-zeros.
    "mean" solves once with the row mean of p. "round_robin" lets the targets take turns as in
    :func:`select`. Each target ranks the samples by its own weights, then by its p on equal
    weights, then by lower index.

    Parameters
    ----------
    problem : WeightingProblem
        p of shape (n,) or (n, m); dense or factored Q. Its lam is ignored.
    k : int
        Number of samples to select, 1 <= k <= n.
    aggregate : {"round_robin", "mean"}
    method : str
        Solver method of each trial, see :func:`idopt.solve.solve`.
    **options
        Passed to :func:`idopt.lam_search.lam_for_support`.

    Returns
    -------
    Selection
        ``ties_at_boundary`` holds |support size - k| per solve (0 when exact). When no lam gives
        exactly k non-zeros (an indefinite Q can keep the support above k for every valid lam),
        the picks are the k largest weights, then the best zero-weight samples by p.

    Warns
    -----
    SupportSizeWarning
        From lam_for_support when a target reaches no exact k.
    """
    from idopt.lam_search import lam_for_support
    from idopt.problem import WeightingProblem

    if not isinstance(problem, WeightingProblem):
        raise InvalidInputError(f"problem must be a WeightingProblem, got {type(problem).__name__}")
    check_choice(aggregate, "aggregate", AGGREGATES)
    n = problem.n
    k = check_k(k, n)
    p = problem.p if problem.p.ndim == 2 else problem.p[:, None]
    if aggregate == "mean":
        columns = [WeightingProblem(p.mean(axis=1), problem.lam, problem.eta, problem.c, problem.budget,
                                    problem.Q, problem.A, problem.H)]
        column_scores = [p.mean(axis=1)]
    else:
        columns = [problem.column(j) if problem.p.ndim == 2 else problem for j in range(p.shape[1])]
        column_scores = [p[:, j] for j in range(p.shape[1])]

    weights, orders, lams, gaps = [], [], [], []
    for column, scores in zip(tqdm(columns, desc="lam search per target", leave=False), column_scores):
        result = lam_for_support(column, k, method=method, **options)
        w = result.solution.w
        weights.append(w)
        # Rank by weight, then by score, then by index (np.lexsort sorts by the last key first).
        orders.append(np.lexsort((np.arange(n), -scores, -w)))
        lams.append(result.lam)
        gaps.append(abs(result.support_size - k))

    if aggregate == "mean":
        indices = orders[0][:k].astype(np.int64)
        picked_by = np.full(k, -1, dtype=np.int64)
        chosen_weights = weights[0][indices]
        chosen_scores = column_scores[0][indices]
    else:
        indices, picked_by = _round_robin(orders, n, k)
        chosen_weights = np.array([weights[t][i] for i, t in zip(indices, picked_by)])
        chosen_scores = np.array([column_scores[t][i] for i, t in zip(indices, picked_by)])
    return Selection(
        indices=indices,
        weights=chosen_weights,
        scores=chosen_scores,
        picked_by=picked_by,
        lam=np.array(lams),
        ties_at_boundary=np.array(gaps, dtype=np.int64),
        aggregate=aggregate,
        weights_per_target=np.stack(weights, axis=1),
    )


def _round_robin(orders: list[np.ndarray], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-target rankings: targets take turns picking their best sample not picked yet.

    orders[j] ranks target j's samples, best first, and contains at least k of them. Returns
    (indices (k,), picked_by (k,)) in pick order.
    """
    m = len(orders)
    picked = np.zeros(n, dtype=bool)
    cursors = [0] * m
    indices = np.empty(k, dtype=np.int64)
    picked_by = np.empty(k, dtype=np.int64)
    for count in range(k):
        target = count % m
        order = orders[target]
        cursor = cursors[target]
        # Why the cursor never runs past target's top k: every sample ranked above the
        # pick by this target is already picked, and fewer than k picks (count <= k - 1)
        # were made so far, so the pick's rank is at most count + 1 <= k. The same bound
        # is true after r full rounds, where r * m <= k picks were made.
        while picked[order[cursor]]:
            cursor += 1
        index = order[cursor]
        cursors[target] = cursor + 1
        picked[index] = True
        indices[count] = index
        picked_by[count] = target

    return indices, picked_by
