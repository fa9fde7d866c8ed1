"""Audio shards: WebDataset-style tar files plus a JSON manifest (``shards.json``).

Why plain tars and not Lhotse Shar: Python's ``tarfile`` writes and reads them (no extra dependency for
training), ``tar tf`` inspects them, the ``webdataset`` library reads them as they are, and the
stored audio stays the original file's bytes (FLAC stays FLAC, MP3 stays MP3). Lhotse Shar would
tie every training run to the optional ``lhotse`` extra.

Layout of a shard folder::

    shards.json              manifest: format, shards [{name, records, seconds, bytes, names_file}], totals,
                             skipped
    shard-000000.tar         records in order; each record is two members with one key:
        000000000.json       {"name": source name, "sample_rate", "frames", "seconds", "segment", "metadata"}
        000000000.flac       the source file's bytes, unchanged (any extension soundfile decodes)
    shard-000000.names.json  {"shard", "records": [[key, source name], ...]}: read only to name records a
                             damaged shard no longer yields
    shard-000001.tar
    ...

``segment`` is ``null`` or ``[first frame, frames]`` at the file's own rate: a Lhotse cut of a
longer recording stores the whole recording's bytes and the cut's frames. Keys are the record's
index in the whole set (9 digits, no dots, as WebDataset expects). Readers split a member name into key and
extension like WebDataset: at the first dot of its last path component (``a.b/c.flac`` -> ``a.b/c``, ``flac``).

Readers compare what a shard yields with the manifest's record count: Python's ``tarfile`` ends a shard
silently at a damaged member header, so the records after it are named (by source name, from the names
file) and counted as skipped (:meth:`ShardManifest.missing_records`).

Writes are atomic: a shard is written as ``<name>.partial`` and renamed when complete, the names file and
the manifest through a temporary file; a failed write (e.g. a full disk) removes what it left and raises an
``OSError`` naming the file and the free space.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from transcoder.utils.files import write_atomic, write_failure

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ShardError",
    "ShardInfo",
    "ShardManifest",
    "ShardRecord",
    "ShardWriter",
    "missing_reason",
    "read_records",
    "split_member_name",
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
    """One shard of a manifest: file name (relative to the manifest), records, audio seconds, bytes, and the
    file naming its records (None in manifests written before names files existed)."""

    name: str
    records: int
    seconds: float
    bytes: int
    names_file: str | None = None


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

    def record_keys(self, shard_index: int) -> list[str]:
        """Member keys of shard ``shard_index``'s records, in order (keys number the whole set's records)."""
        first = sum(info.records for info in self.shards[:shard_index])
        return [f"{first + i:09d}" for i in range(self.shards[shard_index].records)]

    def record_names(self, shard_index: int) -> list[str] | None:
        """Source names of shard ``shard_index``'s records from its names file; None if it has none or it
        cannot be read."""
        info = self.shards[shard_index]
        if info.names_file is None:
            return None
        try:
            with open(os.path.join(self.root, info.names_file), encoding="utf-8") as handle:
                records = json.load(handle)["records"]
            names = [str(name) for _, name in records]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return names if len(names) == info.records else None

    def missing_records(self, shard_index: int, read: set[int], start: int = 0,
                        select: Any = None) -> list[tuple[str, str]]:
        """``(key, source name)`` of the records of shard ``shard_index`` the manifest lists from ``start`` on
        (those for which ``select(index)`` is true) whose positions are not in ``read``; the name is
        ``"?"`` when the shard has no readable names file."""
        count = self.shards[shard_index].records
        missing = [i for i in range(start, count) if i not in read and (select is None or select(i))]
        if not missing:
            return []
        keys, names = self.record_keys(shard_index), self.record_names(shard_index)
        return [(keys[i], names[i] if names is not None else "?") for i in missing]

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
                names_file = entry.get("names_file")
                info = ShardInfo(name=str(entry["name"]), records=int(entry["records"]),
                                 seconds=float(entry["seconds"]), bytes=int(entry["bytes"]),
                                 names_file=str(names_file) if names_file is not None else None)
            except (KeyError, TypeError, ValueError) as err:
                raise ShardError(file, f"shards[{i}]={entry!r:.120}: expected name, records, seconds, bytes "
                                       f"({type(err).__name__}: {err})") from None
            if info.records <= 0:
                raise ShardError(file, f"shards[{i}].records={info.records}, expected a positive count")
            infos.append(info)
        return cls(root=os.path.dirname(os.path.abspath(file)), shards=infos, source=data.get("source") or {},
                   skipped=data.get("skipped") or [])

    def save(self, path: str | None = None) -> str:
        """Write the manifest (atomically) to ``path`` or ``root/shards.json``; returns the file.
        A failed write raises ``OSError`` naming the file and the free space and leaves no temporary file."""
        file = path or os.path.join(self.root, MANIFEST_NAME)
        data = {"format": MANIFEST_FORMAT, "num_records": self.num_records, "seconds": round(self.seconds, 3),
                "num_shards": len(self.shards), "shards": [asdict(s) for s in self.shards],
                "source": self.source, "skipped": self.skipped}
        write_atomic(file, lambda handle: handle.write(json.dumps(data, indent=1).encode("utf-8")), "manifest")
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

    A failed write (e.g. a full disk) raises ``OSError`` naming the file and the free space; leaving the
    ``with`` block by an exception removes the incomplete shard and writes no manifest (complete shards
    stay under their names).
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
        self._file: IO[bytes] | None = None
        self._name = ""
        self._names: list[list[str]] = []  # [key, source name] of the current shard's records
        self._records = 0
        self._seconds = 0.0
        self._count = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing: remove the incomplete shard; no manifest is written."""
        tar, file, self._tar, self._file = self._tar, self._file, None, None
        for closable in (tar, file):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass
        partial = os.path.join(self.root, self._name + ".partial")
        if self._name and os.path.exists(partial):
            os.unlink(partial)

    def add(self, audio: bytes, extension: str, meta: dict[str, Any]) -> str:
        """Append one record (``audio`` bytes stored as ``<key>.<extension>``); returns its key."""
        extension = extension.lower().lstrip(".")
        if not extension or "." in extension or "/" in extension:
            raise ValueError(f"ShardWriter: extension {extension!r} must be a plain file extension such as 'flac'")
        if self._tar is not None and (self._records >= self.max_records
                                      or self._tar.fileobj.tell() + len(audio) > self.max_bytes):
            self._finish_shard()
        partial = os.path.join(self.root, f"shard-{len(self.manifest.shards):06d}.tar.partial")
        key = f"{self._count:09d}"
        try:
            if self._tar is None:
                self._name = os.path.basename(partial).removesuffix(".partial")
                self._file = open(partial, "wb")  # noqa: SIM115 - closed in _finish_shard or abort
                self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
            _add_member(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
            _add_member(self._tar, f"{key}.{extension}", audio)
        except OSError as err:
            self.abort()
            raise write_failure(partial.removesuffix(".partial"), err, "shard") from err
        self._names.append([key, str(meta.get("name", key))])
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
        assert self._tar is not None and self._file is not None
        partial = os.path.join(self.root, self._name + ".partial")
        final = os.path.join(self.root, self._name)
        names_file = self._name.removesuffix(".tar") + ".names.json"
        names = {"shard": self._name, "records": self._names}
        try:
            self._tar.close()  # the end-of-archive blocks
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as err:
            self.abort()
            raise write_failure(partial.removesuffix(".partial"), err, "shard") from err
        try:
            write_atomic(os.path.join(self.root, names_file),
                         lambda handle: handle.write(json.dumps(names).encode("utf-8")), "names file")
        except OSError:
            self.abort()
            raise
        os.replace(partial, final)
        self.manifest.shards.append(ShardInfo(self._name, self._records, round(self._seconds, 3),
                                              os.path.getsize(final), names_file))
        self._tar, self._file, self._names, self._records, self._seconds = None, None, [], 0, 0.0


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
                member_key, ext = split_member_name(member.name)
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


def missing_reason(read: int, listed: int) -> str:
    """Why records are missing when a shard ended early without an error."""
    return (f"the shard ended after {read} of the {listed} records its manifest lists (a damaged tar member "
            f"header ends a tar early; or a truncated or replaced shard)")


def split_member_name(name: str) -> tuple[str, str]:
    """A member name -> ``(key, extension)``, split at the first dot of the last path component (as
    WebDataset does): ``dir.v2/utt.flac`` -> ``("dir.v2/utt", "flac")``."""
    folder, slash, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return folder + slash + stem, ext


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

