"""Helpers for writing reports as JSON."""

from __future__ import annotations

import math


def json_safe(value):
    """Replace non-finite floats (not valid JSON) with None, recursively through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
