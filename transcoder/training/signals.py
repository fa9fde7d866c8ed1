"""Ctrl-C and SIGTERM during training: the first one stops after the current step, a second one aborts.

Python runs a signal handler only when the main thread returns to the interpreter, which can take as long
as a step (minutes on an overloaded CPU). So the signal number is also written to a socket
(:func:`signal.set_wakeup_fd`, done by the C-level handler at once) that a watcher thread reads: it answers
the first signal immediately on the console ("stopping after this step ...") and sets the stop flag the
training loop checks at the end of the step; on a second one (at least :data:`SAME_REQUEST_SECONDS`
later) it prints what is kept and how to resume, and
ends the process with ``os._exit(128 + signal)``. A checkpoint being written at that moment is a temporary
file (renamed only when complete), so the last complete checkpoint is never damaged; the temporary is
removed at the next start. Loader workers die with the process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SAME_REQUEST_SECONDS", "STOP_SIGNALS", "StopSignals", "signal_name"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: A signal this soon after the first is the same request (a scheduler or terminal signals the whole process
#: group and torchrun forwards it to its ranks as well), not a second Ctrl-C.
SAME_REQUEST_SECONDS = 2.0


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2 (the number itself when the platform has no name for it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class StopSignals:
    """Watch SIGINT/SIGTERM while :meth:`install`-ed (from the main thread).

    Args:
        request_stop: called (in the watcher thread) with the signal number of the first signal.
        acknowledge: the one-line answer to the first signal (``"stopping after this step ..."``).
        abort: the last words on the second signal (what is kept, how to resume); the process then exits.
        say: where the lines go (e.g. the run's logger).
    """

    def __init__(self, request_stop: Callable[[int], None], acknowledge: Callable[[int], str],
                 abort: Callable[[int], str], say: Callable[[str], None]) -> None:
        self.request_stop = request_stop
        self.acknowledge = acknowledge
        self.abort = abort
        self.say = say
        self.received: list[int] = []
        self._previous_handlers: dict[int, Any] = {}
        self._previous_fd: int | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._first_at: float | None = None

    def install(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            # The Python-level handler does nothing: the watcher acts. It replaces KeyboardInterrupt.
            self._previous_handlers[signum] = signal.signal(signum, lambda _signum, _frame: None)
        self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._thread.start()

    def uninstall(self) -> None:
        """Restore the previous handlers (from the main thread); signals go back to their old behaviour."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
        if self._sockets is not None:
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            reader, writer = self._sockets
            writer.close()
            reader.shutdown(socket.SHUT_RDWR)
            reader.close()
            self._sockets = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        assert self._sockets is not None
        reader = self._sockets[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self._first_at is not None and now - self._first_at < SAME_REQUEST_SECONDS:
            return  # the same request reaching us twice (a process group signal that torchrun also forwards)
        self.received.append(signum)
        if self._first_at is None:
            self._first_at = now
            self.request_stop(signum)
            self.say(self.acknowledge(signum))
            return
        try:
            self.say(self.abort(signum))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)
