"""Output file names derived from input names, and input names shown on a page.

File systems limit one name to 255 bytes; an input file's name plus the suffixes an output adds can pass
it and abort a whole run. :func:`fit_name` shortens such a name and appends a stable hash of the full one,
so two long names that share a prefix still get distinct outputs. :func:`display_name` shows a name with
control and bidirectional-override characters escaped, so a page title shows what the path really is.
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["NAME_MAX_BYTES", "OUTPUT_NAME_BYTES", "display_name", "fit_name", "fit_relative"]

#: Longest file name (one path component, in bytes) on common file systems (ext4, XFS, APFS, NTFS).
NAME_MAX_BYTES = 255
#: Longest output name: room is left for the ``.<name>.tmp-<pid>`` an atomic write adds while writing.
OUTPUT_NAME_BYTES = NAME_MAX_BYTES - 24
_HASH_CHARS = 12


def fit_name(name: str, suffix: str = "", limit: int = OUTPUT_NAME_BYTES) -> str:
    """``name`` (without ``suffix``) shortened so that ``name + suffix`` fits ``limit`` UTF-8 bytes.

    A name that fits is returned unchanged; a longer one is cut on a character boundary and ends in ``-``
    and the first 12 hex digits of the SHA-256 of the full name (the same name always gives the same result).

    Raises:
        ValueError: ``suffix`` alone leaves no room for a name and its hash.
    """
    if len((name + suffix).encode()) <= limit:
        return name
    tail = "-" + hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    room = limit - len(suffix.encode()) - len(tail)
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a file name within {limit} bytes")
    head = name.encode()[:room].decode("utf-8", errors="ignore")
    return head + tail


def fit_relative(relative: str, suffix: str = "", limit: int = OUTPUT_NAME_BYTES) -> str:
    """A relative POSIX path whose every component fits ``limit`` bytes, the last one with ``suffix`` added
    (:func:`fit_name` per component); returned without ``suffix``."""
    parts = relative.split("/")
    fitted = [fit_name(part, limit=limit) for part in parts[:-1]] + [fit_name(parts[-1], suffix, limit)]
    return "/".join(fitted)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display_name(text: str) -> str:
    """``text`` with control characters (``Cc``: newlines, escapes, NUL) and format characters (``Cf``: the
    bidirectional overrides and isolates, zero-width characters) written as ``\\xNN`` / ``\\uNNNN`` escapes,
    and backslashes doubled, so the shown text is unambiguous."""
    shown = []
    for char in text:
        if char == "\\":
            shown.append("\\\\")
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            shown.append(_escaped(char))
        else:
            shown.append(char)
    return "".join(shown)
