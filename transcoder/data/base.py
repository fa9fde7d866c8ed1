"""Map-style dataset of fixed-length audio clips, shared by every dataset layout.

Train mode: item ``i`` is a random crop of ``clip_samples`` samples from file ``i`` (zero-padded
when the file is shorter). ``dataset[(i, seed)]`` draws the crop offset from
``numpy.random.default_rng(seed)``, so a resumed run that replays its sampler's (index, seed)
pairs sees the same crops; ``dataset[i]`` draws from fresh OS entropy.

Eval mode: the items are consecutive non-overlapping windows covering every file, the last one
padded; index -> (file, window). Counting windows needs each file's length, so the first
``len()`` (or item access) reads every file's header once (``sf.info``, ~0.05 ms per FLAC/MP3,
no decoding); train mode never probes files up front.

Bad files (unreadable, truncated, empty, header with unknown length, NaN/Inf samples) are
skipped: one :class:`AudioSkipWarning` per file naming it and the reason, and the failed path is
listed in the item's ``"skipped"`` and, per process, in ``dataset.skipped_files`` /
``dataset.num_skipped``; with DataLoader workers only the batch's ``"skipped"`` reaches the main
process. What the item then holds depends on the mode:

* train: the item falls back to the next index (so batches keep their size). Only a file whose
  header cannot be read is remembered and never opened again in this process; a failure at one
  crop offset (truncated data, NaN samples) skips that read only, so a partly bad file's good crops
  are still used and the data do not depend on which items a worker happened to load before.
* eval: there is no fallback (it would substitute another file's window and count that window
  twice). The item is the SAME (file, window) with zero audio and ``num_valid == 0``; metrics must
  exclude such items (mask by ``num_valid``).

A file is only checked where it is decoded: NaN samples outside the cropped segment go unnoticed.
"""

from __future__ import annotations

import logging
import math
import mmap
import operator
import os
import warnings
import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from transcoder.data.audio_io import AudioDecodeError, AudioFile
from transcoder.data.listing import StringColumn, load_list_cache, save_list_cache

__all__ = ["AudioClipDataset", "AudioDataError", "AudioSkipWarning", "collate_audio"]

_MODES = ("train", "eval")


class AudioSkipWarning(UserWarning):
    """A dataset skipped an unusable audio file (filter with ``warnings.simplefilter``)."""


class AudioDataError(RuntimeError):
    """No usable audio: every file tried in a row failed (e.g. a folder where every file is bad)."""


#: The training run's logger (``transcoder.training.monitor.setup_text_logger``); skipped files are
#: also written to its log files (``train.log``), as the warning itself only reaches stderr.
RUN_LOGGER = "transcoder"


def _log_to_run_files(message: str) -> None:
    """Write ``message`` to the file handlers of the run logger, if a run set one up in this process
    (also in forked DataLoader workers, which inherit it); the console already shows the warning."""
    logger = logging.getLogger(RUN_LOGGER)
    handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


class _ReportedOnce:
    """Which failed files were already reported, by this process or any DataLoader worker forked from it.

    A bitset in anonymous shared memory (inherited by ``fork``): the workers of a loader, and the fresh
    workers of every validation pass, each meet a bad file, but it is printed (and logged) once. Keys hash
    to one bit; a collision (about one in 10^6 per pair of bad files) hides a second warning, never a count.
    """

    BITS = 1 << 23

    def __init__(self) -> None:
        self._bits = mmap.mmap(-1, self.BITS // 8)

    def first(self, key: str) -> bool:
        """Mark ``key``; ``True`` when no process of the tree had marked it before."""
        byte, bit = divmod(zlib.crc32(key.encode("utf-8", "surrogateescape")) % self.BITS, 8)
        old = self._bits[byte]
        if old & (1 << bit):
            return False
        self._bits[byte] = old | (1 << bit)
        return True


_REPORTED = _ReportedOnce()


class SkipLedger:
    """The skipped-file ledger of a dataset, in this process: each failed file (or record, or shard) once,
    with its first reason, in order of failure. A new name is announced once, as an
    :class:`AudioSkipWarning` and a line in the run's log files; :attr:`skipped_files`, :attr:`num_skipped`
    and :attr:`skip_reasons` report it.
    """

    _failed: dict[str, str]  # the subclass sets it to {} in __init__

    def _record_failure(self, name: str, reason: str) -> None:
        """Enter ``name`` (first reason kept) and announce it the first time."""
        if name not in self._failed:
            self._failed[name] = reason
            if not _REPORTED.first(f"{getattr(self, '_report_token', '')}:{name}"):
                return  # another loader worker (or an earlier validation pass) of this dataset reported it
            message = f"{type(self).__name__}: skipping '{name}'{self._skip_context()}: {reason}"
            warnings.warn(message, AudioSkipWarning, stacklevel=3)
            _log_to_run_files(message)

    def _skip_context(self) -> str:
        """Where the names live, when they are not absolute paths (e.g. ``" under '<shard folder>'"``)."""
        return ""

    @property
    def skipped_files(self) -> list[str]:
        """Files (records, shards) skipped in this process, in order of failure."""
        return list(self._failed)

    @property
    def num_skipped(self) -> int:
        return len(self._failed)

    @property
    def skip_reasons(self) -> dict[str, str]:
        """``{name: reason}`` for :attr:`skipped_files`."""
        return dict(self._failed)


class AudioClipDataset(SkipLedger, Dataset):
    """Base class: subclasses list their files (and metadata) in :meth:`_scan`.

    Args:
        sample_rate: output sample rate (files are resampled to it).
        clip_samples: samples per item; use ``MelConfig.clip_samples`` so the front end yields
            exactly ``target_length`` frames.
        mode: ``"train"`` (random crops) or ``"eval"`` (windows covering every file).
        file_list_cache: optional JSON path; the listing is read from it when it was written for
            the same root and settings and none of the scanned folders changed since (mtime, one
            ``stat`` per folder), else scanned and written there.
        max_fallback: train mode: consecutive failing items tolerated before an index raises
            (eval mode never falls back).

    Item: ``{"audio": (clip_samples,) float32, "path": str, "file_index": int, "num_valid": int
    (unpadded samples; 0 for an eval window that failed to decode), "offset": int (first sample, at
    sample_rate), "skipped": list[str]}``. The subclass's metadata (:attr:`metadata_keys`, e.g.
    transcripts and speaker ids) is not put in every batch: read it with :meth:`metadata`.
    """

    #: Metadata columns a subclass lists for each file (see :meth:`metadata`).
    metadata_keys: tuple[str, ...] = ()
    #: Columns a subclass lists in :meth:`_scan` for its own use (e.g. a segment's first frame): kept per
    #: file like metadata (read them with :meth:`_column`) but not added to items.
    hidden_keys: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        clip_samples: int = 163840,
        mode: str = "train",
        file_list_cache: str | None = None,
        max_fallback: int = 32,
    ) -> None:
        name = type(self).__name__
        for key, value in (("sample_rate", sample_rate), ("clip_samples", clip_samples),
                           ("max_fallback", max_fallback)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {key}={value!r}, expected a positive integer")
        if mode not in _MODES:
            raise ValueError(f"{name}: mode={mode!r}, expected one of {list(_MODES)}")
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.mode = mode
        self.max_fallback = max_fallback
        self._failed: dict[str, str] = {}  # every failure in this process (first reason), for reporting
        self._report_token = os.urandom(8).hex()  # this dataset's failures are reported once across workers
        self._unopenable: dict[str, str] = {}  # header failures: never retried
        self._dir_stamps: dict[str, int] = {}  # filled by _scan: {path: st_mtime_ns} of what it walked
        self._window_ends: np.ndarray | None = None  # eval: cumulative window count per file

        columns = self._listing(file_list_cache)
        if not columns["path"]:
            raise FileNotFoundError(f"{name}: no audio files found under '{self.root}'. {self.layout_help()}")
        self._paths = StringColumn(columns["path"])
        self._meta: dict[str, Any] = {}
        for key in (*self.metadata_keys, *self.hidden_keys):
            values = columns[key]
            self._meta[key] = (np.asarray(values, dtype=np.int64) if values and isinstance(values[0], int)
                               else StringColumn(values))

    # --- to implement -----------------------------------------------------------------------
    root: str

    def _scan(self) -> dict[str, list[Any]]:
        """Columns ``{"path": [paths relative to root, sorted], <metadata key>: [...]}``.

        A scan that walks directories records each one's ``st_mtime_ns`` in ``self._dir_stamps``
        (see :func:`~transcoder.data.listing.stamp`); the file-list cache is rescanned when any of
        them changed or disappeared. A listing that depends on something else must put it in
        :meth:`_signature`.
        """
        raise NotImplementedError

    def _signature(self) -> dict[str, Any]:
        """What the listing depends on (root and layout options), to validate the cache."""
        raise NotImplementedError

    def layout_help(self) -> str:
        """One or two sentences on the expected folder layout, for error messages."""
        raise NotImplementedError

    # --- public -----------------------------------------------------------------------------
    @property
    def num_files(self) -> int:
        return len(self._paths)

    def path(self, file_index: int) -> str:
        """Absolute path of file ``file_index`` (in the sorted order every DDP rank shares)."""
        return os.path.join(self.root, self._paths[file_index])

    def open_audio(self, file_index: int) -> AudioFile:
        """Open file ``file_index`` for decoding (:class:`AudioDecodeError` if unusable).

        Subclasses whose items are not whole files on disk (a segment of a recording, a record inside
        a shard) override this; everything that decodes goes through it.
        """
        return AudioFile(self.path(file_index))

    def source_bytes(self, file_index: int) -> bytes:
        """The stored (still compressed) bytes behind file ``file_index``, for copying into shards."""
        with open(self.path(file_index), "rb") as handle:
            return handle.read()

    def __len__(self) -> int:
        if self.mode == "train":
            return self.num_files
        return int(self._eval_windows()[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``dataset[i]`` or ``dataset[(i, seed)]`` (the seed fixes a train crop; eval ignores it)."""
        index, seed = self._parse_key(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {n} items")
        index %= n
        if self.mode == "eval":
            try:
                item = self._load(index, seed)
            except AudioDecodeError as err:
                self._record_failure(err.path, err.reason)
                return self._failed_window(index, err.path)
            item["skipped"] = []
            return item
        skipped: list[str] = []
        for attempt in range(min(self.max_fallback, n)):
            try:
                item = self._load((index + attempt) % n, seed)
            except AudioDecodeError as err:
                self._record_failure(err.path, err.reason)
                if err.path not in skipped:
                    skipped.append(err.path)
                continue
            item["skipped"] = skipped
            return item
        raise AudioDataError(
            f"{type(self).__name__}: {min(self.max_fallback, n)} consecutive items from index {index} "
            f"failed to decode under '{self.root}' (max_fallback={self.max_fallback}; last files: "
            f"{skipped[-3:]}); reasons: {[self._failed.get(p) for p in skipped[-3:]]}")

    # --- internals --------------------------------------------------------------------------
    def _listing(self, cache: str | None) -> dict[str, list[Any]]:
        signature = {"dataset": type(self).__name__, **self._signature()}
        columns = load_list_cache(cache, signature) if cache else None
        if columns is None:
            self._dir_stamps = {}
            columns = self._scan()
            if cache and columns["path"]:
                save_list_cache(cache, signature, columns, self._dir_stamps)
        return columns

    @staticmethod
    def _parse_key(key: Any) -> tuple[int, int | None]:
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"dataset key {key!r}: expected an int index or an (index, seed) pair")
            return operator.index(key[0]), operator.index(key[1])
        if isinstance(key, Tensor) and key.numel() == 1:
            key = key.item()
        try:
            return operator.index(key), None
        except TypeError:
            raise TypeError(f"dataset key {key!r}: expected an int index or an (index, seed) pair") from None

    def _column(self, key: str, file_index: int) -> Any:
        """Value of column ``key`` (a metadata or hidden key) for file ``file_index``."""
        value = self._meta[key][file_index]
        return int(value) if isinstance(value, np.integer) else value

    def metadata(self, file_index: int) -> dict[str, Any]:
        """The subclass's metadata of file ``file_index`` (an item's ``"file_index"``), e.g. its transcript."""
        return {key: self._column(key, file_index) for key in self.metadata_keys}

    def _locate(self, index: int) -> tuple[int, int | None]:
        """``(file index, eval window or None)`` of item ``index`` (in ``[0, len)``)."""
        if self.mode == "train":
            return index, None
        ends = self._eval_windows()
        file_index = int(np.searchsorted(ends, index, side="right"))
        return file_index, index - (int(ends[file_index - 1]) if file_index else 0)

    def _load(self, index: int, seed: int | None) -> dict[str, Any]:
        """Decode item ``index``; :class:`AudioDecodeError` if its file or segment is unusable."""
        file_index, window = self._locate(index)
        path = self.path(file_index)
        if path in self._unopenable:
            raise AudioDecodeError(path, self._unopenable[path])
        try:
            f = self.open_audio(file_index)
        except AudioDecodeError as err:
            self._unopenable[path] = err.reason
            raise
        with f:
            total = f.info.num_samples(self.sample_rate)
            if total <= 0:
                reason = f"shorter than one sample at {self.sample_rate} Hz"
                self._unopenable[path] = reason
                raise AudioDecodeError(path, reason)
            if window is not None:
                offset = window * self.clip_samples
            elif total > self.clip_samples:
                rng = np.random.default_rng(seed)
                offset = int(rng.integers(0, total - self.clip_samples + 1))
            else:
                offset = 0
            # A failure here concerns this segment only: it is not cached, other offsets may decode.
            wave = f.read(self.sample_rate, offset=offset, num_samples=self.clip_samples)
        audio = torch.zeros(self.clip_samples, dtype=torch.float32)
        audio[: wave.shape[0]] = wave
        return {"audio": audio, "path": path, "file_index": file_index, "num_valid": int(wave.shape[0]),
                "offset": offset}

    def _failed_window(self, index: int, failed_path: str) -> dict[str, Any]:
        """Eval item ``index`` that failed to decode: its own path, offset and metadata, zero audio,
        ``num_valid == 0`` and ``"skipped": [failed_path]``."""
        file_index, window = self._locate(index)
        return {"audio": torch.zeros(self.clip_samples, dtype=torch.float32), "path": self.path(file_index),
                "file_index": file_index, "num_valid": 0, "offset": (window or 0) * self.clip_samples,
                "skipped": [failed_path]}

    def eval_window_ends(self) -> np.ndarray:
        """Eval mode: the cumulative number of windows per file (file ``i`` owns items
        ``[ends[i - 1], ends[i])``; an unreadable file owns none)."""
        return self._eval_windows()

    def _eval_windows(self) -> np.ndarray:
        """Cumulative window counts per file (eval mode), from one header read per file."""
        if self._window_ends is None:
            counts = np.zeros(self.num_files, dtype=np.int64)
            for i in range(self.num_files):
                try:
                    with self.open_audio(i) as f:
                        total = f.info.num_samples(self.sample_rate)
                except AudioDecodeError as err:
                    self._unopenable[err.path] = err.reason
                    self._record_failure(err.path, err.reason)
                    continue
                counts[i] = math.ceil(total / self.clip_samples)
            if counts.sum() == 0:
                raise AudioDataError(f"{type(self).__name__}: none of the {self.num_files} files under "
                                   f"'{self.root}' is readable audio; first reason: "
                                   f"{next(iter(self._failed.items()), None)}")
            self._window_ends = np.cumsum(counts)
        return self._window_ends


def collate_audio(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: audio → (B, S) tensor, ints → (B,) int64 tensor, strings → lists,
    ``"skipped"`` → one flat list of the failed paths behind this batch.

    The flat list only counts failures; to tell WHICH eval items failed use ``num_valid == 0``
    (an eval item that failed keeps its own path and offset, see :class:`AudioClipDataset`).
    """
    if not items:
        raise ValueError("collate_audio: empty list of items")
    keys = list(items[0])
    for item in items[1:]:
        if list(item) != keys:
            raise ValueError(f"collate_audio: items have different keys: {keys} vs {list(item)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        first = values[0]
        if key == "skipped":
            batch[key] = [path for value in values for path in value]
        elif isinstance(first, Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch
