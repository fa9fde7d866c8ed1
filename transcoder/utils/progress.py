"""One progress-bar style for every long phase (evaluation renderings, anchors, DNSMOS, recognition, reports).

Every bar goes to stderr with a count, a rate and an ETA (tqdm's ``n/total [elapsed<remaining]``), so a
researcher watching a ten-minute evaluation sees which phase runs and how long it has left; ``disable=True``
(``--quiet``, library use) shows nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "window",
             disable: bool = False) -> Any:
    """A tqdm bar named ``desc`` counting ``unit`` up to ``total`` (default ``len(iterable)``).

    Args:
        iterable: what to iterate (``None``: a manual bar, advanced with ``.update(n)``).
        desc: the phase, e.g. ``"anchor opus 6 kbit/s"``.
        total: the count to reach (needed for an ETA when ``iterable`` has no length).
        unit: what is counted (``"window"``, ``"file"``, ``"batch"``, ``"example"``).
        disable: show nothing.

    Returns:
        The bar (iterate it, or call ``update`` / ``close``; it is also a context manager).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, leave=True)
