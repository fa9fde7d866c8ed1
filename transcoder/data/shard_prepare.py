"""Copy any :class:`~transcoder.data.base.AudioClipDataset`'s audio into shards (``scripts/prepare_shards.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from transcoder.data.audio_io import AudioDecodeError
from transcoder.data.base import AudioClipDataset
from transcoder.data.shard_format import ShardManifest, ShardWriter

__all__ = ["write_dataset_shards"]


def write_dataset_shards(dataset: AudioClipDataset, out_dir: str, *, max_records: int = 1000,
                         max_bytes: int = 1 << 30, source: dict[str, Any] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> ShardManifest:
    """Write every file of ``dataset`` (in its listing order) into ``out_dir/shard-NNNNNN.tar``.

    Each record is the file's stored bytes, unchanged (a FLAC stays a FLAC), plus a JSON member with
    the source name (relative to the dataset root), sample rate, frames, seconds, the segment for a
    cut of a longer recording, and the dataset's metadata. A file whose header cannot be read, and an
    entry the dataset's listing left out, is listed under ``"skipped"`` in the manifest with its reason.
    A failed write (e.g. a full disk) raises ``OSError`` naming the file and the free space, removes the
    incomplete shard and writes no manifest. Shuffle happens at training
    time, so records keep the listing order (neighbouring utterances of a speaker share a shard;
    training mixes shards, see :class:`~transcoder.data.shard_stream.ShardStreamDataset`).

    ``progress(done, total)`` is called after each file.
    """
    if os.path.exists(ShardManifest.locate(out_dir)):
        raise FileExistsError(f"{ShardManifest.locate(out_dir)} exists: write shards into a new folder")
    # Entries the listing already left out (symlink loops, names that are not UTF-8, ...) come first.
    skipped = [{"name": name, "reason": reason} for name, reason in dataset.skip_reasons.items()]
    started = time.time()
    with ShardWriter(out_dir, max_records=max_records, max_bytes=max_bytes, source=source) as writer:
        for index in range(dataset.num_files):
            path = dataset.path(index)
            try:
                with dataset.open_audio(index) as f:
                    info, segment = f.info, f.segment
                data = dataset.source_bytes(index)
            except (AudioDecodeError, OSError) as err:
                skipped.append({"name": path, "reason": getattr(err, "reason", str(err))})
                continue
            name = os.path.relpath(os.path.abspath(path), os.path.abspath(dataset.root))
            extension = os.path.splitext(path)[1].lstrip(".") or "audio"
            meta = {"name": name, "sample_rate": info.sample_rate, "frames": info.frames,
                    "seconds": round(info.duration, 4), "segment": list(segment) if segment else None,
                    "metadata": dataset.metadata(index)}
            writer.add(data, extension, meta)
            if progress is not None:
                progress(index + 1, dataset.num_files)
        writer.manifest.skipped = skipped
        writer.manifest.source = {**writer.manifest.source, "dataset": type(dataset).__name__,
                                  "root": dataset.root, "files": dataset.num_files,
                                  "written_seconds": round(time.time() - started, 1)}
    if not writer.manifest.shards:
        raise ValueError(f"no usable audio to shard: all {dataset.num_files} files failed; first: {skipped[:1]}")
    return writer.manifest
