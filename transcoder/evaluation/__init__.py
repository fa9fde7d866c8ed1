"""Spectrogram, codebook and waveform metrics; :mod:`.evaluate` runs a whole evaluation."""

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
from transcoder.evaluation.reconstruction import ReconstructionMetrics, ReconstructionSummary

__all__ = [
    "CodebookStats",
    "CodebookUsage",
    "ReconstructionMetrics",
    "ReconstructionSummary",
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
