"""The DataLoader the trainer (and the throughput benchmark) read audio batches through.

Worker processes and errors: the workers ignore SIGTERM/SIGINT (the main process decides when to
stop, see :func:`worker_init`), so nothing but the main process can end them. Every iterator with
workers is therefore kept in a registry, and :func:`shutdown_loaders` stops all their workers
(asked politely first, then SIGKILL). It runs from ``scripts/main_audio_tokenizer.py``'s ``finally``
and from an ``atexit`` hook registered before Python's own exit hooks run.

Why this matters: an uncaught exception keeps its traceback, hence the iterator, alive until
interpreter shutdown (``sys.last_traceback``). At that point torch's exit hook has already turned
the iterator's own shutdown into a no-op, and ``multiprocessing``'s exit hook SIGTERMs the daemonic
workers and joins them; a worker that ignores SIGTERM never exits and the job hangs forever.
Workers also ask Linux to SIGKILL them when their parent dies (``PR_SET_PDEATHSIG``), so a main
process killed outright (SIGKILL, OOM killer) leaves no worker behind either.

Stalls: a live worker can block forever without failing (e.g. writing a batch into a full ``/dev/shm``, or
reading from a hung network file system); torch only notices workers that die. With ``timeout`` set
(``data.loader_timeout``), a batch that does not arrive in time raises :class:`LoaderStalledError` naming
the likely causes and the free space in ``/dev/shm``.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from transcoder.data import collate_audio

#: Live iterators that own worker processes (weak: an iterator that is collected is shut down by torch).
_LIVE_ITERATORS: weakref.WeakSet[Any] = weakref.WeakSet()
_REGISTRY_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


class LoaderStalledError(TimeoutError):
    """No batch arrived from the loader workers within ``data.loader_timeout`` seconds."""


def _stall_message(workers: int, timeout: float) -> str:
    try:
        shm = f"{shutil.disk_usage('/dev/shm').free / 2**20:.0f} MiB free in /dev/shm"
    except OSError:
        shm = "no /dev/shm"
    return (f"no batch from the {workers} data loader worker(s) in {timeout:g} s (data.loader_timeout; {shm}): "
            "a worker is stalled. Likely causes: a full /dev/shm (workers hand batches over in shared memory: "
            "give it more, e.g. docker run --shm-size=8g, or set data.num_workers=0), a hung network file "
            "system, or storage slower than the timeout (raise data.loader_timeout)")


class _WatchedIterator(_MultiProcessingDataLoaderIter):
    """torch's multi-process iterator, whose timeout raises :class:`LoaderStalledError`."""

    def _get_data(self) -> Any:
        try:
            return super()._get_data()
        except RuntimeError as err:
            if self._timeout > 0 and "timed out" in str(err):
                self._shutdown_workers()
                raise LoaderStalledError(_stall_message(self._num_workers, self._timeout)) from None
            raise

    def _shutdown_workers(self) -> None:
        workers = list(getattr(self, "_workers", []))
        super()._shutdown_workers()
        # Workers ignore SIGTERM (the trainer owns the signals), so torch's terminate() cannot end a stalled
        # one; without the kill it outlives the run and the interpreter's exit waits for it forever.
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5.0)


class _TrackedDataLoader(DataLoader):
    """A DataLoader whose multi-process iterators are registered for :func:`shutdown_loaders`."""

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        iterator = _WatchedIterator(self)
        with _REGISTRY_LOCK:
            _LIVE_ITERATORS.add(iterator)
        return iterator


def build_loader(dataset: Any, sampler: Any, batch_size: int, *, workers: int, device: torch.device, seed: int,
                 persistent: bool, pin_memory: bool = True, prefetch_factor: int = 2,
                 timeout: float | None = None) -> DataLoader:
    """Batches of ``collate_audio`` dicts (``audio`` (B, S)) drawn in ``sampler`` order.

    The loader has its own generator, so creating an iterator never advances the global RNG (exact
    resume), and its workers run single-threaded, ignore SIGTERM/SIGINT and die with their parent
    (see :func:`worker_init`); :func:`shutdown_loaders` stops them on any exit path. ``timeout``
    (seconds, with workers): a batch that takes longer raises :class:`LoaderStalledError`.
    """
    return _TrackedDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_audio,
        pin_memory=pin_memory and device.type == "cuda", drop_last=False,
        persistent_workers=persistent and workers > 0, prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=functools.partial(worker_init, parent_pid=os.getpid()),
        generator=torch.Generator().manual_seed(seed), timeout=float(timeout) if timeout and workers else 0.0,
    )


class ObservedIterator:
    """Hands every batch of ``iterator`` to ``observe`` (which returns the batch to use) before yielding it;
    used for a streaming dataset that must see which batches training consumed (its resume position)."""

    def __init__(self, iterator: Any, observe: Any) -> None:
        self._iterator = iterator
        self._observe = observe

    def __iter__(self) -> ObservedIterator:
        return self

    def __next__(self) -> Any:
        return self._observe(next(self._iterator))

    def _shutdown_workers(self) -> None:
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def worker_init(_worker_id: int, parent_pid: int | None = None) -> None:
    # Loader workers only decode and crop: one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # torchrun and schedulers signal every process; a worker that died of SIGTERM would make the loader
    # raise before the main process could write its checkpoint. The main process shuts workers down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ...and since the signals are ignored, make the kernel kill the worker when its parent dies.
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: SIGKILL this process when its parent exits; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl (unusual Linux builds): rely on shutdown_loaders
        return
    # The parent may have died between fork and prctl: then we were already re-parented.
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def live_worker_pids() -> list[int]:
    """PIDs of the loader workers of this process that are still alive (for tests and diagnostics)."""
    with _REGISTRY_LOCK:
        iterators = list(_LIVE_ITERATORS)
    return [w.pid for it in iterators for w in getattr(it, "_workers", []) if w.is_alive()]


def shutdown_loaders(timeout: float = 5.0) -> int:
    """Stop the workers of every live loader iterator of this process; returns how many had to be killed.

    Each iterator is first shut down the regular way (workers are told to exit and joined); any worker
    still alive ``timeout`` seconds later is SIGKILLed. Safe to call more than once and at exit.
    """
    with _REGISTRY_LOCK:
        iterators = list(_LIVE_ITERATORS)
        _LIVE_ITERATORS.clear()
    workers = []
    for iterator in iterators:
        workers.extend(getattr(iterator, "_workers", []))
        try:
            iterator._shutdown_workers()  # no-op once torch's exit hook ran; then the kill below does it
        except Exception:  # noqa: BLE001 - a broken queue must not stop the kill below
            pass
        if getattr(iterator, "_worker_pids_set", False):
            # Forget the pids first, or torch's SIGCHLD handler reports the kill below as a worker crash.
            try:
                torch.utils.data._utils.signal_handling._remove_worker_pids(id(iterator))
                iterator._worker_pids_set = False
            except Exception:  # noqa: BLE001
                pass
    deadline = time.monotonic() + timeout
    killed = 0
    for worker in workers:
        if worker.is_alive():
            worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5.0)
            killed += 1
    return killed


# Registered after torch's and multiprocessing's exit hooks (both imported above), so it runs before them.
atexit.register(shutdown_loaders)
