"""Spectrogram, codebook and waveform metrics, and the Griffin-Lim vocoder used to listen to mels."""

from transcoder.evaluations.metrics import (
    CodebookStats,
    CodebookUsage,
    bitrate,
    code_entropy,
    mel_l1,
    pesq_wb,
    si_snr,
    spectrogram_mae_db,
    spectrogram_mse_db,
    stoi,
    tokens_per_second,
)
from transcoder.evaluations.vocoder import GriffinLimVocoder, nnls_mel_inverse

__all__ = [
    "CodebookStats",
    "CodebookUsage",
    "GriffinLimVocoder",
    "bitrate",
    "code_entropy",
    "mel_l1",
    "nnls_mel_inverse",
    "pesq_wb",
    "si_snr",
    "spectrogram_mae_db",
    "spectrogram_mse_db",
    "stoi",
    "tokens_per_second",
]
