"""Streaming training data from audio shards: every rank and loader worker reads its own shards.

Assignment (one pass = every record once): pass ``p`` shuffles the shard order with a generator
seeded by ``(seed, p)``, the same on every rank. There are ``C = world_size * num_workers``
consumers (consumer ``c = rank * num_workers + worker``). With ``S >= C`` shards the shuffled list
is dealt round robin (consumer ``c`` takes shards ``c, c + C, ...``); with fewer shards each shard
is split into ``ceil(C / S)`` parts (part ``k`` = records ``k, k + parts, ...``) and the parts are
dealt. Within a pass the consumers therefore read disjoint records and together cover all of them.
A consumer that finishes its share starts the next pass (a new shard order) at once: training is
counted in steps, so no rank ever runs dry; consumers with fewer records simply start new passes
sooner.

Shuffling: records go through a buffer of ``shuffle_buffer`` records (compressed bytes, e.g. about
``0.3 MB`` per 15 s FLAC utterance); each yielded item is a uniformly random record taken out of it.
The crop of a record is drawn from ``(seed, pass, shard, record)``, so it does not depend on timing.

Resume: each item carries its consumer's reader position (pass, task, next record in the shard)
as it was when the item left the buffer. The training process records, per worker, the position of
the last item it consumed (:meth:`ShardStreamDataset.observe`) and checkpoints it
(:meth:`state_dict`, one per rank). A resumed consumer restarts reading at that position with an
empty buffer. Guarantee, per (rank, loader worker) and per resume, for an unchanged manifest, seed,
world size and ``num_workers``:

* no record is yielded twice within a pass (nothing is replayed): everything before the position was
  either consumed before the checkpoint or was in the buffer;
* the records that sat in that worker's buffer at the checkpoint, at most ``shuffle_buffer``, are not
  seen in that pass (skipped); they come back in the next pass;
* batches a worker had prefetched but training had not consumed are read again (they are after the
  recorded position), so prefetching loses nothing.

If the world size, ``num_workers`` or the manifest changed, positions cannot be mapped: every
consumer starts the pass after the furthest recorded one (a warning says so).

Bad data: a record that does not decode (or is malformed) is skipped and named in the next item's
``"skipped"`` list; a shard that cannot be opened, is truncated or holds fewer records than the
manifest says (a damaged member header ends a tar early) is skipped from that point on, and each record
it did not yield is named (``<shard>:<key>``, with its source name in the warning) and counted. Each name
is reported once per process (an :class:`~transcoder.data.base.AudioSkipWarning` and the run log). Only
when three passes in a row yield nothing does the stream raise :class:`~transcoder.data.base.AudioDataError`.

Debugging: with ``TRANSCODER_SHARD_LOG=<folder>`` every consumer appends the names of the records
it yields to ``<folder>/rank<r>-worker<w>.txt`` (the multi-node test uses it to check disjointness).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from transcoder.data.audio_io import AudioDecodeError, AudioFile
from transcoder.data.base import AudioDataError, AudioSkipWarning, SkipLedger, _log_to_run_files
from transcoder.data.shard_format import ShardError, ShardManifest, ShardRecord, missing_reason, read_records
from transcoder.data.stream_state import STATE_KEY, StreamResume

__all__ = ["STATE_KEY", "SHARD_LOG_ENV", "ShardStreamDataset", "StreamPosition", "open_record"]

#: Environment variable: folder where every consumer logs the names of the records it yields.
SHARD_LOG_ENV = "TRANSCODER_SHARD_LOG"
_EMPTY_PASSES_LIMIT = 3


@dataclass(frozen=True)
class StreamPosition:
    """Where a consumer's reader stands: ``pass_index``, ``task`` (index into its task list of that pass),
    ``record`` (next record index inside that task's shard) and ``yielded`` (items so far, all passes)."""

    pass_index: int = 0
    task: int = 0
    record: int = 0
    yielded: int = 0


def open_record(name: str, audio: bytes, meta: dict[str, Any]) -> AudioFile:
    """Open a shard record's audio bytes (honouring its ``segment``); :class:`AudioDecodeError` naming ``name``."""
    segment = meta.get("segment")
    if segment is not None and not (isinstance(segment, list) and len(segment) == 2):
        raise AudioDecodeError(name, f"segment={segment!r} in the record's JSON, expected [first frame, frames]")
    return AudioFile(name, fileobj=io.BytesIO(audio), segment=tuple(segment) if segment else None)


class ShardStreamDataset(StreamResume, SkipLedger, IterableDataset):
    """Endless stream of random crops from the shards of ``shards`` (``shards.json`` or its folder).

    Args:
        shards: the shard folder (or its manifest) written by ``scripts/prepare_shards.py``.
        sample_rate: output sample rate (records are resampled to it).
        clip_samples: samples per item (zero-padded when a record is shorter).
        mode: must be ``"train"``; use :class:`~transcoder.data.ShardIndexDataset` to evaluate over shards.
        seed: shard order, buffer draws and crops derive from it.
        shuffle_buffer: records held per consumer for shuffling (the resume skip bound).
        rank, world_size: this process's place; by default from ``torch.distributed`` (else ``RANK`` /
            ``WORLD_SIZE``, else 0 / 1).

    Item: ``{"audio": (clip_samples,) float32, "path": "<shard>:<key>", "name": source name,
    "num_valid": int, "offset": int, "skipped": list[str], "stream_state": [worker, num_workers,
    pass, task, record, yielded]}``; the trainer passes batches to :meth:`observe`, which removes
    ``stream_state``.
    """

    def __init__(self, shards: str, *, sample_rate: int = 16000, clip_samples: int = 163840, mode: str = "train",
                 seed: int = 0, shuffle_buffer: int = 256, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if mode != "train":
            raise ValueError(f"{name}: mode={mode!r}; a stream only trains. Evaluate over shards with "
                             f"transcoder.data.ShardIndexDataset (or transcoder.data.ShardDataset, which picks it)")
        for key, value in (("sample_rate", sample_rate), ("clip_samples", clip_samples),
                           ("shuffle_buffer", shuffle_buffer)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {key}={value!r}, expected a positive integer")
        try:
            self.manifest = ShardManifest.load(shards)
        except ShardError as err:
            raise FileNotFoundError(f"{name}: shards={shards!r}: {err}") from None
        self.root = self.manifest.root
        self.sample_rate, self.clip_samples, self.mode = sample_rate, clip_samples, mode
        self.seed, self.shuffle_buffer = int(seed), shuffle_buffer
        self._failed: dict[str, str] = {}
        self._init_stream_state(rank, world_size)

    # --- identity, for the trainer's checks ---------------------------------------------------
    @property
    def num_files(self) -> int:
        """Records in the manifest."""
        return self.manifest.num_records

    def fingerprint(self) -> dict[str, Any]:
        """Record count and a hash of the shard list (names and record counts); no shard is opened."""
        import hashlib

        digest = hashlib.sha1()
        for shard in self.manifest.shards:
            digest.update(f"{shard.name}\0{shard.records}\0".encode())
        return {"count": self.num_files, "sha1": digest.hexdigest()[:16]}

    # --- assignment --------------------------------------------------------------------------
    def tasks(self, pass_index: int, consumer: int, consumers: int) -> list[tuple[int, int, int]]:
        """Consumer ``consumer``'s ``(shard index, part, parts)`` list for pass ``pass_index``."""
        num_shards = len(self.manifest.shards)
        order = np.random.default_rng([self.seed, pass_index]).permutation(num_shards)
        parts = math.ceil(consumers / num_shards)
        dealt = [(int(shard), part, parts) for part in range(parts) for shard in order]
        return dealt[consumer::consumers]

    # --- resume (observe, epoch_at = the furthest pass, state_dict, load_state_dict: StreamResume) ---------
    _cycle_name, _positions_name, _data_name = "pass", "stream positions", "shards"
    _position_width = 4  # pass, task, record, yielded

    # --- reading -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        return self.stream(*((info.id, info.num_workers) if info is not None else (0, 1)))

    def stream(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """The endless item stream of loader worker ``worker`` of ``num_workers`` on this rank (what a
        DataLoader worker iterates), from the loaded resume position if any."""
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        position = StreamPosition(*self._resume_position(worker, num_workers))
        log = _RecordLog(self.rank, worker)
        pending: list[str] = []  # failures to report with the next item
        yielded, empty_passes = position.yielded, 0
        pass_index, first_task, first_record = position.pass_index, position.task, position.record
        while True:
            rng = np.random.default_rng([self.seed, pass_index, consumer, first_task, first_record, 1])
            buffer: list[tuple[str, ShardRecord]] = []
            yielded_in_pass = 0
            tasks = self.tasks(pass_index, consumer, consumers)
            for task in range(first_task, len(tasks)):
                shard, part, parts = tasks[task]
                start = first_record if task == first_task else 0
                for shard_name, record in self._records(shard, part, parts, start, pending):
                    buffer.append((shard_name, record))
                    reader = [pass_index, task, record.index + 1]
                    if len(buffer) >= self.shuffle_buffer:
                        item = self._take(buffer, rng, pass_index, pending)
                        if item is not None:
                            yielded += 1
                            yielded_in_pass += 1
                            item[STATE_KEY] = [worker, num_workers, *reader, yielded]
                            log.write(item["path"], item["name"])
                            yield item
            while buffer:  # end of the pass: drain; a resume from here starts the next pass
                item = self._take(buffer, rng, pass_index, pending)
                if item is not None:
                    yielded += 1
                    yielded_in_pass += 1
                    item[STATE_KEY] = [worker, num_workers, pass_index + 1, 0, 0, yielded]
                    log.write(item["path"], item["name"])
                    yield item
            empty_passes = 0 if yielded_in_pass else empty_passes + 1
            if empty_passes >= _EMPTY_PASSES_LIMIT:
                raise AudioDataError(f"{type(self).__name__}: {empty_passes} passes in a row over the shards of "
                                     f"'{self.root}' yielded no usable record for rank {self.rank} worker {worker}; "
                                     f"last failures: {list(self._failed.items())[-3:]}")
            pass_index, first_task, first_record = pass_index + 1, 0, 0

    def _records(self, shard: int, part: int, parts: int, start: int,
                 pending: list[str]) -> Iterator[tuple[str, ShardRecord]]:
        """Well-formed records of this part of ``shard`` from record ``start``; failures go to ``pending``."""
        info = self.manifest.shards[shard]
        read: set[int] = set()
        problem = None
        try:
            for record in read_records(self.manifest.path(shard), start=start, select=lambda i: i % parts == part):
                read.add(record.index)
                if record.error is not None:
                    self._fail(f"{info.name}:{record.key}", record.error, pending)
                    continue
                yield info.name, record
        except ShardError as err:
            problem = err.reason
        # Compare with the manifest: tarfile ends a shard silently at a damaged member header.
        missing = self.manifest.missing_records(shard, read, start, lambda i: i % parts == part)
        if missing:
            self._fail_missing(info.name, missing, problem or missing_reason(len(read), info.records), pending)
        elif problem is not None:
            self._fail(info.name, problem, pending)

    def _take(self, buffer: list[tuple[str, ShardRecord]], rng: np.random.Generator, pass_index: int,
              pending: list[str]) -> dict[str, Any] | None:
        """Remove a random record from ``buffer`` and decode a crop; None (failure recorded) if it is bad."""
        pick = int(rng.integers(len(buffer)))
        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
        shard_name, record = buffer.pop()
        path = f"{shard_name}:{record.key}"
        name = str(record.meta.get("name", record.audio_name))
        crop_rng = np.random.default_rng([self.seed, pass_index, int(record.key) if record.key.isdigit() else 0])
        try:
            assert record.audio is not None
            with open_record(f"{path} ({name})", record.audio, record.meta) as f:
                total = f.info.num_samples(self.sample_rate)
                if total <= 0:
                    raise AudioDecodeError(f"{path} ({name})", f"shorter than one sample at {self.sample_rate} Hz")
                offset = int(crop_rng.integers(0, total - self.clip_samples + 1)) if total > self.clip_samples else 0
                wave = f.read(self.sample_rate, offset=offset, num_samples=self.clip_samples)
        except AudioDecodeError as err:
            self._fail(path, f"{name}: {err.reason}", pending)
            return None
        audio = torch.zeros(self.clip_samples, dtype=torch.float32)
        audio[: wave.shape[0]] = wave
        skipped, pending[:] = list(pending), []
        return {"audio": audio, "path": path, "name": name, "num_valid": int(wave.shape[0]), "offset": offset,
                "skipped": skipped}

    def _fail_missing(self, shard: str, missing: list[tuple[str, str]], reason: str, pending: list[str]) -> None:
        """Records of ``shard`` the manifest lists but the shard did not yield: one warning naming them
        (source names), each counted (in ``pending``, reported with the next item)."""
        labels = [f"{shard}:{key}" for key, _ in missing]
        pending.extend(labels)
        new = [(label, name) for label, (_, name) in zip(labels, missing, strict=True) if label not in self._failed]
        for label, name in new:
            self._failed[label] = f"{name}: {reason}"
        if new:
            names = ", ".join(f"{label} ({name})" for label, name in new[:10]) + (" ..." if len(new) > 10 else "")
            message = (f"{type(self).__name__}: skipping {len(new)} records of '{shard}' under '{self.root}': "
                       f"{reason}; not read: {names}")
            warnings.warn(message, AudioSkipWarning, stacklevel=3)
            _log_to_run_files(message)

    def _fail(self, name: str, reason: str, pending: list[str]) -> None:
        pending.append(name)
        self._record_failure(name, reason)

    def _skip_context(self) -> str:
        return f" under '{self.root}'"


class _RecordLog:
    """Appends yielded record names to ``$TRANSCODER_SHARD_LOG/rank<r>-worker<w>.txt`` (debugging aid)."""

    def __init__(self, rank: int, worker: int) -> None:
        folder = os.environ.get(SHARD_LOG_ENV)
        self._path = os.path.join(folder, f"rank{rank}-worker{worker}.txt") if folder else None

    def write(self, path: str, name: str) -> None:
        if self._path is not None:
            with open(self._path, "a", encoding="utf-8") as handle:
                handle.write(f"{path}\t{name}\n")
