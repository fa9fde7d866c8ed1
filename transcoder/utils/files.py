"""Writing files so that a failure (a full disk, a read-only folder) leaves nothing incomplete under a
final name and says in one line which file and how much space is left."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import IO

__all__ = ["free_space_note", "write_failure", "write_atomic"]


def free_space_note(folder: str | os.PathLike[str]) -> str:
    """``"<n> MiB free in <folder>"`` (or why the free space is unknown)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {folder}"
    except OSError as err:
        return f"free space in {folder} unknown ({err.strerror or err})"


def write_failure(path: str | os.PathLike[str], err: BaseException, what: str = "") -> OSError:
    """An ``OSError`` (same errno) whose one-line message names ``path``, the cause and the free space."""
    text = str(err).strip()
    cause = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
    label = f"{what} {path}" if what else str(path)
    folder = os.path.dirname(os.path.abspath(path))
    failure = OSError(f"could not write {label} ({cause}); {free_space_note(folder)}")
    failure.errno = getattr(err, "errno", None)
    return failure


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], what: str = "") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it and rename it to ``path``.

    On failure the temporary file is removed, ``path`` is untouched, and :func:`write_failure`'s
    ``OSError`` is raised.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_failure(path, err, what) from err
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
