"""Audio shards: WebDataset-style tar files plus a JSON manifest (``shards.json``).

Why plain tars and not Lhotse Shar: Python's ``tarfile`` writes and reads them (no extra dependency for
training), ``tar tf`` inspects them, the ``webdataset`` library reads them as they are, and the
stored audio stays the original file's bytes (FLAC stays FLAC, MP3 stays MP3). Lhotse Shar would
tie every training run to the optional ``lhotse`` extra.

Layout of a shard folder::

    shards.json              manifest: format, shards [{name, records, seconds, bytes}], totals, skipped
    shard-000000.tar         records in order; each record is two members with one key:
        000000000.json       {"name": source name, "sample_rate", "frames", "seconds", "segment", "metadata"}
        000000000.flac       the source file's bytes, unchanged (any extension soundfile decodes)
    shard-000001.tar
    ...

``segment`` is ``null`` or ``[first frame, frames]`` at the file's own rate: a Lhotse cut of a
longer recording stores the whole recording's bytes and the cut's frames. Keys are the record's
index in the whole set (9 digits, no dots, as WebDataset expects).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ShardError",
    "ShardInfo",
    "ShardManifest",
    "ShardRecord",
    "ShardWriter",
    "read_records",
]

MANIFEST_NAME = "shards.json"
MANIFEST_FORMAT = "transcoder-audio-shards/1"


class ShardError(RuntimeError):
    """A shard or its manifest is unusable; ``name`` says which file and ``reason`` why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a manifest: file name (relative to the manifest), records, audio seconds, bytes."""

    name: str
    records: int
    seconds: float
    bytes: int


@dataclass
class ShardManifest:
    """The manifest of a shard folder (``shards.json``): which shards, how many records and seconds.

    ``root`` is the folder holding the manifest; shard names are relative to it, so the folder can be
    moved or mounted elsewhere (e.g. the same path on every node of a cluster).
    """

    root: str
    shards: list[ShardInfo]
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def num_records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.shards)

    def path(self, shard_index: int) -> str:
        """Absolute path of shard ``shard_index``."""
        return os.path.join(self.root, self.shards[shard_index].name)

    @staticmethod
    def locate(path: str) -> str:
        """``path`` (a manifest file or the folder holding ``shards.json``) -> the manifest file."""
        path = str(path)
        return os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else path

    @classmethod
    def load(cls, path: str) -> ShardManifest:
        """Read ``path`` (file or folder); :class:`ShardError` naming the file and key if it is not valid."""
        file = cls.locate(path)
        if not os.path.isfile(file):
            raise ShardError(file, f"no shard manifest here; write one with scripts/prepare_shards.py "
                                   f"(a folder holding {MANIFEST_NAME} and shard-*.tar)")
        try:
            with open(file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise ShardError(file, f"unreadable manifest ({err})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ShardError(file, f"format={found!r}, expected {MANIFEST_FORMAT!r}")
        shards = data.get("shards")
        if not isinstance(shards, list) or not shards:
            raise ShardError(file, f"key 'shards' must be a non-empty list, got {shards!r:.80}")
        infos = []
        for i, entry in enumerate(shards):
            try:
                info = ShardInfo(name=str(entry["name"]), records=int(entry["records"]),
                                 seconds=float(entry["seconds"]), bytes=int(entry["bytes"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ShardError(file, f"shards[{i}]={entry!r:.120}: expected name, records, seconds, bytes "
                                       f"({type(err).__name__}: {err})") from None
            if info.records <= 0:
                raise ShardError(file, f"shards[{i}].records={info.records}, expected a positive count")
            infos.append(info)
        return cls(root=os.path.dirname(os.path.abspath(file)), shards=infos, source=data.get("source") or {},
                   skipped=data.get("skipped") or [])

    def save(self, path: str | None = None) -> str:
        """Write the manifest (atomically) to ``path`` or ``root/shards.json``; returns the file."""
        file = path or os.path.join(self.root, MANIFEST_NAME)
        data = {"format": MANIFEST_FORMAT, "num_records": self.num_records, "seconds": round(self.seconds, 3),
                "num_shards": len(self.shards), "shards": [asdict(s) for s in self.shards],
                "source": self.source, "skipped": self.skipped}
        tmp = f"{file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.replace(tmp, file)
        return file


@dataclass(frozen=True)
class ShardRecord:
    """One record read back from a shard.

    ``index``: position in its shard (0-based); ``key``: the member key; ``audio``: the stored bytes
    (None when the reader skipped the data); ``meta``: the JSON member; ``error``: why the record is
    malformed (then nothing else is set; the shard goes on with the next record).
    """

    index: int
    key: str
    audio_name: str
    audio: bytes | None
    meta: dict[str, Any]
    data_offset: int
    data_size: int
    error: str | None = None


class ShardWriter:
    """Write records into ``shard-NNNNNN.tar`` files under ``root``, starting a new shard once the current
    one holds ``max_records`` records or ``max_bytes`` bytes; :meth:`close` returns the manifest.

    Example::

        with ShardWriter("shards/train", max_records=1000) as writer:
            writer.add(flac_bytes, "flac", {"name": "a.flac", "sample_rate": 16000, "frames": 32000})
        manifest = writer.manifest
    """

    def __init__(self, root: str, *, max_records: int = 1000, max_bytes: int = 1 << 30,
                 source: dict[str, Any] | None = None) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError(f"ShardWriter: max_records={max_records}, max_bytes={max_bytes}: expected >= 1")
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.max_records, self.max_bytes = max_records, max_bytes
        self.manifest = ShardManifest(root=os.path.abspath(self.root), shards=[], source=dict(source or {}))
        self._tar: tarfile.TarFile | None = None
        self._name = ""
        self._records = 0
        self._seconds = 0.0
        self._count = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, audio: bytes, extension: str, meta: dict[str, Any]) -> str:
        """Append one record (``audio`` bytes stored as ``<key>.<extension>``); returns its key."""
        extension = extension.lower().lstrip(".")
        if not extension or "." in extension or "/" in extension:
            raise ValueError(f"ShardWriter: extension {extension!r} must be a plain file extension such as 'flac'")
        if self._tar is not None and (self._records >= self.max_records
                                      or self._tar.fileobj.tell() + len(audio) > self.max_bytes):
            self._finish_shard()
        if self._tar is None:
            self._name = f"shard-{len(self.manifest.shards):06d}.tar"
            self._tar = tarfile.open(os.path.join(self.root, self._name + ".partial"), "w", format=tarfile.USTAR_FORMAT)
        key = f"{self._count:09d}"
        _add_member(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        _add_member(self._tar, f"{key}.{extension}", audio)
        self._count += 1
        self._records += 1
        self._seconds += float(meta.get("seconds", 0.0))
        return key

    def close(self) -> ShardManifest:
        """Finish the last shard and write ``shards.json``."""
        if self._tar is not None:
            self._finish_shard()
        if self.manifest.shards:
            self.manifest.save()
        return self.manifest

    def _finish_shard(self) -> None:
        assert self._tar is not None
        self._tar.close()
        partial = os.path.join(self.root, self._name + ".partial")
        final = os.path.join(self.root, self._name)
        os.replace(partial, final)
        self.manifest.shards.append(ShardInfo(self._name, self._records, round(self._seconds, 3),
                                              os.path.getsize(final)))
        self._tar, self._records, self._seconds = None, 0, 0.0


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def read_records(path: str, *, start: int = 0, select: Any = None, read_audio: bool = True) -> Iterator[ShardRecord]:
    """The records of shard ``path`` in order, from record ``start`` on.

    Records before ``start`` and those for which ``select(index)`` is false are passed over by reading
    their headers only (the tar data is skipped with a seek). ``read_audio=False`` yields records
    without their audio bytes (``audio is None``; offsets still set), e.g. to build an index.

    A record that is not one JSON object member plus one audio member with the same key is yielded
    with ``error`` set, and reading goes on.

    Raises:
        ShardError: the shard cannot be opened or is truncated (the records before were yielded).
    """
    name = os.path.basename(path)
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as err:
        raise ShardError(name, f"cannot open as a tar file ({type(err).__name__}: {err})") from None
    with tar:
        index = -1
        group: dict[str, tarfile.TarInfo] = {}
        key = None
        try:
            for member in _members(tar):
                member_key, _, ext = member.name.partition(".")
                if member_key != key:
                    if key is not None:
                        index += 1
                        if index >= start and (select is None or select(index)):
                            yield _record(tar, name, index, key, group, read_audio)
                    key, group = member_key, {}
                group[ext] = member
            if key is not None:
                index += 1
                if index >= start and (select is None or select(index)):
                    yield _record(tar, name, index, key, group, read_audio)
        except (OSError, tarfile.TarError, EOFError) as err:
            raise ShardError(name, f"unreadable after record {index} ({type(err).__name__}: {err})") from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members in order without keeping them all (``TarFile.members`` grows with every ``next()``)."""
    while True:
        member = tar.next()
        if member is None:
            return
        tar.members.clear()
        if member.isfile():
            yield member


def _record(tar: tarfile.TarFile, shard: str, index: int, key: str, group: dict[str, tarfile.TarInfo],
            read_audio: bool) -> ShardRecord:
    def bad(reason: str) -> ShardRecord:
        return ShardRecord(index, key, "", None, {}, 0, 0, error=reason)

    audio_exts = [ext for ext in group if ext != "json"]
    if "json" not in group or len(audio_exts) != 1:
        return bad(f"expected {key}.json and one audio member, found {[f'{key}.{e}' for e in sorted(group)]}")
    audio_member = group[audio_exts[0]]
    meta_file = tar.extractfile(group["json"])
    try:
        meta = json.loads(meta_file.read().decode("utf-8")) if meta_file else None
    except ValueError as err:
        return bad(f"{key}.json is not valid JSON ({err})")
    if not isinstance(meta, dict):
        return bad(f"{key}.json must hold a JSON object, not {type(meta).__name__}")
    audio = None
    if read_audio:
        handle = tar.extractfile(audio_member)
        audio = handle.read() if handle else b""
        if len(audio) != audio_member.size:
            raise tarfile.ReadError(f"unexpected end of data in {audio_member.name}")
    return ShardRecord(index, key, audio_member.name, audio, meta, audio_member.offset_data, audio_member.size)

