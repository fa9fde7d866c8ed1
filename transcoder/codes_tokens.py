"""Token views of codes for a language model, and their exact inverse.

A code is a ``bits``-bit integer (bit ``i`` is the sign of dimension ``i`` of the BSQ code). A language
model reads it in one of two views:

* **full** (``group_bits == bits`` or ``None``): one token per code, vocabulary ``2^bits``;
* **groups** (``group_bits`` dividing ``bits``): ``G = bits / group_bits`` tokens per code, vocabulary
  ``2^group_bits`` each. Token ``g`` holds bits ``[g * group_bits, (g + 1) * group_bits)``, low bits
  first: ``token_g = (code >> (g * group_bits)) & (2^group_bits - 1)``, so for 18 bits and 2 x 9 the
  first token is the code's low 9 bits and the second its high 9 bits.

In a token sequence the ``G`` tokens of a code are adjacent (group 0 first), codes of a time row follow
in frequency-patch order, and rows follow in time: a ``(rows, Nf)`` code array becomes the
row-major flattening of ``(rows, Nf, G)``. :func:`codes_to_tokens` / :func:`tokens_to_codes` map one
view to the other exactly; :func:`flatten_codes` / :func:`unflatten_tokens` add the sequence order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["codes_to_tokens", "flatten_codes", "groups_per_code", "tokens_to_codes", "unflatten_tokens"]


def groups_per_code(bits: int, group_bits: int | None = None) -> int:
    """Tokens per code ``G = bits / group_bits`` (1 for the full view); ``ValueError`` if it does not divide."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
        raise ValueError(f"bits={bits!r}: expected an integer in [1, 62]")
    if group_bits is None:
        return 1
    if isinstance(group_bits, bool) or not isinstance(group_bits, int) or not 1 <= group_bits <= bits:
        raise ValueError(f"group_bits={group_bits!r}: expected an integer in [1, bits={bits}]")
    if bits % group_bits:
        raise ValueError(f"group_bits={group_bits} does not divide bits={bits} (e.g. 18 = 2 x 9 = 3 x 6 = 6 x 3)")
    return bits // group_bits


def codes_to_tokens(indices: np.ndarray, bits: int, group_bits: int | None = None) -> np.ndarray:
    """Codes ``(...)`` -> tokens ``(..., G)`` int64 (``G = bits / group_bits``; ``(..., 1)`` for the full view).

    Raises ``ValueError`` for a non-integer dtype or a code outside ``[0, 2^bits)``.
    """
    groups = groups_per_code(bits, group_bits)
    codes = np.asarray(indices)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must have an integer dtype, got {codes.dtype}")
    codes = codes.astype(np.int64)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, 2^{bits}), got min {int(codes.min())} max {int(codes.max())}")
    if groups == 1:
        return codes[..., None]
    width = bits // groups
    shifts = np.arange(groups, dtype=np.int64) * width
    return (codes[..., None] >> shifts) & ((1 << width) - 1)


def tokens_to_codes(tokens: np.ndarray, bits: int, group_bits: int | None = None) -> np.ndarray:
    """Tokens ``(..., G)`` -> codes ``(...)`` int64: the exact inverse of :func:`codes_to_tokens`.

    Raises ``ValueError`` for a last axis other than ``G`` or a token outside ``[0, 2^group_bits)``.
    """
    groups = groups_per_code(bits, group_bits)
    array = np.asarray(tokens)
    if array.dtype.kind not in "iu":
        raise ValueError(f"tokens must have an integer dtype, got {array.dtype}")
    if array.ndim == 0 or array.shape[-1] != groups:
        raise ValueError(f"tokens must have a last axis of {groups} (tokens per code), got shape {array.shape}")
    width = bits // groups
    array = array.astype(np.int64)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= 1 << width):
        raise ValueError(f"tokens must lie in [0, 2^{width}), got min {int(array.min())} max {int(array.max())}")
    shifts = np.arange(groups, dtype=np.int64) * width
    return np.bitwise_or.reduce(array << shifts, axis=-1) if groups > 1 else array[..., 0]


def flatten_codes(indices: np.ndarray, bits: int, group_bits: int | None = None) -> np.ndarray:
    """Codes ``(rows, Nf)`` -> the token sequence ``(rows * Nf * G,)`` (time, frequency patch, group)."""
    codes = np.asarray(indices)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (rows, Nf), got shape {codes.shape}")
    return codes_to_tokens(codes, bits, group_bits).reshape(-1)


def unflatten_tokens(tokens: np.ndarray, n_freq_patches: int, bits: int, group_bits: int | None = None) -> np.ndarray:
    """A token sequence ``(rows * Nf * G,)`` -> codes ``(rows, Nf)``: the inverse of :func:`flatten_codes`."""
    groups = groups_per_code(bits, group_bits)
    array = np.asarray(tokens)
    step = n_freq_patches * groups
    if array.ndim != 1 or array.shape[0] % step:
        raise ValueError(f"a token sequence of whole rows has a multiple of Nf * G = {step} tokens, "
                         f"got shape {array.shape}")
    return tokens_to_codes(array.reshape(-1, n_freq_patches, groups), bits, group_bits)
