"""Read arrays that users pass as files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from idopt.errors import InvalidInputError


def load_npy(path: str | Path, name: str) -> np.ndarray:
    """Load one array from a .npy file without unpickling; raise InvalidInputError naming ``name``.

    numpy raises ValueError for object (pickled) arrays when allow_pickle=False, and the
    message then explains how to save a numeric array instead.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInputError(f"{name}: file not found: {path}") from None
    except ValueError as error:
        raise InvalidInputError(
            f"{name}: cannot read {path} as a numeric .npy array ({error}); save it with "
            "np.save(path, np.asarray(x, dtype=np.float64))"
        ) from None
    except OSError as error:
        raise InvalidInputError(f"{name}: cannot read {path}: {error}") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise InvalidInputError(f"{name}: {path} is an .npz archive; pass a .npy file with one array")
    return array
