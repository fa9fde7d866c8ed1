"""Training losses."""

from transcoder.losses.reconstruction import AudioTokenizerLoss

__all__ = ["AudioTokenizerLoss"]
