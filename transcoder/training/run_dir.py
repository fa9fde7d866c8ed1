"""The run folder: one trainer at a time, no stale temporary files, and which checkpoint a run resumes from."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transcoder.utils.checkpoint import CheckpointError, load_checkpoint
from transcoder.utils.locking import RunLock, RunLockedError

__all__ = ["RunLock", "RunLockedError", "config_differences", "load_resumable", "remove_stale_temporaries"]

# Settings that change how a run is watched, not what it computes: a resume may change them freely.
MONITORING_KEYS = {
    "training": {"log_every", "val_every", "val_max_batches", "ckpt_every", "latest_every", "image_every",
                 "num_images", "max_nonfinite_steps", "skip_resource_check"},
    "data": {"num_workers", "prefetch_factor", "pin_memory", "val_batch_size", "loader_timeout"},
}


def remove_stale_temporaries(ckpt_dir: Path) -> list[Path]:
    """Delete ``.<name>.pt.*.tmp`` files a killed save left behind (call while holding the run lock)."""
    removed = sorted(ckpt_dir.glob(".*.pt.*.tmp")) if ckpt_dir.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("step_"))
    except ValueError:
        return -1


def load_resumable(ckpt_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run folder: ``latest.pt``, else the highest ``step_N.pt``.

    A damaged ``latest.pt`` (truncated, empty, garbage, checksum mismatch) is renamed to
    ``latest.pt.damaged-<time>`` for inspection, with a warning (``warn``) naming it, and the numbered
    checkpoints are tried newest first. Returns None when the folder holds no checkpoint at all;
    raises :class:`CheckpointError` when it holds some but none is readable.
    """
    latest = ckpt_dir / "latest.pt"
    numbered = sorted(ckpt_dir.glob("step_*.pt"), key=_step_of, reverse=True)
    candidates = ([latest] if latest.exists() else []) + numbered
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except (CheckpointError, FileNotFoundError, IsADirectoryError) as err:
            problems.append(f"{path.name}: {err}")
            kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            if path.is_file():
                path.rename(kept)
            warn(f"{err}; {'kept as ' + kept.name if kept.exists() else 'left in place'}, "
                 "trying the next newest checkpoint")
    raise CheckpointError(f"no readable checkpoint in {ckpt_dir}: " + "; ".join(problems))


def config_differences(saved: dict[str, Any], requested: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, monitoring-only keys excluded."""
    differences = []
    for key in sorted(set(saved) | set(requested), key=str):
        dotted = f"{prefix}{key}"
        section = prefix.rstrip(".")
        if key in MONITORING_KEYS.get(section, set()):
            continue
        old, new = saved.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{dotted}.")
        elif json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            differences.append(f"{dotted}: {old!r} -> {new!r}")
    return differences
