"""Griffin-Lim vocoder for power mel spectrograms.

A mel spectrogram is ``M = S @ fbank`` where ``S`` (frames x linear bins) is the power (or magnitude)
spectrogram and ``fbank`` (linear bins x mels) the triangular mel filterbank.  Inverting it needs a
linear spectrogram first.  The plain least-squares inverse (torchaudio's ``InverseMelScale``) yields
negative bins that are clipped afterwards; solving the *non-negative* least-squares problem

    min_S ||S @ fbank - M||^2   subject to   S >= 0

instead gives audibly better Griffin-Lim output.  The solver here is batched and runs on whatever
device the input lives on: a pseudo-inverse start followed by Lee-Seung multiplicative updates
(Lee & Seung 2001), which keep every iterate non-negative without a step size because ``M`` and
``fbank`` are both non-negative.  Multiplicative updates from a smooth start converge to a smooth
solution of the (under-determined at high frequencies) problem; an exact active-set NNLS picks a
sparse vertex solution that sounds much worse (measured: PESQ-WB 2.5 vs 3.6).

Phase is then recovered with Griffin-Lim (Griffin & Lim 1984) using ``torchaudio.functional.griffinlim``
with momentum (fast Griffin-Lim, Perraudin et al. 2013).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

from transcoder.audio.mel import LogMelFrontend

__all__ = ["GriffinLimRenderer", "GriffinLimVocoder", "nnls_mel_inverse"]


def _check_fbank(fbank: Tensor) -> None:
    if fbank.ndim != 2:
        raise ValueError(f"fbank must be 2-D (n_freqs, n_mels), got shape {tuple(fbank.shape)}")
    if bool((fbank < 0).any()):
        raise ValueError("fbank has negative entries; a mel filterbank must be non-negative")


def nnls_mel_inverse(
    mel: Tensor,
    fbank: Tensor,
    n_iter: int = 100,
    pinv: Tensor | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Non-negative least-squares inverse of a mel filterbank, batched.

    Solves ``min_S ||S @ fbank - mel||^2, S >= 0`` independently for every frame.

    Args:
        mel: non-negative mel spectrogram ``(..., T, n_mels)`` (power or magnitude, same domain as output).
        fbank: mel filterbank ``(n_freqs, n_mels)`` with ``mel = spec @ fbank``.
        n_iter: multiplicative-update iterations after the pseudo-inverse start (0 = clipped pinv only).
        pinv: optional precomputed ``torch.linalg.pinv(fbank)`` ``(n_mels, n_freqs)``.
        eps: guards the division; relative to each frame's energy.

    Returns:
        Linear spectrogram ``(..., T, n_freqs)``, non-negative, same dtype/device as ``mel``.
    """
    _check_fbank(fbank)
    if mel.shape[-1] != fbank.shape[1]:
        raise ValueError(
            f"mel has {mel.shape[-1]} bins in its last dim but fbank has {fbank.shape[1]} mel bands"
        )
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    out_dtype = mel.dtype
    # fp32 at least: the updates divide small numbers and bf16/fp16 lose the quiet bins.
    work_dtype = torch.promote_types(mel.dtype, torch.float32)
    m = mel.to(work_dtype).clamp_min(0)
    fb = fbank.to(device=m.device, dtype=work_dtype)
    if pinv is None:
        pinv = torch.linalg.pinv(fb)
    pinv = pinv.to(device=m.device, dtype=work_dtype)

    s = m @ pinv
    if n_iter == 0:
        return s.clamp_min(0).to(out_dtype)
    # Entries that start at exactly zero can never move under multiplicative updates, so lift the
    # clipped start to a small per-frame floor; bins the filterbank cannot see (zero column) still
    # get a zero numerator and decay to zero.
    frame_scale = s.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(work_dtype).tiny)
    s = s.clamp_min(0) + 1e-4 * frame_scale
    numerator = m @ fb.T
    tiny = eps * frame_scale
    for _ in range(n_iter):
        s = s * numerator / ((s @ fb) @ fb.T + tiny)
    return s.to(out_dtype)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    # Seed only the generator the random phase is drawn from, inside a fork that restores it, so
    # rendering audio never changes any other random stream (the trainer relies on this).
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device], device_type="cuda"), torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield


class GriffinLimVocoder(nn.Module):
    """Power mel ``(B, T, n_mels)`` -> waveform ``(B, samples)`` via NNLS mel inverse + Griffin-Lim.

    Args:
        fbank: mel filterbank ``(n_freqs, n_mels)``, ``n_freqs = n_fft // 2 + 1``, with ``mel = spec @ fbank``.
        n_fft: FFT size used by the front end.
        hop_length: hop in samples.
        win_length: window length (defaults to ``n_fft``).
        window: the analysis window ``(win_length,)`` (Hann when ``None``).
        power: exponent of the spectrogram the mel was built from (2 = power, 1 = magnitude).
        n_iter: Griffin-Lim iterations.
        momentum: fast Griffin-Lim momentum (0.99 is torchaudio's default).
        nnls_iter: multiplicative-update iterations of the mel inverse.
        rand_init: random initial phase (better quality than zero phase at 32 iterations).
        last_frame_dropped: frame convention of the mels. ``True`` (this repo's ``LogMelFrontend``):
            ``S`` samples give ``S // hop`` centred frames, the frame centred past the end being dropped.
            ``False`` (``torch.stft``/torchaudio/librosa default): ``S // hop + 1`` frames.
        floor_power: power of the front end's clamp floor (``db_min``), or ``None``. Mel bins at the
            floor (within 0.01 dB) only say "this quiet or quieter"; they are rendered at
            ``floor_fill_power`` instead. Rendering them at the floor itself adds a stationary noise
            bed to every pause (measured on LibriSpeech: PESQ-WB 2.87 at the -80 dB floor, 3.43 with
            floor bins at -100 dB, 3.48 without any clamp).
        floor_fill_power: power that floor bins are rendered at (``floor_power`` / 100 if ``None``).
    """

    def __init__(
        self,
        fbank: Tensor,
        n_fft: int,
        hop_length: int,
        win_length: int | None = None,
        window: Tensor | None = None,
        power: float = 2.0,
        n_iter: int = 32,
        momentum: float = 0.99,
        nnls_iter: int = 100,
        rand_init: bool = True,
        last_frame_dropped: bool = True,
        floor_power: float | None = None,
        floor_fill_power: float | None = None,
    ) -> None:
        super().__init__()
        _check_fbank(fbank)
        if fbank.shape[0] != n_fft // 2 + 1:
            raise ValueError(
                f"fbank has {fbank.shape[0]} frequency rows but n_fft={n_fft} gives {n_fft // 2 + 1}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        win_length = n_fft if win_length is None else win_length
        if window is None:
            window = torch.hann_window(win_length, periodic=True)
        if window.shape != (win_length,):
            raise ValueError(f"window has shape {tuple(window.shape)}, expected ({win_length},)")
        fb = fbank.detach().to(torch.float32)
        self.register_buffer("fbank", fb, persistent=False)
        self.register_buffer("fbank_pinv", torch.linalg.pinv(fb.double()).float(), persistent=False)
        self.register_buffer("window", window.detach().to(torch.float32), persistent=False)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.power = float(power)
        self.n_iter = int(n_iter)
        self.momentum = float(momentum)
        self.nnls_iter = int(nnls_iter)
        self.rand_init = bool(rand_init)
        self.last_frame_dropped = bool(last_frame_dropped)
        if floor_power is not None and floor_power <= 0:
            raise ValueError(f"floor_power must be positive, got {floor_power}")
        self.floor_power = None if floor_power is None else float(floor_power)
        if floor_fill_power is None and floor_power is not None:
            floor_fill_power = floor_power / 100.0
        self.floor_fill_power = None if floor_fill_power is None else float(floor_fill_power)

    @classmethod
    def from_frontend(cls, frontend: LogMelFrontend, floor_db_drop: float | None = 20.0,
                      **kwargs: Any) -> GriffinLimVocoder:
        """Build a vocoder matching a :class:`LogMelFrontend` (its filterbank, STFT settings and window).

        Args:
            frontend: the front end the mels came from.
            floor_db_drop: render bins at the front end's ``db_min`` floor this many dB lower
                (``None`` or 0 renders them at the floor); see ``floor_power``.
            kwargs: other constructor arguments (``n_iter``, ``nnls_iter``, ...).
        """
        config = frontend.config
        kwargs.setdefault("power", frontend.power)
        if floor_db_drop:
            floor = float(frontend.db_to_power(torch.tensor(float(config.db_min))))
            kwargs.setdefault("floor_power", floor)
            kwargs.setdefault("floor_fill_power", floor * 10.0 ** (-float(floor_db_drop) / 10.0))
        return cls(fbank=frontend.mel_fbank, n_fft=config.n_fft, hop_length=frontend.hop_length,
                   win_length=frontend.win_length, window=frontend.window, **kwargs)

    def num_samples(self, frames: int) -> int:
        """Default output length for ``frames`` frames: ``frames * hop`` (or ``(frames - 1) * hop``
        when ``last_frame_dropped=False``)."""
        return (frames if self.last_frame_dropped else frames - 1) * self.hop_length

    def mel_to_linear(self, mel: Tensor) -> Tensor:
        """NNLS inverse: mel ``(B, T, n_mels)`` -> linear spectrogram ``(B, T, n_freqs)`` (same power)."""
        return nnls_mel_inverse(mel, self.fbank, n_iter=self.nnls_iter, pinv=self.fbank_pinv)

    @torch.no_grad()
    def forward(self, mel: Tensor, length: int | None = None, seed: int | None = None) -> Tensor:
        """Render a power mel spectrogram to audio.

        Args:
            mel: non-negative mel spectrogram ``(B, T, n_mels)`` or ``(T, n_mels)``, in the front end's
                power domain (not dB, not model space).
            length: output length in samples (default :meth:`num_samples` of ``T``); the signal is
                trimmed or zero-padded to it.
            seed: seed for the random initial phase, for reproducible output.

        Returns:
            Waveform ``(B, length)`` (or ``(length,)`` for an unbatched input), float32.
        """
        if mel.ndim not in (2, 3):
            raise ValueError(f"mel must be (B, T, n_mels) or (T, n_mels), got shape {tuple(mel.shape)}")
        if mel.shape[-1] != self.fbank.shape[1]:
            raise ValueError(f"mel has {mel.shape[-1]} bins but the vocoder has {self.fbank.shape[1]}")
        squeeze = mel.ndim == 2
        if squeeze:
            mel = mel.unsqueeze(0)
        mel = mel.float()
        if self.floor_power is not None:
            at_floor = mel <= self.floor_power * 1.0023  # 0.01 dB
            mel = torch.where(at_floor, torch.full_like(mel, self.floor_fill_power), mel)
        frames = mel.shape[1]
        if length is None:
            length = self.num_samples(frames)
        spec = self.mel_to_linear(mel).transpose(1, 2)  # (B, n_freqs, T)
        if self.last_frame_dropped:
            # torchaudio's Griffin-Lim re-analyses with S // hop + 1 frames; restore the dropped
            # frame as a copy of the last one so the frame grids line up.
            spec = torch.cat([spec, spec[..., -1:]], dim=-1)
        gl_length = (spec.shape[-1] - 1) * self.hop_length
        window = self.window.to(spec.device)
        with _seeded(seed, spec.device):
            wave = torchaudio.functional.griffinlim(
                spec,
                window=window,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                power=self.power,
                n_iter=self.n_iter,
                momentum=self.momentum,
                length=gl_length,
                rand_init=self.rand_init,
            )
        if length <= gl_length:
            wave = wave[..., :length]
        else:
            wave = torch.nn.functional.pad(wave, (0, length - gl_length))
        return wave[0] if squeeze else wave


class GriffinLimRenderer(nn.Module):
    """The :class:`~transcoder.audio.render.Renderer` of Griffin-Lim: model-space log-mel ``(B, T, F)`` ->
    power (the front end's inverse) -> :class:`GriffinLimVocoder` -> waveform ``(B, T * hop)``.

    Args:
        frontend: the front end the mels came from (its inverse and STFT settings are used).
        kwargs: :meth:`GriffinLimVocoder.from_frontend` arguments (``n_iter``, ``nnls_iter``, ``floor_db_drop``...).
    """

    kind = "griffin-lim"
    coherent = False  # every render draws its own random initial phase

    def __init__(self, frontend: LogMelFrontend, **kwargs: Any) -> None:
        super().__init__()
        self.frontend = frontend
        self.vocoder = GriffinLimVocoder.from_frontend(frontend, **kwargs)

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.config.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.frontend.hop_length)

    @torch.no_grad()
    def forward(self, mel: Tensor, length: int | None = None, seed: int | None = None) -> Tensor:
        """Model-space mel ``(B, T, F)`` or ``(T, F)`` -> float32 waveform ``(B, length)`` or ``(length,)`` on the
        renderer's device (``length`` default ``T * hop``; ``seed``: the initial phase, ``None`` random)."""
        mel = mel.to(self.vocoder.fbank.device)
        return self.vocoder(self.frontend.inverse(mel.float()), length=length, seed=seed)

    def render(self, mel: Tensor, length: int | None = None, seed: int | None = None) -> Tensor:
        """See :meth:`forward` (the :class:`~transcoder.audio.render.Renderer` call)."""
        return self(mel, length, seed)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "n_iter": self.vocoder.n_iter, "nnls_iter": self.vocoder.nnls_iter}
