"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(function: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Time ``repeats`` calls of ``function``, after one untimed call if ``warmup``.

    Returns the median wall time in seconds.
    """
    if warmup:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
