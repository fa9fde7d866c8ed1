"""Console warnings a user can read: one line each, no library source line, each message once.

Python's default warning format prints the file and line that raised it and then that line of source (for a
skipped audio file inside a DataLoader worker: a line of PyTorch's fetch loop, in the middle of the progress
bar), and the same warning raised in another module or worker prints again. :func:`install_console_warnings`
(called by the command-line entry points, never on import) replaces both: ``warning: <message>`` written
through tqdm (so progress bars stay intact), each distinct message once per process and its forked workers.
:func:`warn_once` prints such a line for the library's own notices.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["format_warning", "install_console_warnings", "warn_once"]

_SEEN: set[str] = set()


def format_warning(message: Warning | str, category: type[Warning], filename: str = "", lineno: int = 0,
                   line: str | None = None) -> str:
    """``warning: <message>`` (the category's name prefixed unless it is a plain ``UserWarning``), no source."""
    text = str(message).strip()
    kind = "" if category in (UserWarning, Warning) else f"{category.__name__}: "
    return f"warning: {kind}{text}\n"


def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
          line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: each formatted line once, written around any progress bar."""
    text = format_warning(message, category, filename, lineno, line)
    if text in _SEEN:
        return
    _SEEN.add(text)
    tqdm.write(text.rstrip("\n"), file=file or sys.stderr)


def install_console_warnings() -> None:
    """Route :mod:`warnings` through :func:`format_warning`, each distinct message once (idempotent)."""
    warnings.showwarning = _show
    warnings.formatwarning = format_warning  # type: ignore[assignment]


def warn_once(message: str, file: Any = None, key: str | None = None) -> bool:
    """Print ``warning: <message>`` to stderr unless this process printed it (or another message with the same
    ``key``, e.g. the same finding with other figures) already; whether it printed."""
    text = f"warning: {message.strip()}\n"
    if text in _SEEN or (key is not None and key in _SEEN):
        return False
    _SEEN.add(text)
    if key is not None:
        _SEEN.add(key)
    tqdm.write(text.rstrip("\n"), file=file or sys.stderr)
    return True
