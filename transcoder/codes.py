"""On-disk format of token codes: packed shards with an index, a folder of ``.npy`` files, or one ``.npz``.

Corpus layout, format version 4 (written by ``scripts/tokenize_audio.py encode``)::

    out/codes.json                  header (one per folder, written first, identical for every rank)
    out/index/unit-000000.json      index of one finished work unit (its presence marks the unit done)
    out/shards/codes-000000.npy     --layout packed: the unit's codes, utterances concatenated along rows
    out/spk1/a.npy                  --layout files: one (rows, Nf) array per utterance, at <id>.npy

Header ``codes.json``::

    {"format": "audio-bsq-vit-codes", "format_version": 3, "layout": "packed" | "files",
     "sample_rate", "hop_length", "n_mels", "window_frames", "patch_size": [pt, pf],
     "grid_per_window": [rows per window, Nf], "bits", "model_bits", "codes_dtype", "tokens_per_second", "bitrate",
     "checkpoint", "checkpoint_sha256", "weights",
     "input": {"kind": "folder" | "cuts" | "recordings" | "shards", ...}, "num_units", "unit_size"}

``bits`` is the width of the stored codes (values in ``[0, 2^bits)``, an LM's vocabulary ``2^bits``);
``model_bits`` is the checkpoint's bits per token. They differ for codes encoded with ``--bits k`` by a
model trained with nested bits (the first ``k`` bits of every token; that checkpoint decodes them);
``tokens_per_second`` and ``bitrate`` are those of the stored codes. A folder without ``model_bits``
(written before it existed) holds full-width codes.

Index ``index/unit-NNNNNN.json`` (one JSON object)::

    {"unit": N, "rank": r, "world_size": W, "shard": "shards/codes-NNNNNN.npy" | null, "rows": total rows,
     "sha256": {"<array file>": hex SHA-256, ...},
     "utterances": [{"id", "source", "shard" | "file", "offset", "rows", "valid_rows", "num_samples",
                     "sample_rate", "source_sample_rate", ...}],
     "failed": [{"id", "source", "reason"}], "seconds": audio seconds encoded}

Folders are self-checking (:mod:`transcoder.codes_check`): readers check the header's geometry and widths,
every index's unit number, rows (the ceil rule from ``num_samples``), offsets (no overlap, no gap) and,
on first use of each array, its dtype, shape and SHA-256; :attr:`CodesIndex.missing_units` names units
without an index (``num_units`` in the header says how many exist). Format 3 folders (no ``sha256``)
still read, with every check but the checksums.

A packed shard is a plain ``.npy`` ``(rows, Nf)`` in the smallest unsigned dtype holding ``bits``
(``np.load(path, mmap_mode="r")`` reads it without loading it). Utterance ``u`` is rows
``[offset, offset + rows)`` of its shard; ``rows`` covers whole model windows (the last window is
zero-padded audio) and ``valid_rows = ceil(ceil(num_samples / hop_length) / pt)`` are the rows that
cover real audio: a language model reads ``[offset, offset + valid_rows)``, a decoder reads all
``rows`` and trims the waveform to ``num_samples`` (at ``sample_rate``, the tokenizer's rate).
An utterance ``id`` is a relative POSIX path without ``..``, ``.`` or empty parts (a folder input's
file path without its extension, a cut id, a shard record's source name); decoders write
``<id>.wav``. Work units are fixed by the input and ``unit_size`` alone, so a rerun with any number of
processes finds the same units; each unit's codes are written to a temporary name and renamed, then
its index likewise: a unit without an index file is unfinished and is redone.

Older folders (``manifest.json`` beside per-file ``.npy``, format versions 1 and 2) read through the
same :class:`CodesIndex`. A single self-describing file is a ``.npz`` with the array ``indices`` and a
JSON string ``meta`` (:meth:`CodesFile.save` / :meth:`CodesFile.load`, readable without pickle).

Codes are never trusted: :func:`check_codes` rejects float or bool arrays before any integer cast,
a row count other than the index's, values outside ``[0, 2^bits)``, a width the checkpoint cannot
decode (:meth:`CodesSpec.at_bits`), and a ``num_samples`` longer than the codes cover. Errors name
the file, the key or dtype, and what was expected.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from transcoder.codes_check import array_problems, header_problems, unit_problems
from transcoder.utils.files import free_space, replace_atomically, sha256_of_file
from transcoder.utils.names import NAME_MAX_BYTES, fit_name

__all__ = [
    "CODES_FORMAT",
    "FORMAT_VERSION",
    "HEADER_NAME",
    "INDEX_DIR",
    "LAYOUTS",
    "MANIFEST_NAME",
    "SHARD_DIR",
    "CodesFile",
    "CodesFormatError",
    "CodesIndex",
    "CodesSpec",
    "DiskFullError",
    "UnitWriter",
    "Utterance",
    "atomic_write",
    "check_codes",
    "check_header",
    "check_id",
    "check_manifest_model",
    "codes_dtype",
    "find_codes_root",
    "find_manifest",
    "manifest_model_bits",
    "manifest_spec",
    "read_header",
    "read_manifest",
    "unit_index_path",
    "valid_rows",
    "write_header",
    "write_manifest",
]

CODES_FORMAT = "audio-bsq-vit-codes"
FORMAT_VERSION = 4
#: Oldest corpus-layout header this reader reads (version 3 has no array checksums).
OLDEST_HEADER_VERSION = 3
MANIFEST_VERSION = 2  # the per-file manifest.json layout: versions 1 and 2
MANIFEST_NAME = "manifest.json"
HEADER_NAME = "codes.json"
INDEX_DIR = "index"
SHARD_DIR = "shards"
LAYOUTS = ("packed", "files")
_LEGACY_FORMAT = "audio-bsq-vit-codes/1"  # version 1: the format string carried the version


class CodesFormatError(ValueError):
    """A codes file or manifest that cannot be used; the message names the file and what is wrong."""


def codes_dtype(bits: int) -> np.dtype:
    """Smallest numpy integer dtype that holds ``bits``-bit codes (uint16 / uint32 / int64)."""
    if bits <= 16:
        return np.dtype(np.uint16)
    if bits <= 32:
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class CodesSpec:
    """What a model's codes look like (from :attr:`transcoder.api.AudioTokenizer.codes_spec`).

    ``bits`` is the width of the codes checked (values in ``[0, 2^bits)``); ``model_bits`` the checkpoint's
    width when the codes keep fewer bits (``None``: the same as ``bits``); ``nested``: the checkpoint was
    trained with nested bits, so it decodes codes of any ``1..model_bits`` bits (:meth:`at_bits`).
    """

    sample_rate: int
    hop_length: int
    n_mels: int
    bits: int
    patch_size: tuple[int, int]
    time_rows_per_window: int  # time rows of tokens per model window
    n_freq_patches: int
    window_samples: int  # samples per model window
    model_bits: int | None = None
    nested: bool = False

    @property
    def full_bits(self) -> int:
        """The checkpoint's bits per token."""
        return self.bits if self.model_bits is None else self.model_bits

    def at_bits(self, bits: Any, where: str | Path = "codes") -> CodesSpec:
        """This model's spec for codes of their first ``bits`` bits.

        Raises :class:`CodesFormatError` naming ``where`` for a width outside ``1..full_bits``, or fewer
        bits than the checkpoint's on a model trained without nested bits.
        """
        full = self.full_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= full:
            raise CodesFormatError(f"{where}: codes of bits={bits!r}, but the checkpoint makes {full}-bit codes "
                                   f"(expected 1..{full})")
        if bits < full and not self.nested:
            raise CodesFormatError(f"{where}: {bits}-bit codes, but the checkpoint was trained for {full}-bit codes "
                                   "only; fewer bits need a model trained with model.params.nested_bits")
        return replace(self, bits=bits, model_bits=None if bits == full else full)

    def covered_samples(self, rows: int) -> int:
        """Samples covered by ``rows`` time rows of tokens (whole windows)."""
        return math.ceil(rows / self.time_rows_per_window) * self.window_samples


@dataclass
class CodesFile:
    """Codes of one signal with what is needed to decode them.

    Attributes:
        indices: ``(n_time_tokens, n_freq_patches)`` integer codes.
        num_samples: length of the original signal at ``sample_rate`` (decoding trims to it).
        sample_rate: the tokenizer's sample rate.
        bits: bits per token of ``indices`` (values in ``[0, 2^bits)``).
        source: where the audio came from (informative).
        format_version: version of the format the file was read from.
        extra: other metadata (manifest entry fields, checkpoint hash ...).
        model_bits: the checkpoint's bits per token when the codes keep only the first ``bits``
            (nested bits); ``None``: the same as ``bits``.
    """

    indices: np.ndarray
    num_samples: int
    sample_rate: int
    bits: int
    source: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    model_bits: int | None = None

    @property
    def full_bits(self) -> int:
        """Bits per token of the checkpoint that made the codes."""
        return self.bits if self.model_bits is None else self.model_bits

    def save(self, path: str | Path) -> Path:
        """Write a self-describing ``.npz`` (``indices`` in the smallest dtype, ``meta`` as JSON)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise CodesFormatError(f"{path}: a codes file is written as .npz, got suffix {path.suffix!r}")
        indices = _integer_codes(self.indices, path)
        meta = {"format": CODES_FORMAT, "format_version": FORMAT_VERSION, "num_samples": int(self.num_samples),
                "sample_rate": int(self.sample_rate), "bits": int(self.bits), "model_bits": int(self.full_bits),
                "source": self.source,
                "shape": list(indices.shape), **self.extra}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, indices=indices.astype(codes_dtype(self.bits)), meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path, manifest: dict[str, Any] | None = None,
             manifest_path: str | Path | None = None) -> CodesFile:
        """Read a ``.npz`` written by :meth:`save`, or a ``.npy`` of a manifest folder.

        For a ``.npy`` the metadata come from ``manifest`` (read by :func:`read_manifest`; found upwards
        from the file when not given). Raises :class:`CodesFormatError` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"codes file {path} does not exist")
        if path.suffix == ".npz":
            return cls._load_npz(path)
        if manifest is None and manifest_path is None:
            root = find_codes_root(path.parent)
            if root is not None and (root / HEADER_NAME).is_file():
                index = CodesIndex.open(root)
                rel = _relative(path, root)
                for utt in index:
                    if utt.file == rel:
                        return index.codes_file(utt)
                raise CodesFormatError(f"{path}: not listed in the index of {root} (as {rel!r})")
        if manifest is None:
            manifest_path = find_manifest(path.parent) if manifest_path is None else Path(manifest_path)
            if manifest_path is None:
                raise CodesFormatError(f"{path}: no {MANIFEST_NAME} next to it or above it (it holds num_samples)")
            manifest = read_manifest(manifest_path)
            root = Path(manifest_path).parent
        else:
            root = Path(manifest_path).parent if manifest_path is not None else path.parent
        rel = _relative(path, root)
        entry = manifest["files"].get(rel)
        if entry is None:
            raise CodesFormatError(f"{path}: not listed under 'files' of the manifest in {root} (as {rel!r})")
        if not isinstance(entry, dict):
            raise CodesFormatError(f"manifest in {root}: files[{rel!r}] must be an object, got {entry!r}")
        indices = _load_array(path)
        num_samples = _positive_int(entry.get("num_samples"), f"manifest in {root}: files[{rel!r}].num_samples")
        return cls(indices, num_samples, int(manifest["sample_rate"]), int(manifest["bits"]), entry.get("source"),
                   int(manifest["format_version"]), dict(entry))

    @classmethod
    def _load_npz(cls, path: Path) -> CodesFile:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "indices" not in data or "meta" not in data:
                    raise CodesFormatError(f"{path}: expected arrays 'indices' and 'meta', found {sorted(data.files)}")
                indices, meta_text = data["indices"], str(data["meta"])
        except (OSError, ValueError) as err:
            if isinstance(err, CodesFormatError):
                raise
            raise CodesFormatError(f"{path}: cannot be read as a codes .npz ({err})") from err
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError as err:
            raise CodesFormatError(f"{path}: 'meta' is not JSON ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != CODES_FORMAT:
            raise CodesFormatError(f"{path}: meta.format must be {CODES_FORMAT!r}, got {meta!r:.80}")
        version = meta.get("format_version")
        if not isinstance(version, int) or not 2 <= version <= FORMAT_VERSION:
            raise CodesFormatError(f"{path}: format_version {version!r} is not supported "
                                   f"(this reader: 2..{FORMAT_VERSION})")
        known = {"format", "format_version", "num_samples", "sample_rate", "bits", "model_bits", "source", "shape"}
        shape = meta.get("shape")
        if shape is not None and list(indices.shape) != shape:
            raise CodesFormatError(f"{path}: indices have shape {list(indices.shape)} but meta.shape is {shape}")
        bits = _positive_int(meta.get("bits"), f"{path}: meta.bits")
        model_bits = meta.get("model_bits", bits)
        if _positive_int(model_bits, f"{path}: meta.model_bits") < bits:
            raise CodesFormatError(f"{path}: meta.bits={bits} exceeds meta.model_bits={model_bits}")
        return cls(indices, _positive_int(meta.get("num_samples"), f"{path}: meta.num_samples"),
                   _positive_int(meta.get("sample_rate"), f"{path}: meta.sample_rate"),
                   bits, meta.get("source"), version,
                   {k: v for k, v in meta.items() if k not in known}, None if model_bits == bits else model_bits)

    def checked(self, spec: CodesSpec, where: str | Path) -> np.ndarray:
        """The indices as int64 ``(rows, n_freq_patches)`` after :func:`check_codes` against ``spec`` at this
        file's width (``spec`` is the model's, any width: :meth:`CodesSpec.at_bits`)."""
        if self.sample_rate != spec.sample_rate or self.full_bits != spec.full_bits:
            raise CodesFormatError(f"{where}: codes of a {self.full_bits}-bit model at {self.sample_rate} Hz, but "
                                   f"the checkpoint makes {spec.full_bits}-bit codes at {spec.sample_rate} Hz")
        shape = self.extra.get("shape")
        rows = int(shape[0]) if isinstance(shape, list) and shape else None
        return check_codes(self.indices, spec.at_bits(self.bits, where), where, num_samples=self.num_samples,
                           expected_rows=rows)


def check_codes(indices: np.ndarray, spec: CodesSpec, where: str | Path, num_samples: int | None = None,
                expected_rows: int | None = None) -> np.ndarray:
    """Validate codes read from a file and return them as int64 ``(rows, n_freq_patches)``.

    Raises :class:`CodesFormatError` naming ``where`` for: a float or bool dtype (checked before any
    integer cast, so ``3.0`` or ``0.7`` never become codes), a shape other than ``(rows, Nf)``, a row
    count other than ``expected_rows`` (the manifest's), values outside ``[0, 2^bits)``, or a
    ``num_samples`` that is not positive or longer than the codes cover.
    """
    indices = _integer_codes(indices, where)
    if indices.ndim != 2 or indices.shape[1] != spec.n_freq_patches or indices.shape[0] == 0:
        raise CodesFormatError(f"{where}: codes must be (n_time_tokens > 0, {spec.n_freq_patches}), "
                               f"got shape {tuple(indices.shape)}")
    rows = indices.shape[0]
    if expected_rows is not None and rows != expected_rows:
        raise CodesFormatError(f"{where}: {rows} rows of codes but the manifest says {expected_rows}")
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= 2**spec.bits:
        raise CodesFormatError(f"{where}: codes must lie in [0, 2^{spec.bits}), got min {lo} max {hi}")
    if num_samples is not None:
        covered = spec.covered_samples(rows)
        if not 0 < num_samples <= covered:
            raise CodesFormatError(f"{where}: num_samples={num_samples} but {rows} rows of codes cover "
                                   f"{covered} samples (expected 1..{covered})")
    return indices.astype(np.int64)


def _integer_codes(indices: Any, where: str | Path) -> np.ndarray:
    array = np.asarray(indices)
    if array.dtype.kind not in "iu":
        raise CodesFormatError(f"{where}: codes must have an integer dtype, got {array.dtype} "
                               "(float and bool codes are refused, even with integral values)")
    return array


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CodesFormatError(f"{path}: cannot be read as a .npy array ({err})") from err


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CodesFormatError(f"{what} must be a positive integer, got {value!r}")
    return value


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError as err:
        raise CodesFormatError(f"{path} is not inside the manifest's folder {root}") from err


# --------------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------------


def find_manifest(start: str | Path) -> Path | None:
    """``manifest.json`` in ``start`` or the nearest folder above it, or ``None``."""
    start = Path(start)
    for folder in [start, *start.parents]:
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (``format`` and ``format_version`` set here) as ``folder/manifest.json``."""
    path = Path(folder) / MANIFEST_NAME
    data = {"format": CODES_FORMAT, "format_version": MANIFEST_VERSION, **manifest}
    if not isinstance(data.get("files"), dict):
        raise CodesFormatError(f"{path}: manifest 'files' must be an object, got {type(data.get('files')).__name__}")
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))
    return path


_REQUIRED = {"sample_rate": int, "bits": int, "hop_length": int, "n_mels": int, "patch_size": list, "files": dict}


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest; returns it with ``format_version`` set (1 for unversioned files).

    Raises :class:`CodesFormatError` (one line, naming the file) for unreadable JSON, a JSON value that
    is not an object, an unknown format or version, or a missing / mistyped required key.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CodesFormatError(f"manifest {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise CodesFormatError(f"manifest {path}: expected a JSON object, got a JSON {type(data).__name__}")
    fmt, version = data.get("format"), data.get("format_version")
    if version is None and fmt == _LEGACY_FORMAT:
        version = 1
    elif fmt != CODES_FORMAT:
        raise CodesFormatError(f"manifest {path}: format {fmt!r}, expected {CODES_FORMAT!r} (or {_LEGACY_FORMAT!r})")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MANIFEST_VERSION:
        raise CodesFormatError(f"manifest {path}: format_version {version!r} is not supported "
                               f"(this reader: 1..{MANIFEST_VERSION}; version {FORMAT_VERSION} folders have "
                               f"{HEADER_NAME})")
    for key, kind in _REQUIRED.items():
        if key not in data:
            raise CodesFormatError(f"manifest {path}: missing key {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise CodesFormatError(f"manifest {path}: {key!r} must be a JSON {kind.__name__}, got {data[key]!r:.60}")
    return {**data, "format_version": version}


def check_manifest_model(manifest: dict[str, Any], spec: CodesSpec, where: str | Path,
                         checkpoint_sha256: str | None = None, checkpoint_path: str | Path | None = None) -> str | None:
    """Raise :class:`CodesFormatError` if the manifest's model settings differ from ``spec``.

    Returns a warning text when the codes were made with another checkpoint file of the same
    architecture (``checkpoint_sha256`` differs), naming both checkpoint paths (the manifest's
    ``checkpoint`` and ``checkpoint_path``), else ``None``; the caller decides whether to refuse.
    The codes' width (``bits``) may be fewer than the checkpoint's (``model_bits``) for a model trained
    with nested bits (:meth:`CodesSpec.at_bits`; :func:`manifest_spec` gives the CodesSpec to check them with).
    """
    checks = {"sample_rate": spec.sample_rate, "model_bits": spec.full_bits, "patch_size": list(spec.patch_size),
              "n_mels": spec.n_mels, "hop_length": spec.hop_length}
    for key, value in checks.items():
        found = manifest_model_bits(manifest) if key == "model_bits" else manifest.get(key)
        if found != value:
            raise CodesFormatError(f"manifest {where}: {key}={found!r} but the checkpoint has "
                                   f"{value!r}: these codes come from another model")
    spec.at_bits(manifest.get("bits"), f"manifest {where}")
    sha = manifest.get("checkpoint_sha256")
    if sha and checkpoint_sha256 and sha != checkpoint_sha256:
        made_with = manifest.get("checkpoint") or "an unnamed checkpoint"
        this = f"{checkpoint_path} " if checkpoint_path is not None else ""
        return (f"the codes in {where} were made with {made_with} (sha256 {sha[:12]}...), not with this "
                f"checkpoint {this}(sha256 {checkpoint_sha256[:12]}...)")
    return None


def manifest_model_bits(manifest: dict[str, Any]) -> Any:
    """The checkpoint's bits per token of a header / manifest: ``model_bits``, or ``bits`` for folders
    written before the key existed (full-width codes)."""
    return manifest.get("model_bits", manifest.get("bits"))


def manifest_spec(manifest: dict[str, Any], spec: CodesSpec, where: str | Path) -> CodesSpec:
    """``spec`` (the checkpoint's) at the width of a folder's codes (its header's ``bits``), after
    :func:`check_manifest_model`'s model checks."""
    check_manifest_model(manifest, spec, where)
    return spec.at_bits(manifest.get("bits"), f"manifest {where}")


# --------------------------------------------------------------------------------------------------
# corpus layout (format version 3): header, per-unit index, packed shards or per-utterance files
# --------------------------------------------------------------------------------------------------


class DiskFullError(OSError):
    """A write ran out of space; the message names the file and the space left on its filesystem."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, fsync, then rename.

    Nothing incomplete ever carries the final name: on any error the temporary file
    (``.<name>.tmp-<pid>``) is removed. Out of space (``ENOSPC`` / ``EDQUOT``) raises
    :class:`DiskFullError` naming the file and the free space; other errors propagate unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker = f".tmp-{os.getpid()}"
        replace_atomically(path, write, path.with_name(fit_name(f".{path.name}", marker, NAME_MAX_BYTES) + marker))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                free = free_space(path.parent)
            except OSError:
                free = "free space unknown"
            raise DiskFullError(err.errno, f"no space left on device writing {path} ({free})") from err
        raise
    return path


def _write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=1).encode()))


def _write_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def valid_rows(num_samples: int, hop_length: int, patch_t: int) -> int:
    """Rows of codes that cover real audio: ``ceil(ceil(num_samples / hop_length) / patch_t)``."""
    frames = -(-int(num_samples) // int(hop_length))
    return -(-frames // int(patch_t))


def check_id(key: Any, where: str | Path) -> str:
    """An utterance id usable as a relative output path, or :class:`CodesFormatError` naming the key.

    Refused: non-strings, empty ids, absolute paths, backslashes, NUL, and ``.``, ``..`` or empty parts.
    """
    if not isinstance(key, str) or not key:
        raise CodesFormatError(f"{where}: utterance id {key!r} must be a non-empty string")
    parts = key.split("/")
    if (key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts)
            or PurePosixPath(key).is_absolute() or (len(key) > 1 and key[1] == ":")):
        raise CodesFormatError(f"{where}: utterance id {key!r} is not a plain relative path (absolute paths, "
                               "'..', '.', empty parts and backslashes are refused): it cannot name an output file")
    return key


def unit_index_path(folder: str | Path, unit: int) -> Path:
    """``folder/index/unit-NNNNNN.json``: present exactly when unit ``unit`` is finished."""
    return Path(folder) / INDEX_DIR / f"unit-{int(unit):06d}.json"


def unit_shard_name(unit: int) -> str:
    """Relative name of a unit's packed shard, ``shards/codes-NNNNNN.npy``."""
    return f"{SHARD_DIR}/codes-{int(unit):06d}.npy"


#: Header keys that must agree between runs writing into the same folder.
_RUN_KEYS = ("layout", "sample_rate", "hop_length", "n_mels", "patch_size", "bits", "model_bits", "codes_dtype",
             "window_frames", "input", "num_units", "unit_size", "weights")


def read_header(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/codes.json``; :class:`CodesFormatError` naming the file and key."""
    path = Path(folder) / HEADER_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CodesFormatError(f"codes header {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("format") != CODES_FORMAT:
        raise CodesFormatError(f"codes header {path}: format must be {CODES_FORMAT!r}, got {data!r:.80}")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or not OLDEST_HEADER_VERSION <= version <= FORMAT_VERSION:
        raise CodesFormatError(f"codes header {path}: format_version {version!r} is not supported "
                               f"(this reader: {OLDEST_HEADER_VERSION}..{FORMAT_VERSION})")
    for key, kind in {**{k: v for k, v in _REQUIRED.items() if k != "files"}, "layout": str,
                      "num_units": int, "grid_per_window": list}.items():
        if key not in data:
            raise CodesFormatError(f"codes header {path}: missing key {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise CodesFormatError(f"codes header {path}: {key!r} must be a JSON {kind.__name__}, "
                                   f"got {data[key]!r:.60}")
    if data["layout"] not in LAYOUTS:
        raise CodesFormatError(f"codes header {path}: layout {data['layout']!r}, expected one of {LAYOUTS}")
    model_bits = manifest_model_bits(data)
    if isinstance(model_bits, bool) or not isinstance(model_bits, int) or not 1 <= data["bits"] <= model_bits:
        raise CodesFormatError(f"codes header {path}: bits={data['bits']!r} and model_bits={model_bits!r}: expected "
                               "integers with 1 <= bits <= model_bits")
    problems = header_problems(data, path)
    if problems:
        raise CodesFormatError(problems[0])
    return data


def check_header(existing: dict[str, Any], wanted: dict[str, Any], where: str | Path) -> None:
    """Refuse to add ``wanted``'s codes to a folder whose header is ``existing``.

    Another checkpoint (by SHA-256) is named with both files; any other setting that differs
    (layout, input, unit size, model shape) is named by its key.
    """
    old_sha, new_sha = existing.get("checkpoint_sha256"), wanted.get("checkpoint_sha256")
    if old_sha != new_sha:
        raise CodesFormatError(
            f"{where} holds codes of checkpoint {existing.get('checkpoint')} (sha256 {str(old_sha)[:12]}...), "
            f"this run uses {wanted.get('checkpoint')} (sha256 {str(new_sha)[:12]}...): codes of two checkpoints "
            "must not mix in one folder; use another output folder")
    for key in _RUN_KEYS:
        old, new = ((manifest_model_bits(existing), manifest_model_bits(wanted)) if key == "model_bits"
                    else (existing.get(key), wanted.get(key)))
        if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
            raise CodesFormatError(f"{where} was written with {key}={old!r:.200}, this run has "
                                   f"{key}={new!r:.200}: rerun with the same settings to resume, or use "
                                   "another output folder")


def write_header(folder: str | Path, header: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/codes.json`` (format fields set here), or check an existing one agrees (:func:`check_header`).

    Every rank of a run may call it: they write the same bytes, atomically.
    """
    folder = Path(folder)
    data = {"format": CODES_FORMAT, "format_version": FORMAT_VERSION, **header}
    if data.get("layout") not in LAYOUTS:
        raise CodesFormatError(f"layout must be one of {LAYOUTS}, got {data.get('layout')!r}")
    legacy = folder / MANIFEST_NAME
    if legacy.is_file():
        old = read_manifest(legacy)
        old_header = {"checkpoint": old.get("checkpoint"), "checkpoint_sha256": old.get("checkpoint_sha256")}
        if old_header["checkpoint_sha256"] != data.get("checkpoint_sha256"):
            check_header(old_header, data, folder)
        raise CodesFormatError(f"{folder} holds codes in the older per-file layout ({MANIFEST_NAME}); write the new "
                               "layout into another folder")
    path = folder / HEADER_NAME
    if path.is_file():
        check_header(read_header(folder), data, folder)
        return data
    _write_json(path, data)
    return data


class UnitWriter:
    """Writes the codes of one work unit; :meth:`close` makes the unit's index, which marks it done.

    ``layout="packed"``: codes are kept in memory (a unit's codes are small: 18-bit tokens at 50 tokens/s
    are 720 kB per hour) and written as one shard at :meth:`close`. ``layout="files"``: each utterance is
    written at once to ``<id>.npy``. Every file is written atomically (:func:`atomic_write`).
    """

    def __init__(self, folder: str | Path, unit: int, *, layout: str, bits: int, hop_length: int,
                 patch_t: int, sample_rate: int, rank: int = 0, world_size: int = 1) -> None:
        if layout not in LAYOUTS:
            raise CodesFormatError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.folder, self.unit, self.layout = Path(folder), int(unit), layout
        self.dtype = codes_dtype(bits)
        self.hop_length, self.patch_t, self.sample_rate = hop_length, patch_t, sample_rate
        self.rank, self.world_size = rank, world_size
        self.utterances: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []
        self._arrays: list[np.ndarray] = []
        self._rows = 0
        self.seconds = 0.0
        self.checksums: dict[str, str] = {}

    def add(self, utterance_id: str, codes: np.ndarray, num_samples: int, source: str, **extra: Any) -> None:
        """Add one utterance's codes ``(rows, Nf)`` (all rows, the padded ones of the last window included)."""
        check_id(utterance_id, f"unit {self.unit}")
        array = _integer_codes(codes, utterance_id).astype(self.dtype)
        entry: dict[str, Any] = {"id": utterance_id, "source": source}
        if self.layout == "packed":
            entry["shard"], entry["offset"] = unit_shard_name(self.unit), self._rows
            self._arrays.append(array)
        else:
            entry["file"], entry["offset"] = f"{utterance_id}.npy", 0
            self.checksums[entry["file"]] = sha256_of_file(_write_npy(self.folder / entry["file"], array))
        entry.update(rows=int(array.shape[0]), valid_rows=valid_rows(num_samples, self.hop_length, self.patch_t),
                     num_samples=int(num_samples), sample_rate=self.sample_rate, **extra)
        self._rows += int(array.shape[0])
        self.seconds += num_samples / self.sample_rate
        self.utterances.append(entry)

    def fail(self, utterance_id: str, source: str, reason: str) -> None:
        """Record an utterance that could not be encoded (kept in the index, counted in summaries)."""
        self.failed.append({"id": utterance_id, "source": source, "reason": reason})

    def close(self, elapsed: float | None = None) -> Path:
        """Write the shard (packed), then the index with the SHA-256 of every array written: the unit is done
        once this returns."""
        shard = None
        if self.layout == "packed" and self._arrays:
            shard = unit_shard_name(self.unit)
            self.checksums[shard] = sha256_of_file(_write_npy(self.folder / shard, np.concatenate(self._arrays)))
        index = {"unit": self.unit, "rank": self.rank, "world_size": self.world_size, "shard": shard,
                 "rows": self._rows, "sha256": self.checksums, "seconds": round(self.seconds, 3),
                 "elapsed": None if elapsed is None else round(elapsed, 3),
                 "utterances": self.utterances, "failed": self.failed}
        return _write_json(unit_index_path(self.folder, self.unit), index)


@dataclass(frozen=True)
class Utterance:
    """One utterance of a codes folder: where its rows are and how to decode them.

    ``shard`` (packed) or ``file`` (per-utterance ``.npy``) is relative to the folder; its codes are rows
    ``[offset, offset + rows)``; ``valid_rows`` of them cover real audio; ``num_samples`` at ``sample_rate``.
    """

    id: str
    source: str | None
    rows: int
    valid_rows: int
    num_samples: int
    sample_rate: int
    offset: int = 0
    shard: str | None = None
    file: str | None = None
    unit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CodesIndex:
    """Every utterance of a codes folder, from either layout (or an older ``manifest.json`` folder).

    Example::

        index = CodesIndex.open("codes/")
        for utt in index:
            tokens = index.codes(utt, valid_only=True)   # (valid_rows, Nf) what an LM reads

    Attributes:
        folder: the folder; header: ``codes.json`` (for an older folder, its manifest without ``files``);
        utterances: in unit order, then in each unit's order; failed: ``[{"id", "source", "reason"}]``;
        units_done: finished units; num_units: units the run planned.
    """

    _KNOWN = {"id", "source", "rows", "valid_rows", "num_samples", "sample_rate", "offset", "shard", "file"}

    def __init__(self, folder: Path, header: dict[str, Any], utterances: list[Utterance],
                 failed: list[dict[str, Any]], units_done: list[int], num_units: int,
                 array_rows: dict[str, int] | None = None, checksums: dict[str, str] | None = None) -> None:
        self.folder, self.header, self.utterances, self.failed = folder, header, utterances, failed
        self.units_done, self.num_units = units_done, num_units
        self._by_id = {u.id: u for u in utterances}
        self._arrays: dict[str, np.ndarray] = {}
        self.array_rows = array_rows or {}  # array file -> rows its index covers
        self.checksums = checksums or {}  # array file -> SHA-256 its index recorded

    @classmethod
    def open(cls, folder: str | Path, problems: list[str] | None = None) -> CodesIndex:
        """Read the header and every finished unit's index (or a ``manifest.json``); ids, units, rows and
        offsets are checked (:mod:`transcoder.codes_check`).

        The first problem raises :class:`CodesFormatError` naming the file and field; with a ``problems``
        list every problem of the indexes is appended there instead and a unit with problems is left out.
        """
        folder = Path(folder)
        if (folder / HEADER_NAME).is_file():
            return cls._open_v3(folder, problems)
        if (folder / MANIFEST_NAME).is_file():
            return cls._open_manifest(folder)
        raise CodesFormatError(f"{folder}: no {HEADER_NAME} (or older {MANIFEST_NAME}): not a codes folder written "
                               "by scripts/tokenize_audio.py encode")

    @classmethod
    def _open_v3(cls, folder: Path, problems: list[str] | None = None) -> CodesIndex:
        header = read_header(folder)
        utterances: list[Utterance] = []
        failed: list[dict[str, Any]] = []
        done: list[int] = []
        seen: dict[str, str] = {}
        array_rows: dict[str, int] = {}
        checksums: dict[str, str] = {}
        for path in sorted((folder / INDEX_DIR).glob("unit-*.json")):
            try:
                unit_utterances = cls._read_unit(path, header, seen)
            except CodesFormatError as err:
                if problems is None:
                    raise
                problems.append(str(err))
                continue
            data, unit_utterances = unit_utterances
            for name in {u.shard or u.file for u in unit_utterances}:
                array_rows[str(name)] = (int(data["rows"]) if header["layout"] == "packed"
                                         else next(u.rows for u in unit_utterances if u.file == name))
            checksums.update({k: v for k, v in (data.get("sha256") or {}).items() if isinstance(v, str)})
            utterances += unit_utterances
            done.append(int(data["unit"]))
            failed += [dict(f, unit=data["unit"]) for f in data.get("failed") or []]
        return cls(folder, header, utterances, failed, done, int(header["num_units"]), array_rows, checksums)

    @classmethod
    def _read_unit(cls, path: Path, header: dict[str, Any],
                   seen: dict[str, str]) -> tuple[dict[str, Any], list[Utterance]]:
        """One unit index, checked (:func:`~transcoder.codes_check.unit_problems` and the id / location rules);
        ``seen``: ids of the units read before (an id in two units is refused). Raises the first problem."""
        pt = int(header["patch_size"][0])
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CodesFormatError(f"index {path} cannot be read ({type(err).__name__}: {err})") from err
        number = path.stem.removeprefix("unit-")
        problems = unit_problems(data, path, header, int(number) if number.isdigit() else None)
        if problems:
            raise CodesFormatError(problems[0])
        unit = data["unit"]
        utterances: list[Utterance] = []
        for i, entry in enumerate(data["utterances"]):
            where = f"index {path}: utterances[{i}]"
            if not isinstance(entry, dict):
                raise CodesFormatError(f"{where} must be an object, got {entry!r:.60}")
            uid = check_id(entry.get("id"), where)
            if uid in seen:
                raise CodesFormatError(f"{where}: id {uid!r} also in {seen[uid]}")
            seen[uid] = path.name
            location = entry.get("shard") if header["layout"] == "packed" else entry.get("file")
            if header["layout"] == "files" and location != f"{uid}.npy":
                raise CodesFormatError(f"{where}: file {location!r} must be the id's path {uid + '.npy'!r}")
            if header["layout"] == "packed" and location != unit_shard_name(unit):
                raise CodesFormatError(f"{where}: shard {location!r}, expected {unit_shard_name(unit)!r}")
            rows = _positive_int(entry.get("rows"), f"{where}.rows")
            num_samples = _positive_int(entry.get("num_samples"), f"{where}.num_samples")
            offset = entry.get("offset")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise CodesFormatError(f"{where}.offset must be an integer >= 0, got {offset!r}")
            utterances.append(Utterance(
                uid, entry.get("source"), rows,
                min(rows, valid_rows(num_samples, int(header["hop_length"]), pt)), num_samples,
                int(header["sample_rate"]), offset, entry.get("shard"), entry.get("file"), unit,
                {k: v for k, v in entry.items() if k not in cls._KNOWN}))
        return data, utterances

    @classmethod
    def _open_manifest(cls, folder: Path) -> CodesIndex:
        manifest = read_manifest(folder / MANIFEST_NAME)
        pt = int(manifest["patch_size"][0])
        utterances = []
        for key, entry in manifest["files"].items():
            where = f"manifest {folder / MANIFEST_NAME}: files[{key!r}]"
            check_id(key, where)
            if not key.endswith(".npy") or not isinstance(entry, dict):
                raise CodesFormatError(f"{where}: expected a '<id>.npy' key with an object")
            shape = entry.get("shape")
            num_samples = _positive_int(entry.get("num_samples"), f"{where}.num_samples")
            if not isinstance(shape, list) or not shape:
                raise CodesFormatError(f"{where}: missing 'shape' [rows, Nf]")
            rows = _positive_int(shape[0], f"{where}.shape[0]")
            utterances.append(Utterance(key[:-4], entry.get("source"), rows,
                                        min(rows, valid_rows(num_samples, int(manifest["hop_length"]), pt)),
                                        num_samples, int(manifest["sample_rate"]), 0, None, key, None,
                                        {k: v for k, v in entry.items() if k not in cls._KNOWN}))
        header = {k: v for k, v in manifest.items() if k not in ("files", "failed")}
        header.setdefault("layout", "files")
        failed = [{"id": None, "source": k, "reason": v} for k, v in (manifest.get("failed") or {}).items()]
        return cls(folder, header, utterances, failed, [0], 1)

    # -- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __contains__(self, utterance_id: object) -> bool:
        return utterance_id in self._by_id

    def __getitem__(self, utterance_id: str) -> Utterance:
        try:
            return self._by_id[utterance_id]
        except KeyError:
            raise KeyError(f"{self.folder}: no utterance {utterance_id!r} ({len(self)} utterances)") from None

    @property
    def complete(self) -> bool:
        """Whether every planned unit is finished."""
        return len(self.units_done) >= self.num_units

    @property
    def missing_units(self) -> list[int]:
        """Units the header plans (``num_units``) without an index: unfinished, or deleted."""
        done = set(self.units_done)
        return [unit for unit in range(self.num_units) if unit not in done]

    def check_arrays(self, units: set[int] | None = None) -> list[str]:
        """Problems of the arrays of ``units`` (default: every unit read): missing or unreadable files,
        dtype, shape, rows, and the SHA-256 recorded in the index. One line each, naming the file."""
        names = {u.shard or str(u.file) for u in self.utterances if units is None or u.unit in units}
        problems: list[str] = []
        for name in sorted(names):
            try:
                self._load_checked(name)
            except CodesFormatError as err:
                problems.append(str(err))
        return problems

    @property
    def spec_fields(self) -> dict[str, Any]:
        """The header's model settings (for :func:`check_manifest_model`)."""
        return self.header

    def array(self, relative: str) -> np.ndarray:
        """A shard or file of the folder as a read-only memory map ``(rows, Nf)`` (cached per shard), checked
        on first use against its index: dtype, shape, rows and (format 4) its SHA-256."""
        if relative not in self._arrays:
            array = self._load_checked(relative)
            if self.header["layout"] == "packed":
                self._arrays[relative] = array
            else:
                return array
        return self._arrays[relative]

    def _load_checked(self, relative: str) -> np.ndarray:
        path = self.folder / relative
        if not path.is_file():
            raise CodesFormatError(f"{path}: listed in the index of {self.folder} but missing")
        expected = self.checksums.get(relative)
        if expected is not None and sha256_of_file(path) != expected:
            raise CodesFormatError(f"{path}: its SHA-256 differs from the one in its unit index (sha256): the array "
                                   "was changed or damaged after it was written")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CodesFormatError(f"{path}: cannot be read as a .npy array ({err})") from err
        if "grid_per_window" in self.header:
            problems = array_problems(array, path, self.header, self.array_rows.get(relative))
            if problems:
                raise CodesFormatError(problems[0])
        return array

    def codes(self, utterance: Utterance | str, valid_only: bool = False) -> np.ndarray:
        """Raw codes ``(rows, Nf)`` of an utterance (``valid_rows`` of them with ``valid_only``), as stored."""
        utt = self[utterance] if isinstance(utterance, str) else utterance
        array = self.array(utt.shard if utt.shard is not None else str(utt.file))
        stop = utt.offset + (utt.valid_rows if valid_only else utt.rows)
        if array.ndim != 2 or stop > array.shape[0]:
            raise CodesFormatError(f"{self.folder / (utt.shard or str(utt.file))}: utterance {utt.id!r} needs rows "
                                   f"[{utt.offset}, {stop}) but the array has shape {tuple(array.shape)}")
        return np.asarray(array[utt.offset: stop])

    def codes_file(self, utterance: Utterance | str) -> CodesFile:
        """One utterance as a :class:`CodesFile` (all rows; ``extra["shape"]`` holds the indexed shape)."""
        utt = self[utterance] if isinstance(utterance, str) else utterance
        indices = self.codes(utt)
        bits, model_bits = int(self.header["bits"]), int(manifest_model_bits(self.header))
        return CodesFile(indices, utt.num_samples, utt.sample_rate, bits, utt.source,
                         int(self.header.get("format_version", FORMAT_VERSION)),
                         {**utt.extra, "id": utt.id, "shape": [utt.rows, int(indices.shape[1])]},
                         None if model_bits == bits else model_bits)


def find_codes_root(start: str | Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``codes.json`` or ``manifest.json``, or ``None``."""
    start = Path(start)
    for folder in [start, *start.parents]:
        if (folder / HEADER_NAME).is_file() or (folder / MANIFEST_NAME).is_file():
            return folder
    return None
