"""Map-style access to audio shards (for evaluation), and ``ShardDataset``, the config target for shards.

:class:`ShardIndexDataset` reads every shard's tar headers and JSON members once (no audio is read)
and then opens any record by seeking to its bytes: it is an :class:`AudioClipDataset`, so evaluation
gets the same covering windows, failure handling and DDP split as with a folder of files.
"""

from __future__ import annotations

import io
from typing import Any

from transcoder.data.audio_io import AudioDecodeError, AudioFile
from transcoder.data.base import AudioClipDataset
from transcoder.data.listing import stamp
from transcoder.data.shard_format import ShardError, ShardManifest, missing_reason, read_records
from transcoder.data.shard_stream import ShardStreamDataset

__all__ = ["ShardDataset", "ShardIndexDataset"]


class ShardIndexDataset(AudioClipDataset):
    """Every record of a shard folder, addressable by index (train crops or eval windows).

    Args:
        shards: the shard folder (or its ``shards.json``) written by ``scripts/prepare_shards.py``.
        sample_rate, clip_samples, mode, file_list_cache, max_fallback: see :class:`AudioClipDataset`.

    Items carry ``name`` (the record's source name); ``path`` is ``<shard folder>/<shard>/<member>``.
    What each shard yields is compared with the manifest: records it no longer yields (a damaged member
    header ends a tar early, silently for ``tarfile``) are skipped with one warning per shard naming their
    source names, and each is counted in :attr:`skipped_files` (as ``<shard>:<key>``); so is a malformed
    record. A shard that cannot be opened at all is named too.
    """

    metadata_keys = ("name",)
    hidden_keys = ("shard", "data_offset", "data_size", "segment_start", "segment_frames")

    def __init__(self, shards: str, *, sample_rate: int = 16000, clip_samples: int = 163840, mode: str = "train",
                 file_list_cache: str | None = None, max_fallback: int = 32) -> None:
        try:
            self.manifest = ShardManifest.load(shards)
        except ShardError as err:
            raise FileNotFoundError(f"ShardIndexDataset: shards={shards!r}: {err}") from None
        self.root = self.manifest.root
        super().__init__(sample_rate=sample_rate, clip_samples=clip_samples, mode=mode,
                         file_list_cache=file_list_cache, max_fallback=max_fallback)

    def _signature(self) -> dict[str, Any]:
        return {"manifest": ShardManifest.locate(self.root), "columns": list(self.hidden_keys)}

    def layout_help(self) -> str:
        return "Expected a shard folder written by scripts/prepare_shards.py (shards.json beside shard-*.tar)."

    def _scan(self) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {"path": [], **{k: [] for k in (*self.metadata_keys, *self.hidden_keys)}}
        stamp(self._dir_stamps, ShardManifest.locate(self.root))
        for index, info in enumerate(self.manifest.shards):
            read: set[int] = set()
            problem = None
            try:
                for record in read_records(self.manifest.path(index), read_audio=False):
                    read.add(record.index)
                    if record.error is not None:
                        self._record_failure(f"{info.name}:{record.key}", record.error)
                        continue
                    segment = record.meta.get("segment") or (0, -1)
                    columns["path"].append(f"{info.name}/{record.audio_name}")
                    columns["name"].append(str(record.meta.get("name", record.audio_name)))
                    columns["shard"].append(index)
                    columns["data_offset"].append(int(record.data_offset))
                    columns["data_size"].append(int(record.data_size))
                    columns["segment_start"].append(int(segment[0]))
                    columns["segment_frames"].append(int(segment[1]))
            except ShardError as err:
                problem = err.reason
            missing = self.manifest.missing_records(index, read)
            if missing:
                self._record_missing(info.name, missing, problem or missing_reason(len(read), info.records))
            elif problem is not None:
                self._record_failure(self.manifest.path(index), problem)
        return columns

    def _record_missing(self, shard: str, missing: list[tuple[str, str]], reason: str) -> None:
        """One warning naming the missing records of ``shard``; each is counted as skipped."""
        names = ", ".join(f"{key} ({name})" for key, name in missing[:10]) + (" ..." if len(missing) > 10 else "")
        self._record_failure(f"{shard}:{missing[0][0]}", f"{reason}; {len(missing)} records not read: {names}")
        for key, name in missing[1:]:
            self._failed.setdefault(f"{shard}:{key}", f"{name}: {reason}")

    def source_bytes(self, file_index: int) -> bytes:
        path = self.path(file_index)
        shard = self.manifest.path(self._column("shard", file_index))  # member names may hold "/"
        size = self._column("data_size", file_index)
        try:
            with open(shard, "rb") as handle:
                handle.seek(self._column("data_offset", file_index))
                data = handle.read(size)
        except OSError as err:
            raise AudioDecodeError(path, f"cannot read the shard ({err})") from None
        if len(data) != size:
            raise AudioDecodeError(path, f"shard truncated: {len(data)} of {size} bytes")
        return data

    def _segment(self, file_index: int) -> tuple[int, int] | None:
        frames = self._column("segment_frames", file_index)
        return None if frames < 0 else (self._column("segment_start", file_index), frames)

    def open_audio(self, file_index: int) -> AudioFile:
        return AudioFile(self.path(file_index), fileobj=io.BytesIO(self.source_bytes(file_index)),
                         segment=self._segment(file_index))


def ShardDataset(shards: str, *, sample_rate: int = 16000, clip_samples: int = 163840,  # noqa: N802 - a config target
                 mode: str = "train", seed: int = 0, shuffle_buffer: int = 256,
                 file_list_cache: str | None = None) -> ShardStreamDataset | ShardIndexDataset:
    """The config target for shards: a :class:`ShardStreamDataset` for training (``mode="train"``), a
    :class:`ShardIndexDataset` (covering windows) for evaluation. ``seed`` and ``shuffle_buffer`` apply to
    the stream, ``file_list_cache`` to the index."""
    if mode == "train":
        return ShardStreamDataset(shards, sample_rate=sample_rate, clip_samples=clip_samples, mode=mode, seed=seed,
                                  shuffle_buffer=shuffle_buffer)
    return ShardIndexDataset(shards, sample_rate=sample_rate, clip_samples=clip_samples, mode=mode,
                             file_list_cache=file_list_cache)
