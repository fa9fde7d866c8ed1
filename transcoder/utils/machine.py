"""What machine a measurement ran on: the CPU model as the benchmark reports name it."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model() -> str:
    """The CPU model (``model name`` of ``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    name = platform.processor() or platform.machine() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name
