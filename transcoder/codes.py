"""On-disk format of token codes: a folder of ``.npy`` files plus ``manifest.json``, or one ``.npz``.

Folder layout (written by ``scripts/tokenize_audio.py encode``)::

    out/manifest.json          {"format": "audio-bsq-vit-codes", "format_version": 2, "sample_rate": ...,
                                "bits": ..., "patch_size": [pt, pf], "grid_per_window": [rows, Nf], ...,
                                "files": {"a.npy": {"num_samples": ..., "shape": [rows, Nf], ...}},
                                "failed": {...}}
    out/a.npy                  codes (n_time_tokens, n_freq_patches), the smallest unsigned dtype

Manifests written before versioning (``"format": "audio-bsq-vit-codes/1"``, no ``format_version``)
read as version 1; version 2 adds only the ``format_version`` field, so both read alike.

A single self-describing file is a ``.npz`` with the array ``indices`` and a JSON string ``meta``
(:meth:`CodesFile.save` / :meth:`CodesFile.load`, readable without pickle).

Codes are never trusted: :func:`check_codes` rejects float or bool arrays before any integer cast,
a row count other than the manifest's, values outside ``[0, 2^bits)``, and a ``num_samples`` longer
than the codes cover. Errors name the file, the key or dtype, and what was expected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CODES_FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CodesFile",
    "CodesFormatError",
    "CodesSpec",
    "check_codes",
    "check_manifest_model",
    "codes_dtype",
    "find_manifest",
    "read_manifest",
    "write_manifest",
]

CODES_FORMAT = "audio-bsq-vit-codes"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
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
    """What a model's codes look like (from :attr:`transcoder.api.AudioTokenizer.codes_spec`)."""

    sample_rate: int
    hop_length: int
    n_mels: int
    bits: int
    patch_size: tuple[int, int]
    time_rows_per_window: int  # time rows of tokens per model window
    n_freq_patches: int
    window_samples: int  # samples per model window

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
        bits: bits per token.
        source: where the audio came from (informative).
        format_version: version of the format the file was read from.
        extra: other metadata (manifest entry fields, checkpoint hash ...).
    """

    indices: np.ndarray
    num_samples: int
    sample_rate: int
    bits: int
    source: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write a self-describing ``.npz`` (``indices`` in the smallest dtype, ``meta`` as JSON)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise CodesFormatError(f"{path}: a codes file is written as .npz, got suffix {path.suffix!r}")
        indices = _integer_codes(self.indices, path)
        meta = {"format": CODES_FORMAT, "format_version": FORMAT_VERSION, "num_samples": int(self.num_samples),
                "sample_rate": int(self.sample_rate), "bits": int(self.bits), "source": self.source,
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
        known = {"format", "format_version", "num_samples", "sample_rate", "bits", "source", "shape"}
        shape = meta.get("shape")
        if shape is not None and list(indices.shape) != shape:
            raise CodesFormatError(f"{path}: indices have shape {list(indices.shape)} but meta.shape is {shape}")
        return cls(indices, _positive_int(meta.get("num_samples"), f"{path}: meta.num_samples"),
                   _positive_int(meta.get("sample_rate"), f"{path}: meta.sample_rate"),
                   _positive_int(meta.get("bits"), f"{path}: meta.bits"), meta.get("source"), version,
                   {k: v for k, v in meta.items() if k not in known})

    def checked(self, spec: CodesSpec, where: str | Path) -> np.ndarray:
        """The indices as int64 ``(rows, n_freq_patches)`` after :func:`check_codes` against ``spec``."""
        if self.sample_rate != spec.sample_rate or self.bits != spec.bits:
            raise CodesFormatError(f"{where}: codes of a {self.bits}-bit model at {self.sample_rate} Hz, but the "
                                   f"checkpoint makes {spec.bits}-bit codes at {spec.sample_rate} Hz")
        shape = self.extra.get("shape")
        rows = int(shape[0]) if isinstance(shape, list) and shape else None
        return check_codes(self.indices, spec, where, num_samples=self.num_samples, expected_rows=rows)


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
    data = {"format": CODES_FORMAT, "format_version": FORMAT_VERSION, **manifest}
    if not isinstance(data.get("files"), dict):
        raise CodesFormatError(f"{path}: manifest 'files' must be an object, got {type(data.get('files')).__name__}")
    path.write_text(json.dumps(data, indent=2))
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
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CodesFormatError(f"manifest {path}: format_version {version!r} is not supported "
                               f"(this reader: 1..{FORMAT_VERSION})")
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
    """
    checks = {"sample_rate": spec.sample_rate, "bits": spec.bits, "patch_size": list(spec.patch_size),
              "n_mels": spec.n_mels, "hop_length": spec.hop_length}
    for key, value in checks.items():
        if manifest.get(key) != value:
            raise CodesFormatError(f"manifest {where}: {key}={manifest.get(key)!r} but the checkpoint has "
                                   f"{value!r}: these codes come from another model")
    sha = manifest.get("checkpoint_sha256")
    if sha and checkpoint_sha256 and sha != checkpoint_sha256:
        made_with = manifest.get("checkpoint") or "an unnamed checkpoint"
        this = f"{checkpoint_path} " if checkpoint_path is not None else ""
        return (f"the codes in {where} were made with {made_with} (sha256 {sha[:12]}...), not with this "
                f"checkpoint {this}(sha256 {checkpoint_sha256[:12]}...)")
    return None
