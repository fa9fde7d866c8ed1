"""Exclusive folder locks that a killed process never leaves behind (``flock``), for run and output folders."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

__all__ = ["FolderLock", "FolderLockedError", "RunLock", "RunLockedError", "held_locks"]


class FolderLockedError(RuntimeError):
    """Another live process works in the same folder."""


RunLockedError = FolderLockedError


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/<name>``, held while the process lives.

    The kernel drops the lock when its process dies (even by ``kill -9``), so a lock left by a dead
    process is taken over without asking. The file records the holder (``label``, host, pid) for the
    error message. ``flock`` is reliable on local disks and most network filesystems with lock support
    (NFSv4, Lustre with ``flock``); on others it may not exclude a process on another machine.

    Args:
        folder: the folder to lock (created if missing).
        name: the lock file's name.
        refusal: the error text after ``"<folder> is in use by <holder>: "``.
        label: written first in the lock file (e.g. a job id), read back by :func:`held_locks`.
        wait_seconds: retry this long before refusing (a lock being probed by :func:`held_locks`).
        what: how the error names the folder (``"run folder"``, ``"output folder"``).
    """

    def __init__(self, folder: Path, name: str = ".lock", refusal: str = "wait for it or stop it",
                 label: str = "", wait_seconds: float = 0.0, what: str = "folder") -> None:
        self.path = Path(folder) / name
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the lock
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._handle.seek(0)
                holder = self._handle.read().strip() or "another process"
                self._handle.close()
                raise FolderLockedError(f"{what} {folder} is in use by {holder}: {refusal}") from None
        self._handle.seek(0)
        self._handle.truncate()
        prefix = f"{label} " if label else ""
        self._handle.write(f"{prefix}pid {os.getpid()} on {socket.gethostname()} "
                           f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_locks(folder: Path, pattern: str, skip: str | None = None) -> list[str]:
    """Holder texts of the lock files ``folder/pattern`` that a live process holds now (``skip`` excluded)."""
    holders = []
    for path in sorted(Path(folder).glob(pattern)):
        if path.name == skip or not path.is_file():
            continue
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holders.append(handle.read().strip() or f"a process holding {path.name}")
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
    return holders


class RunLock(FolderLock):
    """The trainer's lock on its run folder (``<run>/.lock``): one trainer per run folder."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, ".lock", what="run folder",
                         refusal="two trainers in one folder would overwrite each other's checkpoints; wait for "
                                 "it, stop it, or use another --output-dir")
