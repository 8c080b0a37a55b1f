"""Aspect ratios to pixel sizes, the arithmetic every provider without ratio presets needs.

Providers take a ratio as ``aspect_ratio``, as a size string or as width and height;
the last two need a size near some pixel area, on a pixel grid, within limits. Each
adapter states its provider's numbers; the arithmetic is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def aspect(ratio: str, default: float = 1.0) -> float:
    """``"16:9"`` -> 1.777…; anything unreadable, zero or infinite -> ``default``."""
    w_part, sep, h_part = ratio.partition(":")
    try:
        value = float(w_part) / float(h_part) if sep else default
    except (ValueError, ZeroDivisionError):
        return default
    return value if math.isfinite(value) and value > 0 else default


def exact_pixels(value: str) -> tuple[int, int] | None:
    """``"1440x816"`` -> (1440, 816): a size the catalogue gave in pixels; None for a ratio."""
    width, sep, height = value.lower().partition("x")
    try:
        return (int(width), int(height)) if sep else None
    except ValueError:
        return None


def size_near_area(
    ratio: str, area: int, step: int = 16, min_side: int = 1, max_side: int = 1_000_000
) -> tuple[int, int]:
    """Width and height of about ``area`` pixels in the ratio's shape, sides on a ``step`` grid."""
    shape = aspect(ratio)

    def snap(value: float) -> int:
        return int(min(max_side, max(min_side, round(value / step) * step)))

    width = snap(math.sqrt(area * shape))
    return width, snap(width / shape)


def size_within_area(ratio: str, area: int, step: int = 16) -> tuple[int, int]:
    """The largest size on a ``step`` grid in the ratio's shape whose area is at most ``area``:
    for providers that bill each started megapixel, where a size a little over one megapixel
    is billed as two."""
    shape = aspect(ratio)
    wide = max(shape, 1 / shape)  # the long side first, so 9:21 is 21:9 turned
    long_side = max(step, math.floor(math.sqrt(area * wide) / step) * step)
    short_side = max(step, math.floor(long_side / wide / step) * step)
    while long_side * short_side > area and long_side > step:  # the short side clamped up
        long_side -= step
    return (long_side, short_side) if shape >= 1 else (short_side, long_side)


def nearest_shape(ratio: str, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The size from ``sizes`` whose shape is closest to the ratio's."""
    shape = aspect(ratio)
    return min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - math.log(shape)))
