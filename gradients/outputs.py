"""Write a selection to disk: the selection table, a JSON summary, arrays and SFT-ready JSONL.

Files in the output folder:

- ``selection.csv``: rank, pool index, sample id, source, weight, score, picking target.
- ``selected.jsonl``: the selected samples in the chat ``messages`` format, in rank order, each
  with its ``weight``.
- ``summary.json``: every setting, the seed, seconds per stage, package versions, tokenization
  reports, the share of each source in the pool and in the selection, and under ``method`` the
  modeled step (order, optimizer, learning rate) and, for order 2, each target's T1, T2 and
  second-order share.
- Order 2: ``landmark_curvature.npy`` (L x L, Q_L) and ``weights_per_target.npy`` (n x m, each
  target's own solution).
- ``scores.npy`` (n x m), ``embeddings.npy`` (n x e), ``landmark_indices.npy`` (L,) and
  ``landmark_scores.npy`` (L x m), for analyses; load them with ``allow_pickle=False``.
- With a held-out set: ``holdout_indices.npy`` (h,), ``holdout_gradients.npy`` and
  ``holdout_approx.npy`` (h x d, exact and landmark-approximated projected gradients) and
  ``target_gradients_projected.npy`` (m x d), the inputs of ``idopt bounds --run``.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import platform
from collections import Counter
from pathlib import Path

import numpy as np

from idopt.json_report import json_safe

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("idopt", "numpy", "scipy", "torch", "transformers", "gguf", "datasets")


def package_versions() -> dict[str, str | None]:
    """Return the installed versions of the packages that shape the result (None if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def task_of(source: str) -> str:
    """Return the task of a source name: BIG-bench subtasks "task/subtask" belong to "task"."""
    return source.split("/", 1)[0]


def source_shares(pool: list, selected_indices, by_task: bool = False) -> list[dict]:
    """Return per source: pool count and share, selected count and share, and their ratio.

    ratio = (selected share) / (pool share); above 1 means the selection favours that source.
    With ``by_task`` the subtasks of a task are counted together. Rows are sorted by
    selected count, then name.
    """
    group = task_of if by_task else (lambda source: source)
    pool_counts = Counter(group(sample.source) for sample in pool)
    picked = Counter(group(pool[int(i)].source) for i in selected_indices)
    n, k = len(pool), max(len(selected_indices), 1)
    rows = []
    for source, count in pool_counts.items():
        pool_share = count / n
        selected_share = picked.get(source, 0) / k
        rows.append({
            "source": source,
            "pool": count,
            "pool_share": pool_share,
            "selected": picked.get(source, 0),
            "selected_share": selected_share,
            "ratio": selected_share / pool_share,
        })
    rows.sort(key=lambda row: (-row["selected"], row["source"]))
    return rows


def format_share_table(rows: list[dict], limit: int | None = None) -> str:
    """Format :func:`source_shares` rows as a fixed-width text table."""
    width = max([len("task")] + [len(row["source"]) for row in rows])
    lines = [f"{'task':<{width}}  {'pool':>5} {'share':>6}  {'picked':>6} {'share':>6}  {'ratio':>5}"]
    shown = rows if limit is None else rows[:limit]
    for row in shown:
        lines.append(
            f"{row['source']:<{width}}  {row['pool']:>5} {row['pool_share']:>6.1%}  "
            f"{row['selected']:>6} {row['selected_share']:>6.1%}  {row['ratio']:>5.2f}"
        )
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows; summary.json has them all")
    return "\n".join(lines)


def write_outputs(result, out_dir: str | Path, original_samples: dict | None = None) -> Path:
    """Write the files listed in the module docstring into ``out_dir`` and return its path.

    ``original_samples`` maps sample id to the loaded ``Sample`` (for ``selected.jsonl``); when
    it is None only the ids are known and ``selected.jsonl`` is skipped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selection = result.selection
    pool = result.pool

    with open(out / "selection.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "index", "sample_id", "source", "weight", "score", "target"])
        for rank, index in enumerate(selection.indices):
            picker = int(selection.picked_by[rank])
            # picked_by is -1 when the mean score over the targets chose the sample.
            target = result.target_names[picker] if picker >= 0 else "mean"
            writer.writerow([
                rank, int(index), pool[index].sample_id, pool[index].source,
                repr(float(selection.weights[rank])), repr(float(selection.scores[rank])), target,
            ])

    if original_samples is not None:
        with open(out / "selected.jsonl", "w", encoding="utf-8") as handle:
            for rank, index in enumerate(selection.indices):
                sample = original_samples[pool[index].sample_id]
                record = {
                    "id": sample.id,
                    "source": sample.source,
                    "messages": sample.messages,
                    "weight": float(selection.weights[rank]),
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    np.save(out / "scores.npy", result.scores)
    np.save(out / "embeddings.npy", result.embeddings)
    np.save(out / "landmark_indices.npy", result.landmark_indices)
    np.save(out / "landmark_scores.npy", result.landmark_scores)
    landmark_curvature = getattr(result, "landmark_curvature", None)
    if landmark_curvature is not None:
        np.save(out / "landmark_curvature.npy", landmark_curvature)
    if selection.weights_per_target is not None:
        np.save(out / "weights_per_target.npy", selection.weights_per_target)
    holdout = getattr(result, "holdout", None)
    if holdout is not None:
        np.save(out / "holdout_indices.npy", holdout.indices)
        np.save(out / "holdout_gradients.npy", holdout.exact)
        np.save(out / "holdout_approx.npy", holdout.approx)
        np.save(out / "target_gradients_projected.npy", holdout.targets)

    summary = {
        "settings": result.config.to_dict(),
        "seed": result.config.seed,
        "pool_size": len(pool),
        "num_target_samples": len(result.targets),
        "num_targets": len(result.target_names),
        "target_names": result.target_names,
        "num_landmarks": int(len(result.landmark_indices)),
        "k": int(len(selection.indices)),
        "seconds_per_stage": result.timings,
        "method": json_safe(getattr(result, "method_report", {})),
        "tokenization": result.reports,
        "source_shares": source_shares(pool, selection.indices),
        "task_shares": [
            {("task" if key == "source" else key): value for key, value in row.items()}
            for row in source_shares(pool, selection.indices, by_task=True)
        ],
        "versions": package_versions(),
    }
    with open(out / "summary.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    logger.info("Wrote selection of %d samples to %s", len(selection.indices), out)
    return out
