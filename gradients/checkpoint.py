"""Stage checkpoints: keep expensive intermediate arrays so a failed or repeated run reuses them.

Each array is saved as ``<folder>/<name>.npy`` next to ``<name>.json``, which records a key: the
SHA-256 of everything the array depends on (model fingerprint, token ids, settings, seeds). A
later run loads the array only when its key is identical, so changing any input recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def model_fingerprint(model, values_per_tensor: int = 4096) -> str:
    """Return a SHA-256 over the model's name, parameter names and shapes, and leading values.

    It reads at most ``values_per_tensor`` values of each parameter, so it costs milliseconds
    and still changes when weights are fine-tuned or replaced.
    """
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        head = param.detach().reshape(-1)[:values_per_tensor].float().cpu().numpy()
        digest.update(head.tobytes())
    return digest.hexdigest()


def tokens_fingerprint(samples: Sequence) -> str:
    """Return a SHA-256 over the ids, token ids and labels of tokenized samples, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.sample_id.encode() + b"\0")
        digest.update(np.asarray(sample.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(sample.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def stage_key(**parts) -> str:
    """Return the SHA-256 of ``parts`` serialised as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class StageCache:
    """Save and reload stage arrays in ``folder``; a disabled cache computes every time."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def get_or_compute(self, name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the saved array ``name`` when its key equals ``key``; else compute and save it."""
        if self.folder is None:
            return compute()
        array_path = self.folder / f"{name}.npy"
        key_path = self.folder / f"{name}.json"
        if array_path.is_file() and key_path.is_file():
            try:
                saved_key = json.loads(key_path.read_text())["key"]
            except (ValueError, KeyError) as error:
                logger.warning("Ignoring unreadable checkpoint %s: %s", key_path, error)
                saved_key = None
            if saved_key == key:
                logger.info("Reusing %s from %s", name, array_path)
                return np.load(array_path, allow_pickle=False)
        array = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = array_path.with_suffix(".tmp.npy")
        np.save(temporary, array)
        os.replace(temporary, array_path)
        key_path.write_text(json.dumps({"key": key}))
        return array

