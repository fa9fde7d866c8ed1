"""Signal processing shared by data, training, evaluation and the API: the log-mel front end, its inverse,
Griffin-Lim and the neural vocoder renderer (a vocoder checkpoint of this repository)."""

from transcoder.audio.griffin_lim import GriffinLimVocoder, nnls_mel_inverse
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.neural_vocoder import NeuralVocoder, load_vocoder

__all__ = ["GriffinLimVocoder", "LogMelFrontend", "MelConfig", "NeuralVocoder", "load_vocoder", "nnls_mel_inverse"]
