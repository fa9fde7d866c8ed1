"""Signal processing shared by data, training, evaluation and the API: the log-mel front end, its inverse and
the renderers (model-space mel -> audio: Griffin-Lim or a neural vocoder checkpoint of this repository)."""

from transcoder.audio.griffin_lim import GriffinLimRenderer, GriffinLimVocoder, nnls_mel_inverse
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.neural_vocoder import NeuralVocoder, load_vocoder
from transcoder.audio.render import ChunkedRenderer, Renderer, build_renderer

__all__ = ["ChunkedRenderer", "GriffinLimRenderer", "GriffinLimVocoder", "LogMelFrontend", "MelConfig", "NeuralVocoder",
           "Renderer", "build_renderer", "load_vocoder", "nnls_mel_inverse"]
