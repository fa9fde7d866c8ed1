"""LibriSpeech (Panayotov et al., 2015) in its official layout, with transcripts and speaker ids."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from transcoder.data.base import AudioClipDataset
from transcoder.data.listing import stamp

__all__ = ["LibriSpeechDataset"]

_LAYOUT = ("Expected layout: <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac with "
           "<speaker>-<chapter>.trans.txt beside the audio; root is the folder holding the split folders "
           "(e.g. 'LibriSpeech') or its parent (where the openslr tarballs extract to).")


class LibriSpeechDataset(AudioClipDataset):
    """LibriSpeech utterances of one or more splits (``train-clean-100``, ``dev-clean``, ...).

    Args:
        root: folder holding the split folders, or its parent containing ``LibriSpeech/``.
        splits: split folder names, a list or one string.
        sample_rate, clip_samples, mode, file_list_cache, max_fallback: see :class:`AudioClipDataset`.

    :meth:`metadata` gives ``speaker_id`` (int), ``chapter_id`` (int), ``utterance_id`` (str, e.g.
    ``"9001-1-0003"``) and ``transcript`` (str, upper case as distributed; ``""`` when the
    chapter has no transcript file).

    With ``file_list_cache``, the listing (transcripts included) is rescanned when a split, speaker or
    chapter folder gained, lost or renamed an entry, or a ``*.trans.txt`` file was modified.
    """

    metadata_keys = ("speaker_id", "chapter_id", "utterance_id", "transcript")

    def __init__(
        self,
        root: str,
        splits: Sequence[str] | str = ("train-clean-100",),
        *,
        sample_rate: int = 16000,
        clip_samples: int = 163840,
        mode: str = "train",
        file_list_cache: str | None = None,
        max_fallback: int = 32,
    ) -> None:
        self.splits = [splits] if isinstance(splits, str) else list(splits)
        if not self.splits or not all(isinstance(s, str) and s for s in self.splits):
            raise ValueError(f"LibriSpeechDataset: splits={splits!r}, expected split names such as "
                             f"['train-clean-100']")
        self.root = self._resolve_root(str(root), self.splits)
        super().__init__(sample_rate=sample_rate, clip_samples=clip_samples, mode=mode,
                         file_list_cache=file_list_cache, max_fallback=max_fallback)

    @staticmethod
    def _resolve_root(root: str, splits: list[str]) -> str:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"LibriSpeechDataset: root '{root}' is not a directory. {_LAYOUT}")
        for candidate in (root, os.path.join(root, "LibriSpeech")):
            if all(os.path.isdir(os.path.join(candidate, s)) for s in splits):
                return candidate
        present = {base: sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
                   for base in (root, os.path.join(root, "LibriSpeech")) if os.path.isdir(base)}
        missing = [s for s in splits if not os.path.isdir(os.path.join(root, s))
                   and not os.path.isdir(os.path.join(root, "LibriSpeech", s))]
        raise FileNotFoundError(
            f"LibriSpeechDataset: split folder(s) {missing or splits} not found (all splits must sit in one "
            f"folder) in '{root}' nor in '{os.path.join(root, 'LibriSpeech')}'; folders present: {present}. "
            f"{_LAYOUT}")

    def _signature(self) -> dict[str, Any]:
        return {"root": os.path.abspath(self.root), "splits": self.splits}

    def layout_help(self) -> str:
        return _LAYOUT

    def _scan(self) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {"path": [], **{k: [] for k in self.metadata_keys}}
        odd: list[str] = []
        stamps = self._dir_stamps
        for split in self.splits:
            for speaker_dir in _subdirs(os.path.join(self.root, split), stamps):
                for chapter_dir in _subdirs(speaker_dir, stamps):
                    stamp(stamps, chapter_dir)
                    rel_dir = os.path.relpath(chapter_dir, self.root).replace(os.sep, "/")
                    names = sorted(e.name for e in os.scandir(chapter_dir)
                                   if e.name.lower().endswith(".flac") and not e.name.startswith("."))
                    transcripts = _read_transcripts(chapter_dir, stamps) if names else {}
                    for name in names:
                        utt = name[: -len(".flac")]
                        parts = utt.split("-")
                        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
                            odd.append(f"{rel_dir}/{name}")
                            continue
                        columns["path"].append(f"{rel_dir}/{name}")
                        columns["speaker_id"].append(int(parts[0]))
                        columns["chapter_id"].append(int(parts[1]))
                        columns["utterance_id"].append(utt)
                        columns["transcript"].append(transcripts.get(utt, ""))
        if odd:
            warnings.warn(f"LibriSpeechDataset: ignored {len(odd)} .flac file(s) not named "
                          f"<speaker>-<chapter>-<utterance>.flac, e.g. {odd[:3]}", stacklevel=3)
        return columns


def _subdirs(path: str, stamps: dict[str, int] | None = None) -> list[str]:
    """Sorted non-hidden sub-folders of ``path`` (whose mtime goes into ``stamps``, stat before read)."""
    stamp(stamps, path)
    return sorted(e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _read_transcripts(chapter_dir: str, stamps: dict[str, int] | None = None) -> dict[str, str]:
    """``{utterance_id: text}`` from the chapter's ``*.trans.txt`` (lines ``<utt-id> <TEXT>``); each
    transcript file's mtime goes into ``stamps`` (an in-place edit does not change the folder's)."""
    out: dict[str, str] = {}
    for entry in os.scandir(chapter_dir):
        if entry.name.endswith(".trans.txt"):
            stamp(stamps, entry.path)
            with open(entry.path, encoding="utf-8") as fh:
                for line in fh:
                    utt, _, text = line.strip().partition(" ")
                    if utt:
                        out[utt] = text
    return out
