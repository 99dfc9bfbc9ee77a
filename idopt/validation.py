"""Input checks shared by the solvers.

Every check raises :class:`idopt.errors.InvalidInputError` with a message that names
the argument, shows the value received and states what is allowed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from idopt.errors import InvalidInputError


def as_float_array(value, name: str, ndim: int | Sequence[int] | None = None) -> np.ndarray:
    """Convert ``value`` to a float64 numpy array, rejecting non-float dtypes.

    A float64 array is returned without a copy; float16/float32 arrays are copied
    to float64 so that all solver arithmetic runs in double precision.

    Parameters
    ----------
    value : array_like
        The input. Integer, boolean, object and complex dtypes are rejected because
        scores and weights are real numbers and a silent cast can hide a bug upstream.
    name : str
        Argument name used in error messages.
    ndim : int or sequence of int, optional
        Allowed numbers of dimensions.

    Returns
    -------
    numpy.ndarray
        The float64 array.

    Raises
    ------
    InvalidInputError
        If the dtype is not a real floating type or ``ndim`` does not match.
    """
    array = np.asarray(value)
    kind = array.dtype.kind
    if kind != "f":
        if kind == "c":
            reason = "complex values are not allowed"
        elif kind == "b":
            reason = "boolean values are not allowed"
        elif kind in "iu":
            reason = "integer values are rejected to avoid silent casts"
        else:
            reason = "the values are not real floating-point numbers"
        raise InvalidInputError(
            f"{name} must have a real floating dtype, got dtype {array.dtype} "
            f"({reason}); convert it with np.asarray({name}, dtype=np.float64)."
        )
    if array.dtype != np.float64:
        array = array.astype(np.float64)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            raise InvalidInputError(
                f"{name} must have {' or '.join(str(d) for d in allowed)} dimension(s), "
                f"got shape {array.shape}."
            )
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise if ``array`` contains NaN or infinity, reporting the count and first index.

    A finite sum proves that every entry is finite, so the common case costs one
    reduction and no temporary boolean array.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(array)):
            return
    bad = ~np.isfinite(array)
    count = int(np.count_nonzero(bad))
    if count == 0:
        # The sum overflowed although every entry is finite.
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    first_index = first[0] if len(first) == 1 else first
    raise InvalidInputError(
        f"{name} must be finite, got {count} NaN or infinite value(s); the first is "
        f"{array[first]!r} at index {first_index}. Remove or replace these entries."
    )


def check_finite_range(array: np.ndarray, name: str) -> tuple[float, float]:
    """Return (min, max) of a non-empty float array, raising as :func:`check_finite` does.

    NaN propagates through np.min and np.max, and an infinite entry is an infinite
    extreme, so two finite extremes prove every entry finite. Solvers that need the range
    of their input anyway get the finiteness check from the same two passes.
    """
    low = float(np.min(array))
    high = float(np.max(array))
    if not (np.isfinite(low) and np.isfinite(high)):
        # Some entry is NaN or infinite, so check_finite raises with its count and index.
        check_finite(array, name)
    return low, high


def check_nonempty(array: np.ndarray, name: str) -> None:
    """Raise if ``array`` has no samples (first dimension 0) or no columns."""
    if array.size == 0:
        raise InvalidInputError(
            f"{name} must contain at least one sample, got shape {array.shape}."
        )


def check_shape(array: np.ndarray, name: str, expected: tuple[int, ...]) -> None:
    """Raise if ``array.shape`` differs from ``expected``."""
    if array.shape != tuple(expected):
        raise InvalidInputError(
            f"{name} must have shape {tuple(expected)}, got shape {array.shape}."
        )


def check_scores(value, name: str, ndim: int | Sequence[int] = 1) -> np.ndarray:
    """Convert and check a score array: real float dtype, allowed ``ndim``, non-empty, finite."""
    array = as_float_array(value, name, ndim=ndim)
    check_nonempty(array, name)
    check_finite(array, name)
    return array


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_k(k, n: int, name: str = "k") -> int:
    """Return ``k`` as an int after checking 1 <= k <= n."""
    if not _is_integer(k):
        raise InvalidInputError(
            f"{name} must be an integer in [1, {n}], got {k!r} of type {type(k).__name__}."
        )
    k = int(k)
    if not 1 <= k <= n:
        raise InvalidInputError(
            f"{name} must be in [1, n] = [1, {n}] (n is the number of samples), got {k}."
        )
    return k


def check_lam(lam, name: str = "lam") -> float:
    """Return ``lam`` as a float after checking that it is finite and >= 0."""
    if not isinstance(lam, numbers.Real) or isinstance(lam, (bool, np.bool_)):
        raise InvalidInputError(
            f"{name} must be a real number >= 0, got {lam!r} of type {type(lam).__name__}."
        )
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise InvalidInputError(
            f"{name} must be finite and >= 0 (0 selects the linear program), got {lam}."
        )
    return lam


def check_budget(budget, n: int, name: str = "budget") -> float:
    """Return the budget b as a float: ``n`` when ``budget`` is None, else a finite b > 0."""
    if budget is None:
        return float(n)
    if not isinstance(budget, numbers.Real) or isinstance(budget, (bool, np.bool_)):
        raise InvalidInputError(
            f"{name} must be a real number > 0 or None (meaning n), got {budget!r} "
            f"of type {type(budget).__name__}."
        )
    budget = float(budget)
    if not np.isfinite(budget) or budget <= 0:
        raise InvalidInputError(
            f"{name} must be finite and > 0 (the total weight 1^T w), got {budget}; "
            f"pass None to use n = {n}."
        )
    return budget


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}."
        )
    return value
