"""Any folder of audio files, searched recursively (e.g. ``my_audio/train``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transcoder.data.audio_io import AUDIO_EXTENSIONS
from transcoder.data.base import AudioClipDataset
from transcoder.data.listing import scan_files

__all__ = ["AudioFolderDataset"]


class AudioFolderDataset(AudioClipDataset):
    """Every file under ``root`` (recursively) whose extension is in ``extensions``, sorted by path.

    Symlinked files and folders are followed; a symlinked file whose target is already listed under
    ``root`` is listed once (see :func:`~transcoder.data.listing.scan_files`). With ``file_list_cache``
    the listing is rescanned whenever a folder under ``root`` gained, lost or renamed an entry. Entries
    that cannot be listed (symlink loops, dangling symlinks, names that are not UTF-8) are skipped with an
    :class:`~transcoder.data.base.AudioSkipWarning` and counted in :attr:`skipped_files`.

    Args:
        root: the folder, e.g. ``my_audio/train``.
        extensions: file name endings to include, case-insensitive (default: wav, flac, mp3, ogg, opus).
        sample_rate, clip_samples, mode, file_list_cache, max_fallback: see :class:`AudioClipDataset`.

    Files carry no metadata beyond their paths.
    """

    def __init__(
        self,
        root: str,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        *,
        sample_rate: int = 16000,
        clip_samples: int = 163840,
        mode: str = "train",
        file_list_cache: str | None = None,
        max_fallback: int = 32,
    ) -> None:
        self.root = str(root)
        if isinstance(extensions, str):
            extensions = [extensions]
        self.extensions = sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions})
        if not self.extensions:
            raise ValueError("AudioFolderDataset: extensions is empty; expected e.g. ['.wav', '.flac']")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"AudioFolderDataset: root '{self.root}' is not a directory. {self.layout_help()}")
        super().__init__(sample_rate=sample_rate, clip_samples=clip_samples, mode=mode,
                         file_list_cache=file_list_cache, max_fallback=max_fallback)

    def _signature(self) -> dict[str, Any]:
        return {"root": os.path.abspath(self.root), "extensions": self.extensions}

    def layout_help(self) -> str:
        return (f"Expected audio files with extensions {self.extensions} anywhere below the root "
                f"(e.g. my_audio/train/**/*.wav).")

    def _scan(self) -> dict[str, list[Any]]:
        problems: dict[str, str] = {}
        paths = scan_files(self.root, self.extensions, stamps=self._dir_stamps, problems=problems)
        for path, reason in problems.items():  # left out of the listing: named and counted like bad files
            self._record_failure(path, reason)
        return {"path": paths}
