"""Log-mel front end: waveform batch → clamped dB mel → model space [-1, 1], and its inverses.

Pipeline of :class:`LogMelFrontend` (all in fp32, on the module's device)::

    wave (B, S) → |STFT|^2 (B, n_fft/2+1, T) → @ mel filterbank → power mel P (B, T, n_mels)
    → dB = 10 log10(P / ref_power) → clamp [db_min, db_max] → x = 2 (dB - db_min) / (db_max - db_min) - 1

dB reference (fixed, independent of the clip): ``ref_power = n_fft * sum(window^2) / 4``, the
one-sided spectral power of a full-scale sine (amplitude 1) under this STFT. The filterbank's
triangles have peak 1 (no area normalisation), so a full-scale sine reads at most 0 dB in any
band; it reaches 0 dB only where the band is flat over the sine's whole Hann main lobe (measured
with the default settings: full-scale sines from 100 Hz to 7 kHz peak between -3.1 and -1.2 dB).
Real recordings sit well below: LibriSpeech speech peaks around -15 dB, and digital silence
maps to the floor db_min = -80 dB, i.e. model value -1.

Frames: the STFT is centred (zero padding of n_fft/2 at both ends, as librosa >= 0.10) and the
last frame, centred on the sample after the clip, is dropped, so ``S`` samples give exactly
``S // hop_length`` frames and ``target_length`` frames need ``target_length * hop_length``
samples (1024 frames = 163,840 samples = 10.24 s at 16 kHz). Frame ``t`` is centred on sample
``t * hop_length``; this equals ``librosa.feature.melspectrogram(..., norm=None)[:, :S // hop]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

__all__ = ["MelConfig", "LogMelFrontend"]


@dataclass
class MelConfig:
    """Settings of the log-mel front end; a flat dict of these keys lives in the YAML ``data:`` section.

    Attributes:
        sample_rate: audio sample rate in Hz the front end expects.
        n_mels: mel bands F.
        n_fft: FFT size; ``n_fft // 2 + 1`` linear bins.
        hop_length: samples between frames.
        win_length: Hann window length (``None`` = ``n_fft``; shorter windows are zero-padded).
        f_min, f_max: filterbank range in Hz (``f_max=None`` = Nyquist).
        target_length: frames T per training clip (the model's ``input_length``).
        db_min, db_max: clamp range in dB re. a full-scale sine; mapped to -1 and +1.
        mel_scale: ``"slaney"`` (librosa's default, linear below 1 kHz) or ``"htk"``.
        pad_mode: ``torch.stft`` padding of the centred frames; ``"constant"`` (zeros, as librosa
            >= 0.10) treats the outside of a clip as silence.
    """

    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int | None = None
    f_min: float = 0.0
    f_max: float | None = None
    target_length: int = 1024
    db_min: float = -80.0
    db_max: float = 0.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    pad_mode: Literal["constant", "reflect"] = "constant"

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length", "target_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MelConfig.{name}={value!r}: expected a positive integer")
        if self.win_length is not None and (not isinstance(self.win_length, int)
                                            or not 0 < self.win_length <= self.n_fft):
            raise ValueError(f"MelConfig.win_length={self.win_length!r}: expected None or an integer "
                             f"in [1, n_fft={self.n_fft}]")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < f_max <= nyquist:
            raise ValueError(f"MelConfig f_min={self.f_min!r}, f_max={self.f_max!r}: expected "
                             f"0 <= f_min < f_max <= sample_rate / 2 = {nyquist}")
        if not self.db_min < self.db_max:
            raise ValueError(f"MelConfig db_min={self.db_min!r}, db_max={self.db_max!r}: expected db_min < db_max")
        if self.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"MelConfig.mel_scale={self.mel_scale!r}: expected 'slaney' or 'htk'")
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"MelConfig.pad_mode={self.pad_mode!r}: expected 'constant' or 'reflect'")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Names of the mel settings (to pick them out of a larger ``data:`` section)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | MelConfig | None, *, strict: bool = True) -> MelConfig:
        """Build from a dict. ``strict=True``: an unknown key raises ``ValueError`` naming it and the
        valid keys. ``strict=False``: other keys are ignored, e.g. ``MelConfig.from_dict(cfg["data"],
        strict=False)`` takes the mel settings out of a data section that also holds batch_size.
        """
        if isinstance(values, MelConfig):
            return values
        values = dict(values or {})
        valid = cls.keys()
        unknown = sorted(set(values) - set(valid))
        if unknown and strict:
            raise ValueError(f"unknown mel config key(s) {unknown}; valid keys: {list(valid)}")
        return cls(**{k: v for k, v in values.items() if k in valid})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/checkpoint friendly); ``MelConfig.from_dict(c.to_dict()) == c``."""
        return dataclasses.asdict(self)

    @property
    def n_freqs(self) -> int:
        """Linear STFT bins ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def clip_samples(self) -> int:
        """Samples per training clip: ``num_samples(target_length)``."""
        return self.num_samples(self.target_length)

    def num_samples(self, frames: int) -> int:
        """Samples for which the front end returns exactly ``frames`` frames: ``frames * hop_length``."""
        return int(frames) * self.hop_length

    def num_frames(self, samples: int) -> int:
        """Frames the front end returns for ``samples`` samples: ``samples // hop_length``."""
        return int(samples) // self.hop_length


class LogMelFrontend(nn.Module):
    """Batched log-mel front end into model space, with exact inverses.

    Window and filterbank are non-persistent buffers (built once, follow ``.to(device)``, not
    stored in state dicts: the :class:`MelConfig` travels in checkpoints instead).

    Attributes:
        config: the :class:`MelConfig`.
        window: Hann window ``(win_length,)``.
        mel_fbank: filterbank ``(n_freqs, n_mels)``, ``power_mel = |STFT|^2 @ mel_fbank`` (per frame).
        ref_power: the 0 dB power (see the module docstring).
        power: 2.0, the spectrogram exponent (power, not magnitude).
    """

    power: float = 2.0

    def __init__(self, config: MelConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = MelConfig.from_dict(config)
        c = self.config
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float64)
        fbank = AF.melscale_fbanks(
            c.n_freqs, f_min=float(c.f_min), f_max=float(c.f_max if c.f_max is not None else c.sample_rate / 2),
            n_mels=c.n_mels, sample_rate=c.sample_rate, norm=None, mel_scale=c.mel_scale,
        )
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_fbank", fbank.float(), persistent=False)
        self.ref_power = float(c.n_fft * (window**2).sum() / 4)
        self._db_offset = 10.0 * math.log10(self.ref_power)

    # STFT settings, for the vocoder and anything else that must match them.
    @property
    def n_fft(self) -> int:
        return self.config.n_fft

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def win_length(self) -> int:
        return self.config.win_length or self.config.n_fft

    @property
    def stft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``torch.stft`` call, window included (``torch.istft`` takes all but pad_mode)."""
        return {"n_fft": self.n_fft, "hop_length": self.hop_length, "win_length": self.win_length,
                "window": self.window, "center": True, "pad_mode": self.config.pad_mode}

    def num_frames(self, samples: int) -> int:
        return self.config.num_frames(samples)

    def num_samples(self, frames: int) -> int:
        return self.config.num_samples(frames)

    def power_mel(self, wave: Tensor) -> Tensor:
        """Power mel spectrogram (un-referenced, ``|STFT|^2 @ mel_fbank``): (..., S) → (..., S // hop, n_mels).

        Always computed in fp32, also under autocast.
        """
        if wave.ndim < 1:
            raise ValueError(f"expected a waveform (..., S), got a scalar of shape {tuple(wave.shape)}")
        frames = self.num_frames(wave.shape[-1])
        if frames == 0:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is shorter than one hop ({self.hop_length})")
        return self._power_mel(wave, center=True, frames=frames)

    def segment_length(self, frames: int) -> int:
        """Samples of a context segment giving ``frames`` frames in :meth:`segment_power_mel`:
        ``(frames - 1) * hop_length + n_fft`` (the frames' samples plus the STFT's half window each side)."""
        return (int(frames) - 1) * self.hop_length + self.n_fft

    def segment_power_mel(self, segments: Tensor) -> Tensor:
        """Power mel of context segments, without padding: (..., L) → (..., (L - n_fft) // hop + 1, n_mels).

        Frame ``t`` covers samples ``[t * hop, t * hop + n_fft)`` of the segment. A segment holding samples
        ``[k*W*hop - n_fft//2, k*W*hop - n_fft//2 + segment_length(W))`` of the centred-padded signal
        (see :class:`transcoder.audio.windows.WindowSegmenter`) gives exactly frames ``[k*W, (k+1)*W)`` of
        :meth:`power_mel` of the whole signal: the same STFT frames, window by window.
        """
        if segments.ndim < 1 or segments.shape[-1] < self.n_fft:
            raise ValueError(f"segments must be (..., L) with L >= n_fft={self.n_fft}, got shape "
                             f"{tuple(segments.shape)}")
        frames = (segments.shape[-1] - self.n_fft) // self.hop_length + 1
        return self._power_mel(segments, center=False, frames=frames)

    def _power_mel(self, wave: Tensor, center: bool, frames: int) -> Tensor:
        """``|STFT|^2 @ mel_fbank`` of (..., S), first ``frames`` frames, in fp32: (..., frames, n_mels)."""
        lead, samples = wave.shape[:-1], wave.shape[-1]
        with torch.autocast(device_type=wave.device.type, enabled=False):
            flat = wave.reshape(-1, samples).float()
            spec = torch.stft(flat, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window.float(), center=center, pad_mode=self.config.pad_mode,
                              return_complex=True)
            # centred: (N, n_freqs, frames + 1); drop the frame centred past the end of the clip.
            spec = spec[:, :, :frames]
            # re^2 + im^2 in two passes; |z|^2 via abs() is ~3x slower on CPU (hypot, then square).
            power = spec.real.square().addcmul_(spec.imag, spec.imag)
            mel = power.transpose(1, 2) @ self.mel_fbank.float()
        return mel.reshape(*lead, frames, self.config.n_mels)

    def power_to_db(self, mel: Tensor) -> Tensor:
        """Power mel → dB re. ``ref_power``, unclamped (zero power gives about -430 dB, not -inf)."""
        tiny = torch.finfo(torch.float32).tiny
        return 10.0 * torch.log10(mel.float().clamp_min(tiny)) - self._db_offset

    def db_to_power(self, db: Tensor) -> Tensor:
        """Exact inverse of :meth:`power_to_db` (for powers above ~1e-38)."""
        return torch.pow(10.0, (db.float() + self._db_offset) / 10.0)

    def db_to_model(self, db: Tensor) -> Tensor:
        """Clamp to ``[db_min, db_max]`` and map affinely to model space ``[-1, 1]``."""
        c = self.config
        return (db.clamp(c.db_min, c.db_max) - c.db_min) * (2.0 / (c.db_max - c.db_min)) - 1.0

    def model_to_db(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`db_to_model` (no clamping: values outside [-1, 1] extrapolate)."""
        c = self.config
        return (x.float() + 1.0) * ((c.db_max - c.db_min) / 2.0) + c.db_min

    def inverse(self, x: Tensor) -> Tensor:
        """Model space (B, T, F) → power mel (B, T, F), the input of a Griffin-Lim vocoder.

        Exact inverse of :meth:`forward` wherever the power mel lies inside the clamp range.
        """
        return self.db_to_power(self.model_to_db(x))

    def forward(self, wave: Tensor) -> Tensor:
        """Waveforms (B, S) → model-space log-mel (B, S // hop_length, n_mels) in [-1, 1], fp32.

        Leading dims are free: (S,) → (T, F), (B, C, S) → (B, C, T, F).
        """
        return self._power_to_model(self.power_mel(wave))

    def forward_segments(self, segments: Tensor) -> Tensor:
        """Context segments (B, L) → model-space log-mel (B, (L - n_fft) // hop + 1, n_mels); see
        :meth:`segment_power_mel`. Used to run the front end window by window on long signals."""
        return self._power_to_model(self.segment_power_mel(segments))

    def _power_to_model(self, mel: Tensor) -> Tensor:
        """Power mel → model space [-1, 1] (in place when no gradient is needed)."""
        if mel.requires_grad:
            return self.db_to_model(self.power_to_db(mel))
        # Same maths fused in place (the elementwise chain otherwise costs as much as the STFT):
        # clamping the power at db_min before the log equals clamping the dB after it.
        c = self.config
        scale = 2.0 / (c.db_max - c.db_min)
        floor = self.ref_power * 10.0 ** (c.db_min / 10.0)
        mel = mel.clamp_min_(floor).log10_().mul_(10.0 * scale)
        return mel.add_(-(self._db_offset + c.db_min) * scale - 1.0).clamp_max_(1.0)

    def extra_repr(self) -> str:
        c = self.config
        return (f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, hop_length={c.hop_length}, "
                f"win_length={self.win_length}, n_mels={c.n_mels}, mel_scale={c.mel_scale}, "
                f"db_range=[{c.db_min}, {c.db_max}]")
