"""How numbers read in logs and tables: counts as integers with thousands separators, other values with
four significant digits (never ``1.15e+04`` for a count)."""

from __future__ import annotations

import math

__all__ = ["format_value"]


def format_value(value: float | int) -> str:
    """``11523`` → ``11,523``; ``11523.0`` (a count logged as a float) → ``11,523``; ``0.0123456`` →
    ``0.01235``; ``675.94`` → ``675.9``; NaN/inf as Python writes them."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return f"{int(value):,}"
    if math.isfinite(value) and abs(value) >= 1e4:
        return f"{value:,.1f}"
    return f"{value:.4g}"
