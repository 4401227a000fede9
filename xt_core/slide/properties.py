"""Parsing header values that readers hand back as strings (or not at all)."""

from __future__ import annotations

import math


def parse_float(value: object) -> float | None:
    """A positive finite float, or None for missing, empty, zero or garbage values."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def parse_mpp(mpp_x: object, mpp_y: object) -> tuple[float, float] | None:
    """Microns per pixel (x, y); one missing axis takes the other's value (square pixels)."""
    x, y = parse_float(mpp_x), parse_float(mpp_y)
    if x is None and y is None:
        return None
    return (x if x is not None else y, y if y is not None else x)  # type: ignore[return-value]
