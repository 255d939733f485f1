"""Value checks shared by the config dataclasses (``credit.*``): a bool is never a number here."""

from __future__ import annotations

import math

__all__ = ["is_number", "is_int"]


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)
