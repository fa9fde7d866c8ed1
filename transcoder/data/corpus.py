"""A corpus to tokenize: its utterances (from a folder, a Lhotse manifest or shards) in fixed work units.

:func:`open_corpus` lists the input once (a folder searched recursively, a single file, a Lhotse CutSet
or RecordingSet + SupervisionSet manifest, or a shard folder from ``scripts/prepare_shards.py``) through
the same dataset classes training uses, so a cut inside a recording is read from its own start for
its own duration and a shard record from its bytes in the tar. Items are numbered in the listing's
order and cut into work units of ``unit_size`` consecutive items: unit ``u`` is items
``[u * unit_size, (u + 1) * unit_size)``, whatever the number of processes, so a rerun finds the same units.

:class:`CorpusWindows` streams the model-window context segments of the items of some units (DataLoader
workers decode and resample; each worker takes every ``num_workers``-th item of a unit), in constant
memory per item (:class:`~transcoder.audio.windows.WindowSegmenter`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from transcoder.audio.windows import WindowSegmenter
from transcoder.data.audio_io import AUDIO_EXTENSIONS, AudioFile

__all__ = ["CorpusSource", "CorpusWindows", "open_corpus", "utterance_ids"]

_MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz")


def utterance_ids(rel_paths: list[str]) -> list[str]:
    """Ids of files listed relative to a folder: the path without its extension, or with it where two
    files of one folder share a stem (``a.wav`` and ``a.flac`` -> ``a.wav``, ``a.flac``)."""
    stems: dict[str, int] = {}
    for rel in rel_paths:
        stem = os.path.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    return [rel if stems[os.path.splitext(rel)[0]] > 1 else os.path.splitext(rel)[0] for rel in rel_paths]


@dataclass
class CorpusSource:
    """The items of a corpus input: ``ids[i]`` (the utterance id), ``sources[i]`` (where it comes from) and
    :meth:`open` (an :class:`AudioFile` restricted to the item's segment).

    ``description`` goes into the codes header (kind, path, item count): a rerun must match it.
    """

    kind: str
    path: str
    ids: list[str]
    sources: list[str]
    dataset: Any = None  # an AudioClipDataset with open_audio(i), or None for a single file
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.ids)

    def num_units(self, unit_size: int) -> int:
        return -(-self.num_items // unit_size)

    def open(self, index: int) -> AudioFile:
        """Item ``index`` opened for decoding (:class:`~transcoder.data.audio_io.AudioDecodeError` if unusable)."""
        if self.dataset is None:
            return AudioFile(self.path)
        return self.dataset.open_audio(index)


def open_corpus(path: str, *, extensions: tuple[str, ...] | list[str] = AUDIO_EXTENSIONS,
                supervisions: str | None = None, per_supervision: bool = True,
                audio_root: str | None = None) -> CorpusSource:
    """List a corpus input (see the module doc); the kind is told from ``path``.

    A folder holding ``shards.json`` is a shard folder; a ``.jsonl(.gz)`` file is a Lhotse manifest (a
    CutSet, or a RecordingSet with ``supervisions``); another folder is searched for ``extensions``; a
    file is encoded alone. Raises ``FileNotFoundError`` / ``ValueError`` naming the path.
    """
    from transcoder.data.shard_format import MANIFEST_NAME as SHARDS_MANIFEST

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARDS_MANIFEST)) or \
            os.path.basename(path) == SHARDS_MANIFEST:
        return _shards(path)
    if os.path.isfile(path) and path.endswith(_MANIFEST_SUFFIXES):
        return _lhotse(path, supervisions, per_supervision, audio_root)
    if supervisions is not None:
        raise ValueError(f"--supervisions needs a Lhotse RecordingSet manifest as input, got {path!r}")
    if os.path.isdir(path):
        from transcoder.data.audio_folder import AudioFolderDataset

        dataset = AudioFolderDataset(path, extensions=tuple(extensions))
        rel = list(dataset._paths)
        return CorpusSource("folder", os.path.abspath(path), utterance_ids(rel), rel, dataset,
                            {"kind": "folder", "path": os.path.abspath(path), "items": len(rel),
                             "extensions": dataset.extensions})
    if os.path.isfile(path):
        name = os.path.basename(path)
        return CorpusSource("file", os.path.abspath(path), utterance_ids([name]), [name], None,
                            {"kind": "file", "path": os.path.abspath(path), "items": 1})
    raise FileNotFoundError(f"input {path} is neither a file nor a folder")


def _lhotse(path: str, supervisions: str | None, per_supervision: bool, audio_root: str | None) -> CorpusSource:
    from transcoder.data.lhotse_cuts import LhotseCutsDataset, require_lhotse

    lhotse = require_lhotse("tokenizing a Lhotse manifest")
    manifest = lhotse.load_manifest_lazy(path) or lhotse.load_manifest(path)
    is_cuts = isinstance(manifest, lhotse.CutSet)
    if not is_cuts and not isinstance(manifest, lhotse.RecordingSet):
        raise ValueError(f"{path} holds a {type(manifest).__name__}: expected a CutSet or a RecordingSet manifest")
    if is_cuts and supervisions is not None:
        raise ValueError(f"--supervisions is for a RecordingSet; {path} is a CutSet (its cuts hold supervisions)")
    kind = "cuts" if is_cuts else "recordings"
    kwargs = {"cuts": path} if is_cuts else {"recordings": path, "supervisions": supervisions}
    dataset = LhotseCutsDataset(**kwargs, per_supervision=per_supervision and (is_cuts or supervisions is not None),
                                audio_root=audio_root)
    if dataset.num_files == 0:
        raise ValueError(f"{path}: no cut to encode (with per-supervision cuts, cuts without supervisions are "
                         "left out; pass --whole-cuts to encode whole cuts)")
    ids = [dataset._column("cut_id", i) for i in range(dataset.num_files)]
    sources = [dataset.path(i) for i in range(dataset.num_files)]
    return CorpusSource(kind, os.path.abspath(path), ids, sources, dataset,
                        {"kind": kind, "path": os.path.abspath(path), "items": len(ids),
                         "supervisions": os.path.abspath(supervisions) if supervisions else None,
                         "per_supervision": dataset.per_supervision, "audio_root": dataset.audio_root})


def _shards(path: str) -> CorpusSource:
    from transcoder.data.shard_index import ShardIndexDataset

    dataset = ShardIndexDataset(path)
    names = [dataset._column("name", i) for i in range(dataset.num_files)]
    stems = [os.path.splitext(n)[0] for n in names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # several cuts of one recording share its name: the record's index tells them apart
    ids = [stem if counts[stem] == 1 else f"{stem}@{i}" for i, stem in enumerate(stems)]
    sources = [f"{dataset.path(i)} ({name})" for i, name in enumerate(names)]
    root = dataset.manifest.root
    return CorpusSource("shards", root, ids, sources, dataset,
                        {"kind": "shards", "path": root, "items": len(ids),
                         "skipped_in_index": dataset.num_skipped})


class CorpusWindows(IterableDataset):
    """Stream the window segments of the items of ``units`` (for a DataLoader, ``batch_size=None``).

    Yields dicts, per item: ``{"kind": "window", "unit", "item", "segment": (L,) float32}`` for each window,
    then ``{"kind": "done", "unit", "item", "num_samples", "source_sample_rate"}`` or ``{"kind": "error",
    "unit", "item", "reason"}`` (windows sent before an error are to be dropped); after a worker's share
    of a unit: ``{"kind": "unit_end", "unit", "workers"}``. Loader worker ``w`` of ``W`` takes the items
    of each unit whose position in the unit is ``w`` modulo ``W``.
    """

    def __init__(self, source: CorpusSource, units: list[int], unit_size: int, sample_rate: int,
                 window_samples: int, hop_length: int, n_fft: int, pad_mode: str = "constant",
                 block_frames: int = 1 << 16) -> None:
        self.source, self.units, self.unit_size = source, list(units), int(unit_size)
        self.sample_rate, self.block_frames = int(sample_rate), int(block_frames)
        self.segmenter_args = (int(window_samples), int(hop_length), int(n_fft), pad_mode)

    def unit_items(self, unit: int) -> range:
        return range(unit * self.unit_size, min((unit + 1) * self.unit_size, self.source.num_items))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for unit in self.units:
            for position, item in enumerate(self.unit_items(unit)):
                if position % workers == worker:
                    yield from self._item(unit, item)
            yield {"kind": "unit_end", "unit": unit, "workers": workers}

    def _item(self, unit: int, item: int) -> Iterator[dict[str, Any]]:
        segmenter = WindowSegmenter(*self.segmenter_args)
        try:
            with self.source.open(item) as audio:
                rate = audio.info.sample_rate
                for block in audio.blocks(self.sample_rate, self.block_frames):
                    for segment in segmenter.push(block):
                        yield {"kind": "window", "unit": unit, "item": item, "segment": segment}
            if segmenter.num_samples == 0:
                raise ValueError(f"no audio samples at {self.sample_rate} Hz")
            for segment in segmenter.finish():
                yield {"kind": "window", "unit": unit, "item": item, "segment": segment}
        except Exception as err:  # noqa: BLE001 - one bad item is recorded, never stops the run
            text = getattr(err, "reason", None) or str(err)
            yield {"kind": "error", "unit": unit, "item": item,
                   "reason": f"{type(err).__name__}: {text}" if text else type(err).__name__}
            return
        yield {"kind": "done", "unit": unit, "item": item, "num_samples": int(segmenter.num_samples),
               "source_sample_rate": int(rate)}
