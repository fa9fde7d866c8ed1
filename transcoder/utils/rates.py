"""Token and bit rates of a tokenizer: the one place the formula lives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["TokenRates", "bitrate", "token_rates", "tokens_per_second"]


class TokenRates(NamedTuple):
    """Rates per second of audio, every frequency patch counted."""

    tokens_per_second: float
    bits_per_second: float


def token_rates(patch_size: Sequence[int] | int, n_mels: int, hop_length: int, sample_rate: int,
                bits_per_token: int = 0) -> TokenRates:
    """``(sample_rate / hop / patch_t) * (n_mels / patch_f)`` tokens per second, times ``bits_per_token``.

    Example: 16 kHz, hop 160 (100 frames/s), 16x16 patches on 128 mels, 18 bits -> 6.25 * 8 = 50 tokens/s,
    900 bit/s. Raises ValueError when the frequency patch does not tile ``n_mels`` or a size is not positive.
    """
    pt, pf = (patch_size, patch_size) if isinstance(patch_size, int) else (int(patch_size[0]), int(patch_size[1]))
    if hop_length <= 0 or sample_rate <= 0 or pt <= 0 or pf <= 0:
        raise ValueError(f"hop_length={hop_length}, sample_rate={sample_rate}, patch={pt}x{pf} must be positive")
    if n_mels % pf:
        raise ValueError(f"n_mels={n_mels} is not a multiple of the frequency patch {pf}")
    per_second = sample_rate / hop_length / pt * (n_mels // pf)
    return TokenRates(per_second, per_second * bits_per_token)


def tokens_per_second(patch_size: Sequence[int] | int, n_mels: int, hop_length: int, sample_rate: int) -> float:
    """Tokens per second of audio (:func:`token_rates`)."""
    return token_rates(patch_size, n_mels, hop_length, sample_rate).tokens_per_second


def bitrate(patch_size: Sequence[int] | int, n_mels: int, hop_length: int, sample_rate: int, bits: int) -> float:
    """Bit rate in bit/s (:func:`token_rates`): tokens per second times bits per token."""
    return token_rates(patch_size, n_mels, hop_length, sample_rate, bits).bits_per_second
