"""Reconstruction, codebook and waveform metrics for the audio tokenizer.

Spectrogram metrics (MSE / MAE in dB) are computed on dB-scale mels; ``mel_l1`` works in the model's
normalized space. Codebook statistics are accumulated from integer indices with ``torch.unique``
(no ``2^bits`` table). Waveform metrics:

* SI-SNR: scale-invariant signal-to-noise ratio (Le Roux et al., "SDR - half-baked or well done?", 2019).
* PESQ wide band: ITU-T P.862.2 via the ``pesq`` package, at 16 kHz.
* STOI: short-time objective intelligibility (Taal et al., 2011) via ``pystoi``.

Everything here is a pure function except :class:`CodebookUsage`, a streaming accumulator.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torchaudio
from torch import Tensor

from transcoder.utils.rates import bitrate, tokens_per_second

__all__ = [
    "spectrogram_mse_db",
    "spectrogram_mae_db",
    "mel_l1",
    "code_entropy",
    "CodebookUsage",
    "CodebookStats",
    "tokens_per_second",
    "bitrate",
    "si_snr",
    "pesq_wb",
    "stoi",
    "speech_quality",
    "PESQ_SAMPLE_RATE",
]

PESQ_SAMPLE_RATE = 16000


def _check_same_shape(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def _reduce(per_element: Tensor, reduction: str) -> Tensor:
    """Per-element errors ``(B, ...)`` -> scalar mean, per-example ``(B,)`` means, or sum."""
    if reduction == "mean":
        return per_element.mean()
    if reduction == "none":
        return per_element.flatten(1).mean(1)
    if reduction == "sum":
        return per_element.sum()
    raise ValueError(f"reduction must be 'mean', 'none' or 'sum', got {reduction!r}")


def spectrogram_mse_db(pred_db: Tensor, target_db: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error between two dB spectrograms, in dB^2.

    Args:
        pred_db, target_db: ``(B, T, F)`` mels in dB (e.g. ``frontend.model_to_db(x)``).
        reduction: ``mean`` (scalar over everything), ``none`` (per example, ``(B,)``) or ``sum``.
    """
    _check_same_shape(pred_db, target_db, "spectrogram_mse_db")
    return _reduce((pred_db.double() - target_db.double()).square(), reduction)


def spectrogram_mae_db(pred_db: Tensor, target_db: Tensor, reduction: str = "mean") -> Tensor:
    """Mean absolute error between two dB spectrograms ``(B, T, F)``, in dB (see :func:`spectrogram_mse_db`)."""
    _check_same_shape(pred_db, target_db, "spectrogram_mae_db")
    return _reduce((pred_db.double() - target_db.double()).abs(), reduction)


def mel_l1(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """L1 distance between two mels ``(B, T, F)`` in the model's normalized space (the training loss scale)."""
    _check_same_shape(pred, target, "mel_l1")
    return _reduce((pred.double() - target.double()).abs(), reduction)


# --------------------------------------------------------------------------------------------------
# Codebook usage
# --------------------------------------------------------------------------------------------------


def code_entropy(counts: Tensor) -> float:
    """Shannon entropy in bits of the empirical distribution given by ``counts`` ``(K,)`` (zeros allowed)."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * torch.log2(p)).sum())


@dataclass
class CodebookStats:
    """Summary of the codes seen.

    Attributes:
        num_tokens: tokens counted.
        distinct_codes: number of different indices seen.
        codebook_size: ``2 ** bits``.
        usage: ``distinct_codes / min(codebook_size, num_tokens)`` - the fraction of the codes that
            could have been seen that were.
        entropy_bits: entropy of the code histogram, bits per token (at most ``bits``).
        perplexity: ``2 ** entropy_bits``, the effective number of equiprobable codes.
        bit_balance: ``(bits,)`` mean of each bit (0.5 = balanced); bit ``i`` is ``(index >> i) & 1``.
        bit_entropy_bits: sum of the per-bit binary entropies (an upper bound of ``entropy_bits``).
    """

    num_tokens: int
    distinct_codes: int
    codebook_size: int
    usage: float
    entropy_bits: float
    perplexity: float
    bit_balance: list[float]
    bit_entropy_bits: float

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return dict(self.__dict__)


class CodebookUsage:
    """Streaming histogram of integer codes, without a ``2^bits`` table.

    Keeps the sorted distinct indices and their counts; each :meth:`update` merges a batch with
    ``torch.unique``. Memory grows with the number of *distinct* codes seen (at most the number of
    tokens), never with ``2 ** bits``.

    Works in one process; in a DDP job call :meth:`all_reduce` once at the end, on every rank, to merge
    the histograms of all ranks (uses ``all_gather_object``, so it is meant for the end of an
    evaluation, not for every step).

    Args:
        bits: code width (the model's bits per token, ``model.bits``), at most 62.
    """

    def __init__(self, bits: int) -> None:
        if not 1 <= bits <= 62:
            raise ValueError(f"bits must be in [1, 62] (indices are int64), got {bits}")
        self.bits = bits
        self.codes = torch.zeros(0, dtype=torch.int64)
        self.counts = torch.zeros(0, dtype=torch.int64)
        self.bit_ones = torch.zeros(bits, dtype=torch.int64)
        self.num_tokens = 0

    @torch.no_grad()
    def update(self, indices: Tensor) -> None:
        """Add a batch of indices of any shape (e.g. ``(B, Nt, Nf)``), integer dtype, in ``[0, 2^bits)``."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        flat = indices.detach().reshape(-1).long()
        if flat.numel() == 0:
            return
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= 2**self.bits:
            raise ValueError(f"indices must lie in [0, 2^{self.bits}), got min {lo} max {hi}")
        shifts = torch.arange(self.bits, device=flat.device)
        self.bit_ones += ((flat[:, None] >> shifts) & 1).sum(0).cpu()
        codes, counts = torch.unique(flat, return_counts=True)
        self._merge(codes.cpu(), counts.cpu())
        self.num_tokens += flat.numel()

    def _merge(self, codes: Tensor, counts: Tensor) -> None:
        all_codes = torch.cat([self.codes, codes])
        all_counts = torch.cat([self.counts, counts])
        merged, inverse = torch.unique(all_codes, return_inverse=True)
        self.counts = torch.zeros(merged.numel(), dtype=torch.int64).index_add_(0, inverse, all_counts)
        self.codes = merged

    def merge(self, other: CodebookUsage) -> None:
        """Add another accumulator's histogram into this one."""
        if other.bits != self.bits:
            raise ValueError(f"cannot merge a {other.bits}-bit histogram into a {self.bits}-bit one")
        self._merge(other.codes, other.counts)
        self.bit_ones += other.bit_ones
        self.num_tokens += other.num_tokens

    def all_reduce(self) -> None:
        """Merge the histograms of all DDP ranks in place (no-op without an initialized process group)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[tuple[Tensor, Tensor, Tensor, int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.codes, self.counts, self.bit_ones, self.num_tokens))
        total = CodebookUsage(self.bits)
        for item in gathered:
            assert item is not None
            codes, counts, bit_ones, num_tokens = item
            total._merge(codes, counts)
            total.bit_ones += bit_ones
            total.num_tokens += num_tokens
        self.codes, self.counts, self.bit_ones, self.num_tokens = (
            total.codes, total.counts, total.bit_ones, total.num_tokens)

    def compute(self) -> CodebookStats:
        """Summary statistics of everything seen so far."""
        n = self.num_tokens
        size = 2**self.bits
        balance = (self.bit_ones.double() / max(n, 1)).tolist()
        bit_entropy = sum(_binary_entropy(p) for p in balance) if n else 0.0
        entropy = code_entropy(self.counts)
        distinct = int(self.codes.numel())
        return CodebookStats(
            num_tokens=n,
            distinct_codes=distinct,
            codebook_size=size,
            usage=distinct / min(size, n) if n else 0.0,
            entropy_bits=entropy,
            perplexity=2.0**entropy,
            bit_balance=balance,
            bit_entropy_bits=bit_entropy,
        )


def _binary_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# --------------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------------


# tokens_per_second and bitrate are re-exported from transcoder.utils.rates (the formula's one home).


# --------------------------------------------------------------------------------------------------
# Waveform metrics
# --------------------------------------------------------------------------------------------------


def si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SNR in dB (Le Roux et al. 2019), zero-mean, per signal.

    Args:
        estimate, reference: ``(..., S)`` waveforms of equal shape.

    Returns:
        ``(...)`` SI-SNR in dB. A scaled copy gives a very large value (limited by ``eps``); a silent
        reference gives a very negative one.
    """
    _check_same_shape(estimate, reference, "si_snr")
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    ratio = (target.square().sum(-1) + eps) / (noise.square().sum(-1) + eps)
    return (10 * torch.log10(ratio)).to(torch.float32)


def _to_numpy_16k(wave: Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (S,), got shape {tuple(x.shape)}")
    if sample_rate != PESQ_SAMPLE_RATE:
        x = torchaudio.functional.resample(x, sample_rate, PESQ_SAMPLE_RATE)
    return x.cpu().numpy().astype(np.float64)


def pesq_wb(reference: Tensor | np.ndarray, degraded: Tensor | np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO in [1.04, 4.64] of one mono pair ``(S,)``.

    Both signals are resampled to 16 kHz when ``sample_rate`` differs. Returns ``nan`` (with a warning)
    when PESQ finds no speech (``NoUtterancesError``, e.g. silence) or the clip is too short; raises
    ``ImportError`` naming the package if ``pesq`` is missing.
    """
    try:
        from pesq import PesqError, pesq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PESQ needs the 'pesq' package: pip install pesq") from exc
    ref = _to_numpy_16k(reference, sample_rate)
    deg = _to_numpy_16k(degraded, sample_rate)
    n = min(ref.shape[0], deg.shape[0])
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # pesq normalizes by the peak (0 for silence)
            return float(pesq(PESQ_SAMPLE_RATE, ref[:n], deg[:n], "wb"))
    except PesqError as exc:  # NoUtterancesError, BufferTooShortError
        warnings.warn(f"PESQ skipped a clip ({type(exc).__name__}: {exc})", stacklevel=2)
        return float("nan")


STOI_SAMPLE_RATE = 10000  # pystoi's internal rate
STOI_FRAME_10K = 256  # its analysis frame in samples at that rate


def stoi(
    reference: Tensor | np.ndarray, degraded: Tensor | np.ndarray, sample_rate: int, extended: bool = False
) -> float:
    """STOI (Taal et al. 2011; ``extended=True`` for ESTOI) of one mono pair ``(S,)``, in [0, 1] for speech.

    ``pystoi`` resamples to 10 kHz internally. Returns ``nan`` (with a warning) for clips too short
    to hold one 30-frame analysis segment after silent-frame removal.
    """
    try:
        from pystoi import stoi as _stoi
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("STOI needs the 'pystoi' package: pip install pystoi") from exc
    ref = torch.as_tensor(reference, dtype=torch.float32).cpu().numpy().astype(np.float64)
    deg = torch.as_tensor(degraded, dtype=torch.float32).cpu().numpy().astype(np.float64)
    if ref.ndim != 1 or deg.ndim != 1:
        raise ValueError(f"expected mono waveforms (S,), got {ref.shape} and {deg.shape}")
    n = min(ref.shape[0], deg.shape[0])
    # pystoi fails (numpy AxisError) below one 256-sample frame at its internal 10 kHz.
    if n < math.ceil(STOI_FRAME_10K * sample_rate / STOI_SAMPLE_RATE) + 1:
        warnings.warn(f"STOI skipped a clip of {n} samples (shorter than one analysis frame)", stacklevel=2)
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            value = float(_stoi(ref[:n], deg[:n], sample_rate, extended=extended))
        except (ValueError, IndexError, np.exceptions.AxisError) as exc:
            warnings.warn(f"STOI skipped a clip ({type(exc).__name__}: {exc})", stacklevel=2)
            return float("nan")
    if not math.isfinite(value) or value == 1e-5:
        # pystoi returns 1e-5 (and warns) when fewer than 30 non-silent frames remain.
        warnings.warn("STOI skipped a clip (too short or silent after silent-frame removal)", stacklevel=2)
        return float("nan")
    return value


def speech_quality(
    reference: Tensor | np.ndarray, estimate: Tensor | np.ndarray, sample_rate: int
) -> tuple[float, float]:
    """``(PESQ-WB, STOI)`` of one mono pair ``(S,)``; ``nan`` for a score the clip is unfit for.

    Silent about skipped clips (no warnings), so it can run in worker processes; importable at
    module level so that ``ProcessPoolExecutor`` with the ``spawn`` start method can pickle it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pesq_wb(reference, estimate, sample_rate), stoi(reference, estimate, sample_rate)
