"""Representative window subsets: which eval windows a limited evaluation scores.

An evaluation limited to ``N`` windows (``--max-batches``, ``--num-audio``, report examples, the quality
benchmark's ``--audio-batches``) used to take the first ``N`` windows in sorted file order, which on a folder of
four voices is often one voice. :func:`representative_windows` instead picks windows round-robin over the
**sources** (the top-level folder under the dataset's root, or the speaker for datasets that list one:
LibriSpeech ``speaker_id``, Lhotse ``speaker``, Common Voice ``client_id``) and, within a source, round-robin
over its files, the order of its files and each file's starting window drawn with a seeded generator. Within a
file the picks are consecutive windows from that start (wrapping to the file's first window), so a file's
chosen windows are mostly one stretch of speech, which keeps per-file recognition meaningful.

The selection depends only on the dataset's file list, its window counts, the limit and the seed, never on the
batch size, so the tokenizer and the anchors score the same windows.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WindowSubset", "file_sources", "incomplete_files", "representative_windows", "sources_line",
           "window_files"]

#: Metadata columns naming a speaker, most specific first (a dataset's first present one is its source).
SPEAKER_KEYS = ("speaker_id", "speaker", "client_id")
#: The source name of files directly under the root (no top-level folder).
TOP_LEVEL = "(top level)"


@dataclass(frozen=True)
class WindowSubset:
    """Chosen dataset indices and where they come from.

    Attributes:
        indices: sorted dataset indices of the chosen windows.
        sources: source name → windows chosen from it (every source of the dataset, 0 for uncovered ones).
        source_kind: ``"top-level folder"``, ``"speaker"`` or ``"file"`` (no window table: first windows).
        total_windows: windows in the dataset.
        seed: the generator seed.
    """

    indices: list[int]
    sources: dict[str, int]
    source_kind: str
    total_windows: int
    seed: int

    @property
    def covered(self) -> list[str]:
        """Sources with at least one chosen window."""
        return [name for name, count in self.sources.items() if count]

    def to_dict(self) -> dict[str, Any]:
        """The summary written to ``metrics.json`` (without the index list)."""
        return {"windows": len(self.indices), "total_windows": self.total_windows, "source_kind": self.source_kind,
                "sources_covered": len(self.covered), "sources_total": len(self.sources),
                "windows_per_source": dict(self.sources), "seed": self.seed}


def window_files(dataset: Any) -> np.ndarray | None:
    """``(N,)`` file index of every eval window of ``dataset`` (``None`` without
    :meth:`~transcoder.data.base.AudioClipDataset.eval_window_ends`)."""
    ends_of = getattr(dataset, "eval_window_ends", None)
    if not callable(ends_of):
        return None
    ends = np.asarray(ends_of(), dtype=np.int64)
    counts = np.diff(np.concatenate([[0], ends]))
    return np.repeat(np.arange(len(ends)), counts)


def file_sources(dataset: Any) -> tuple[list[str], str]:
    """The source name of each file of ``dataset`` and the kind of source (see the module doc).

    Returns:
        ``(names, kind)``: ``names[i]`` for file ``i``; ``kind`` is ``"speaker"`` or ``"top-level folder"``.
    """
    count = int(getattr(dataset, "num_files", 0))
    keys = getattr(dataset, "metadata_keys", ())
    speaker_key = next((key for key in SPEAKER_KEYS if key in keys), None)
    if speaker_key is not None:
        return [f"speaker {dataset.metadata(i)[speaker_key]}" for i in range(count)], "speaker"
    root = os.path.abspath(str(getattr(dataset, "root", "") or "/"))
    names = []
    for i in range(count):
        relative = os.path.relpath(os.path.abspath(dataset.path(i)), root)
        parts = relative.split(os.sep)
        names.append(parts[0] if len(parts) > 1 and parts[0] != ".." else TOP_LEVEL)
    return names, "top-level folder"


def representative_windows(dataset: Any, limit: int | None, seed: int = 0,
                           among: Iterable[int] | None = None) -> WindowSubset:
    """Up to ``limit`` windows spread over sources and files (all of them when ``limit`` is ``None`` or covers
    every candidate).

    Args:
        dataset: an eval-mode dataset (:meth:`eval_window_ends`, :meth:`path`, optionally speaker metadata).
        limit: windows to choose.
        seed: seeds the file order within each source and each file's first window.
        among: candidate dataset indices (default: every window), e.g. the windows an evaluation scored when
            choosing example windows among them.

    Returns:
        The :class:`WindowSubset` (indices sorted).
    """
    files_of = window_files(dataset)
    candidates = sorted(set(range(len(dataset)) if among is None else (int(i) for i in among)))
    if files_of is None:  # no window table: the first windows, one pseudo-source
        chosen = candidates if limit is None else candidates[:limit]
        return WindowSubset(chosen, {"all": len(chosen)}, "file", len(dataset), seed)
    names, kind = file_sources(dataset)
    if limit is None or limit >= len(candidates):
        chosen = candidates
    else:
        chosen = _round_robin(candidates, files_of, names, limit, seed)
    counts = Counter(names[int(files_of[i])] for i in chosen)
    sources = {name: counts.get(name, 0) for name in sorted(set(names))}
    return WindowSubset(chosen, sources, kind, len(dataset), seed)


def _round_robin(candidates: list[int], files_of: np.ndarray, names: list[str], limit: int, seed: int) -> list[int]:
    """``limit`` of ``candidates``: one window per source in turn, each source cycling through its files (in a
    seeded order), each file giving its windows consecutively from a seeded start."""
    rng = np.random.default_rng(seed)
    by_file: dict[int, list[int]] = {}
    for index in candidates:
        by_file.setdefault(int(files_of[index]), []).append(index)
    by_source: dict[str, list[int]] = {}
    for file_index in by_file:
        by_source.setdefault(names[file_index], []).append(file_index)
    queues: dict[int, list[int]] = {}
    for file_index, windows in by_file.items():
        start = int(rng.integers(len(windows)))
        queues[file_index] = windows[start:] + windows[:start]
    order = {name: [files[i] for i in rng.permutation(len(files))] for name, files in sorted(by_source.items())}
    turn = dict.fromkeys(order, 0)
    chosen: list[int] = []
    while len(chosen) < limit:
        for name, files in order.items():
            live = [f for f in files if queues[f]]
            if not live or len(chosen) >= limit:
                continue
            file_index = live[turn[name] % len(live)]
            turn[name] += 1
            chosen.append(queues[file_index].pop(0))
    return sorted(chosen)


def incomplete_files(dataset: Any, indices: list[int]) -> set[str]:
    """Paths of the files of which ``indices`` (dataset window indices) hold some but not all windows."""
    files_of = window_files(dataset)
    if files_of is None:
        return set()
    chosen = np.bincount(files_of[np.asarray(indices, dtype=np.int64)], minlength=int(files_of.max()) + 1)
    every = np.bincount(files_of, minlength=chosen.size)
    return {dataset.path(i) for i in np.flatnonzero((chosen > 0) & (chosen < every))}


def sources_line(subset: WindowSubset | dict[str, Any]) -> str:
    """One line naming the sources covered and windows per source, e.g.
    ``32 of 410 windows from 4 of 4 sources (top-level folder): a 8, b 8, c 8, d 8``."""
    info = subset.to_dict() if isinstance(subset, WindowSubset) else subset
    per = ", ".join(f"{name} {count}" for name, count in info["windows_per_source"].items())
    return (f"{info['windows']} of {info['total_windows']} windows from {info['sources_covered']} of "
            f"{info['sources_total']} sources ({info['source_kind']}): {per}")
