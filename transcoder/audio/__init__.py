"""Signal processing shared by data, training, evaluation and the API: the log-mel front end, its inverse
and Griffin-Lim (a neural vocoder sits beside them)."""

from transcoder.audio.griffin_lim import GriffinLimVocoder, nnls_mel_inverse
from transcoder.audio.mel import LogMelFrontend, MelConfig

__all__ = ["GriffinLimVocoder", "LogMelFrontend", "MelConfig", "nnls_mel_inverse"]
