"""Consistency checks of a codes folder's header, unit indexes and arrays (format 3 and later).

Each check returns a list of problems, one line each, naming the file and the field; readers
(:class:`transcoder.codes.CodesIndex`) raise the first, ``scripts/tokenize_audio.py --verify`` reports
them all. Nothing here reads more than the file it is given.

What is checked:

* header: positive integer geometry, ``patch_size`` / ``grid_per_window`` pairs that tile the window
  (``grid_per_window == [window_frames / pt, n_mels / pf]``), ``1 <= bits <= model_bits <= 62``, a
  ``codes_dtype`` that is the one of ``bits``, and ``tokens_per_second`` / ``bitrate`` that follow from them;
* a unit index: an integer ``unit`` equal to its file's number and below the header's ``num_units``,
  well-formed ``failed`` entries, every utterance's ``rows`` from the ceil rule of its ``num_samples``
  (whole windows), packed offsets that tile the shard (no overlap, no gap) and add up to the index's
  ``rows``; from format 4 on, a SHA-256 for every array the unit wrote;
* an array: a 2-D integer array of the header's dtype and ``Nf``, the rows its index covers, and the
  checksum its index recorded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_BITS", "array_problems", "expected_rows", "header_problems", "unit_problems"]

#: Widest code: indices are int64 (the model's limit).
MAX_BITS = 62



def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_positive_int(v) for v in value)


def _dtype_of_bits(bits: int) -> str:
    return "uint16" if bits <= 16 else "uint32" if bits <= 32 else "int64"


def header_problems(header: dict[str, Any], where: str | Path) -> list[str]:
    """Problems of a format-3+ header's geometry and widths (each ``codes header <file>: key=value: expected``)."""
    problems: list[str] = []

    def bad(key: str, expected: str) -> None:
        problems.append(f"codes header {where}: {key}={header.get(key)!r:.80}: expected {expected}")

    for key in ("sample_rate", "hop_length", "n_mels", "window_frames"):
        if not _positive_int(header.get(key)):
            bad(key, "a positive integer")
    num_units = header.get("num_units")
    if not isinstance(num_units, int) or isinstance(num_units, bool) or num_units < 0:
        bad("num_units", "an integer >= 0")
    for key in ("patch_size", "grid_per_window"):
        if not _int_pair(header.get(key)):
            bad(key, "two positive integers [time, frequency]")
    bits, model_bits = header.get("bits"), header.get("model_bits", header.get("bits"))
    if not _positive_int(bits) or bits > MAX_BITS:
        bad("bits", f"an integer in 1..{MAX_BITS}")
    elif not _positive_int(model_bits) or not bits <= model_bits <= MAX_BITS:
        bad("model_bits", f"an integer in bits..{MAX_BITS} (bits={bits})")
    if problems:
        return problems
    (pt, pf), grid = header["patch_size"], header["grid_per_window"]
    frames, n_mels = header["window_frames"], header["n_mels"]
    if frames % pt or n_mels % pf or grid != [frames // pt, n_mels // pf]:
        problems.append(f"codes header {where}: patch_size={[pt, pf]} and grid_per_window={grid} do not tile the "
                        f"window of window_frames={frames} x n_mels={n_mels} (expected grid_per_window "
                        f"[window_frames / pt, n_mels / pf] of whole patches)")
    if "codes_dtype" in header and header["codes_dtype"] != _dtype_of_bits(bits):
        bad("codes_dtype", f"{_dtype_of_bits(bits)!r} for {bits}-bit codes")
    rate = header["sample_rate"] / header["hop_length"] / pt * grid[1]
    for key, value in (("tokens_per_second", rate), ("bitrate", rate * bits)):
        given = header.get(key)
        if key in header and not (isinstance(given, int | float) and math.isclose(given, value, rel_tol=1e-6)):
            bad(key, f"{value:g} (from sample_rate, hop_length, patch_size, grid_per_window and bits)")
    return problems


def expected_rows(num_samples: int, header: dict[str, Any]) -> int:
    """Rows an utterance of ``num_samples`` samples is encoded to: whole windows,
    ``max(1, ceil(num_samples / (window_frames * hop_length))) * rows_per_window``."""
    window_samples = int(header["window_frames"]) * int(header["hop_length"])
    return max(1, -(-int(num_samples) // window_samples)) * int(header["grid_per_window"][0])


def unit_problems(data: Any, path: Path, header: dict[str, Any], unit_from_name: int | None) -> list[str]:
    """Problems of one unit index ``data`` read from ``path`` (structure, unit, failed entries, rows, offsets,
    checksums). Per-utterance id and location rules are :class:`~transcoder.codes.CodesIndex`'s."""
    where = f"index {path}"
    if not isinstance(data, dict) or not isinstance(data.get("utterances"), list):
        return [f"{where}: expected an object with a list 'utterances'"]
    problems: list[str] = []
    unit = data.get("unit")
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < int(header["num_units"]):
        problems.append(f"{where}: unit={unit!r:.40}: expected an integer in 0..{int(header['num_units']) - 1} "
                        f"(the header's num_units={header['num_units']})")
    elif unit_from_name is not None and unit != unit_from_name:
        problems.append(f"{where}: unit={unit} but the file is the index of unit {unit_from_name}")
    failed = data.get("failed") or []
    if not isinstance(failed, list):
        problems.append(f"{where}: failed={failed!r:.60}: expected a list of {{id, source, reason}} objects")
        failed = []
    for i, entry in enumerate(failed):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("source", "reason")):
            problems.append(f"{where}: failed[{i}]={entry!r:.60}: expected an object with string 'id', 'source' "
                            "and 'reason'")
    problems += _row_problems(data, where, header)
    if int(header.get("format_version", 3)) >= 4:
        checksums = data.get("sha256")
        files = {u.get("shard") or u.get("file") for u in data["utterances"] if isinstance(u, dict)}
        if not isinstance(checksums, dict):
            problems.append(f"{where}: sha256={checksums!r:.60}: expected an object of array file -> SHA-256")
        else:
            problems += [f"{where}: sha256 has no checksum of {name!r}"
                         for name in sorted(str(f) for f in files if f is not None) if name not in checksums]
    return problems


def _row_problems(data: dict[str, Any], where: str, header: dict[str, Any]) -> list[str]:
    """Rows from the ceil rule, and packed offsets that tile the shard exactly."""
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for i, entry in enumerate(data["utterances"]):
        if not isinstance(entry, dict):
            continue  # named by the reader's per-utterance checks
        rows, num_samples, offset = entry.get("rows"), entry.get("num_samples"), entry.get("offset")
        if not (_positive_int(rows) and _positive_int(num_samples)):
            problems.append(f"{where}: utterances[{i}]: rows={rows!r:.40} and num_samples={num_samples!r:.40}: "
                            "expected positive integers")
            continue
        wanted = expected_rows(num_samples, header)
        if rows != wanted:
            problems.append(f"{where}: utterances[{i}].rows={rows} but num_samples={num_samples} is encoded to "
                            f"{wanted} rows (whole windows of {header['grid_per_window'][0]} rows)")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            problems.append(f"{where}: utterances[{i}].offset={offset!r:.40}: expected an integer >= 0")
            continue
        spans.append((offset, rows, f"utterances[{i}]"))
    if header.get("layout") != "packed":
        return problems + [f"{where}: {name}.offset={offset}: expected 0 (one file per utterance)"
                           for offset, _, name in spans if offset != 0]
    position = 0
    for offset, rows, name in sorted(spans):
        if offset != position:
            kind = "overlaps the rows before it" if offset < position else "leaves a gap after the rows before it"
            problems.append(f"{where}: {name}.offset={offset} {kind} (expected {position})")
        position = max(position, offset + rows)
    total = data.get("rows")
    if spans and total != position:
        problems.append(f"{where}: rows={total!r:.40} but its utterances cover {position} rows")
    return problems


def array_problems(array: np.ndarray, where: str | Path, header: dict[str, Any], rows: int | None) -> list[str]:
    """Problems of an array of a codes folder: not 2-D integer of the header's dtype and ``Nf``, or another
    row count than its index covers (``rows``; ``None``: unchecked)."""
    nf = int(header["grid_per_window"][1])
    dtype = header.get("codes_dtype")
    problems = []
    if array.ndim != 2 or array.dtype.kind not in "iu" or array.shape[1] != nf:
        problems.append(f"{where}: array is {array.dtype} {tuple(array.shape)}, expected integer codes (rows, {nf})")
    elif dtype is not None and array.dtype.name != dtype:
        problems.append(f"{where}: array is {array.dtype}, the header's codes_dtype is {dtype!r}")
    elif rows is not None and array.shape[0] != rows:
        problems.append(f"{where}: array has {array.shape[0]} rows, its index covers {rows}")
    return problems
