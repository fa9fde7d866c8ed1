"""Fast file listing for the datasets: an os.scandir walk, compact string storage, a JSON list cache.

Nothing here opens an audio file: listing 100k files costs the directory reads only (plus one
``stat`` per directory, and one per symlinked file).

The list cache stores, beside the listing, the ``st_mtime_ns`` of every directory the scan walked
("stamps"). A directory's mtime changes whenever an entry is added to, removed from or renamed in
it, so a cache is only reused while none of its directories changed or disappeared; checking it
costs one ``stat`` per directory, never one per file. Editing a file in place does not change its
directory's mtime, which is fine for a listing of names (a scan that also caches file contents,
e.g. transcripts, stamps those files too).
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from transcoder.utils.files import write_atomic

__all__ = ["StringColumn", "printable_path", "scan_files", "stamp", "load_list_cache", "save_list_cache"]

_CACHE_VERSION = 2  # 2: directory mtime stamps

# File systems set mtimes from a coarse clock (a few ms on Linux, up to 2 s on FAT): an entry added
# within that long of the scan may leave its directory's mtime unchanged. Stamps this recent when the
# cache is written are stored as unknown (-1), so the next load rescans once instead of trusting them.
_RACY_NS = 2_000_000_000


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


def stamp(stamps: dict[str, int] | None, path: str) -> os.stat_result:
    """``os.stat(path)`` (following symlinks), recording its ``st_mtime_ns`` in ``stamps`` when given."""
    st = os.stat(path)
    if stamps is not None:
        stamps[os.path.abspath(path)] = st.st_mtime_ns
    return st


def printable_path(path: str) -> str:
    """``path`` with the bytes of a name that is not valid UTF-8 written as ``\\xNN`` (printable, JSON-safe)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gave undecodable bytes as surrogates
        return False
    return True


def scan_files(root: str, extensions: Sequence[str], stamps: dict[str, int] | None = None,
               problems: dict[str, str] | None = None) -> list[str]:
    """Paths relative to ``root`` (``/``-separated, sorted) of files whose lower-cased name ends in
    one of ``extensions``, found recursively.

    Hidden entries (``.*``, e.g. macOS ``._x.wav`` resource forks) are ignored. Symlinks are
    followed (symlinked corpora work), but every file and directory is listed once:

    * a directory reached twice (a symlink to a folder already walked, or a cycle) is walked once,
      under its real path when it is inside ``root`` (real directories are walked before symlinked
      ones, each in sorted order, so the choice does not depend on the file system's entry order);
    * a symlinked FILE whose target is already listed under ``root`` (the real file, or an earlier
      symlink in sorted order to the same target) is dropped. Hard links are distinct entries and kept.

    Entries that cannot be listed are left out, never fatal: a symlink loop or another entry that cannot
    be ``stat``-ed, a dangling symlink with an audio extension, a file or folder whose name is not valid
    UTF-8, a sub-folder that cannot be read. Each goes to ``problems`` as ``{path: reason}`` (the path
    through :func:`printable_path`).

    Args:
        root: folder to search.
        extensions: name endings such as ``[".wav", ".flac"]``, matched case-insensitively.
        stamps: when given, receives ``{absolute directory path: st_mtime_ns}`` of every directory
            walked (for :func:`save_list_cache`).
        problems: when given, receives the entries left out and why.
    """

    def left_out(path: str, reason: str) -> None:
        if problems is not None:
            problems.setdefault(printable_path(path), reason)

    suffixes = tuple(e.lower() for e in extensions)
    files: list[str] = []
    file_dirs: list[int] = []  # index into walked_dirs of each entry of files
    walked_dirs: list[str] = []
    linked_files: list[tuple[str, str]] = []  # (rel, abs) of symlinked files, resolved at the end
    seen_dirs: set[tuple[int, int]] = set()
    stack = [("", root)]  # real directories, then (when it is empty) the symlinked ones
    linked_dirs: list[tuple[str, str]] = []
    while stack or linked_dirs:
        if not stack:
            linked_dirs.sort(reverse=True)
            stack, linked_dirs = linked_dirs, []
        rel_dir, abs_dir = stack.pop()
        try:
            st = stamp(stamps, abs_dir)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            entries = list(os.scandir(abs_dir))
        except OSError as err:
            if not rel_dir:  # the root itself: the caller's error
                raise
            left_out(abs_dir, f"cannot read the folder ({err.strerror or err})")
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        walked_dirs.append(abs_dir)
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            audio_name = name.lower().endswith(suffixes)
            try:
                is_dir = entry.is_dir()
                is_file = audio_name and not is_dir and entry.is_file()
            except OSError as err:  # e.g. ELOOP: a symlink to itself
                loop = " (a symlink loop)" if err.errno == errno.ELOOP else ""
                left_out(entry.path, f"cannot stat it{loop}: {err.strerror or err}")
                continue
            if not _is_utf8(name):
                if is_dir or audio_name:
                    left_out(entry.path, f"the {'folder' if is_dir else 'file'} name is not valid UTF-8; rename it")
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_dir:
                (linked_dirs if entry.is_symlink() else subdirs).append((rel, entry.path))
            elif is_file:
                if entry.is_symlink():
                    linked_files.append((rel, entry.path))
                else:
                    files.append(rel)
                    file_dirs.append(len(walked_dirs) - 1)
            elif audio_name and entry.is_symlink():
                left_out(entry.path, f"a dangling symlink (to {os.readlink(entry.path)!r})")
        stack.extend(sorted(subdirs, reverse=True))
    if linked_files:
        # Compare resolved paths (not inodes: readdir's d_ino need not match st_ino on overlayfs).
        real_dirs = [os.path.realpath(d) for d in walked_dirs]
        listed = {os.path.join(real_dirs[d], rel.rpartition("/")[2]) for rel, d in zip(files, file_dirs, strict=True)}
        for rel, abs_path in sorted(linked_files):
            target = os.path.realpath(abs_path)
            if target not in listed and os.path.isfile(target):
                listed.add(target)
                files.append(rel)
    files.sort()
    return files


def load_list_cache(path: str, signature: dict[str, Any]) -> dict[str, list[Any]] | None:
    """Columns stored by :func:`save_list_cache` if ``path`` exists, was written for ``signature``
    and none of its stamped directories changed (mtime) or disappeared since; else None (rescan)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            payload = json.load(fh)
    except (OSError, ValueError) as err:
        warnings.warn(f"file list cache '{path}' is unreadable ({err}); rescanning", stacklevel=3)
        return None
    if (not isinstance(payload, dict) or payload.get("version") != _CACHE_VERSION
            or payload.get("signature") != signature):
        return None
    stamps = payload.get("stamps")
    if not isinstance(stamps, dict):
        return None
    for stamped, mtime_ns in stamps.items():
        try:
            if os.stat(stamped).st_mtime_ns != mtime_ns:
                return None
        except OSError:
            return None
    columns = payload.get("columns")
    return columns if isinstance(columns, dict) and "path" in columns else None


def save_list_cache(path: str, signature: dict[str, Any], columns: dict[str, list[Any]],
                    stamps: dict[str, int] | None = None) -> None:
    """Write the listing atomically (DDP ranks may write the same cache at once).

    ``stamps`` (``{absolute path: st_mtime_ns}``, from :func:`scan_files` / :func:`stamp`) are the
    directories (and files) the listing was read from; :func:`load_list_cache` rescans when one changed.
    A stamp less than 2 s old is stored as unknown (the next load rescans; see ``_RACY_NS``).
    """
    racy_after = time.time_ns() - _RACY_NS
    stamps = {key: (-1 if mtime_ns > racy_after else mtime_ns) for key, mtime_ns in (stamps or {}).items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = json.dumps({"version": _CACHE_VERSION, "signature": signature, "stamps": stamps, "columns": columns})
    write_atomic(path, lambda handle: handle.write(payload.encode("utf-8")), "listing cache")
