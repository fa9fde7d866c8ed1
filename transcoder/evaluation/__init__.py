"""Spectrogram, codebook and waveform metrics."""

from transcoder.evaluation.metrics import (
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

__all__ = [
    "CodebookStats",
    "CodebookUsage",
    "bitrate",
    "code_entropy",
    "mel_l1",
    "pesq_wb",
    "si_snr",
    "spectrogram_mae_db",
    "spectrogram_mse_db",
    "stoi",
    "tokens_per_second",
]
