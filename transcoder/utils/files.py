"""Writing files so that a failure (a full disk, a read-only folder) leaves nothing incomplete under a
final name and says in one line which file and how much space is left."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from typing import IO, Any

__all__ = ["free_space", "free_space_note", "replace_atomically", "sha256_of_file", "write_failure", "write_atomic"]


def free_space(folder: str | os.PathLike[str]) -> str:
    """``"<n> MiB free"`` (``"<n> bytes free"`` under 1 MiB) on ``folder``'s filesystem.

    Raises ``OSError`` if the free space cannot be read.
    """
    free = shutil.disk_usage(folder).free
    return f"{free / 2**20:.0f} MiB free" if free >= 2**20 else f"{free} bytes free"


def free_space_note(folder: str | os.PathLike[str]) -> str:
    """``"<n> MiB free in <folder>"`` (or why the free space is unknown)."""
    try:
        return f"{free_space(folder)} in {folder}"
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


def replace_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any],
                       temporary: str | os.PathLike[str]) -> None:
    """Call ``write(handle)`` on the file ``temporary`` (beside ``path``), fsync it, rename it to ``path``.

    On any error ``temporary`` is removed, ``path`` is untouched and the error propagates unchanged;
    :func:`write_atomic` turns it into a one-line message.
    """
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], what: str = "") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it and rename it to ``path``.

    On failure the temporary file is removed, ``path`` is untouched, and :func:`write_failure`'s
    ``OSError`` is raised.
    """
    path = os.fspath(path)
    try:
        replace_atomically(path, write, f"{path}.tmp{os.getpid()}")
    except OSError as err:
        raise write_failure(path, err, what) from err


def _remove_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def sha256_of_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
