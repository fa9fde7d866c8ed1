"""Fast file listing for the datasets: an os.scandir walk, compact string storage, a JSON list cache.

Nothing here opens an audio file: listing 100k files costs the directory reads only.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["StringColumn", "scan_files", "load_list_cache", "save_list_cache"]

_CACHE_VERSION = 1


class StringColumn:
    """An immutable sequence of strings stored as one UTF-8 buffer plus offsets.

    A Python list of a million ``str`` objects is copied page by page into every forked
    DataLoader worker as soon as the workers touch the refcounts; two numpy arrays are not.
    """

    def __init__(self, values: Iterable[str]) -> None:
        encoded = [v.encode("utf-8") for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)),
                  out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self._data[start:stop].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


def scan_files(root: str, extensions: Sequence[str]) -> list[str]:
    """Paths relative to ``root`` (``/``-separated, sorted) of files whose lower-cased name ends in
    one of ``extensions``, found recursively. Hidden entries (``.*``, e.g. macOS ``._x.wav``
    resource forks) are ignored; directory symlinks are followed once (cycles are cut).
    """
    suffixes = tuple(e.lower() for e in extensions)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        st = os.stat(abs_dir)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(abs_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir():
                    stack.append((rel, entry.path))
                elif entry.name.lower().endswith(suffixes) and entry.is_file():
                    found.append(rel)
    found.sort()
    return found


def load_list_cache(path: str, signature: dict[str, Any]) -> dict[str, list[Any]] | None:
    """Columns stored by :func:`save_list_cache` if ``path`` exists and was written for ``signature``."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            payload = json.load(fh)
    except (OSError, ValueError) as err:
        warnings.warn(f"file list cache '{path}' is unreadable ({err}); rescanning", stacklevel=3)
        return None
    if payload.get("version") != _CACHE_VERSION or payload.get("signature") != signature:
        return None
    columns = payload.get("columns")
    return columns if isinstance(columns, dict) and "path" in columns else None


def save_list_cache(path: str, signature: dict[str, Any], columns: dict[str, list[Any]]) -> None:
    """Write the listing atomically (DDP ranks may write the same cache at once)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"version": _CACHE_VERSION, "signature": signature, "columns": columns}, fh)
    os.replace(tmp, path)
