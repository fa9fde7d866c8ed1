"""Waveform discriminators for GAN-trained vocoders.

* :class:`MultiPeriodDiscriminator` (HiFi-GAN, Kong et al. 2020, arXiv 2010.05646): the waveform folded
  into ``(S / p, p)`` for periods 2, 3, 5, 7, 11, each judged by a stack of strided 2-D convs along time.
* :class:`MultiResolutionSTFTDiscriminator` (UnivNet, Jang et al. 2021, arXiv 2106.07889, as used by Vocos):
  magnitude spectrograms at several STFT resolutions, each judged by a 2-D conv stack.
* :class:`VocoderDiscriminator`: both together, the ``discriminator`` part of the vocoder task.

Every discriminator maps a waveform batch (B, S) to ``(logits, features)``: a list (one entry per
sub-discriminator) of logit maps and a list of lists of intermediate feature maps, the layout of
:mod:`transcoder.losses.adversarial`. Weight normalisation as in both papers. Written for this
repository from the papers' descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DiscriminatorOutput", "MultiPeriodDiscriminator", "MultiResolutionSTFTDiscriminator",
           "PeriodDiscriminator", "SpectrogramDiscriminator", "VocoderDiscriminator"]

#: ``(logits per sub-discriminator, feature maps per sub-discriminator per layer)``
DiscriminatorOutput = tuple[list[Tensor], list[list[Tensor]]]


def _conv_stack(x: Tensor, convs: nn.ModuleList, out: nn.Module) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU (0.1) conv stack and output conv: flattened logits (B, N) and every conv's feature map."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = out(x)
    features.append(x)
    return x.flatten(1), features


def _run_all(discriminators: nn.ModuleList, wave: Tensor) -> DiscriminatorOutput:
    """Every sub-discriminator on ``wave``: (list of logits, list of feature lists)."""
    outputs = [d(wave) for d in discriminators]
    return [o[0] for o in outputs], [o[1] for o in outputs]


def _check_wave(wave: Tensor) -> None:
    if wave.ndim != 2:
        raise ValueError(f"expected a waveform batch (B, S), got shape {tuple(wave.shape)}")


class PeriodDiscriminator(nn.Module):
    """One period of the MPD: (B, S) -> logits (B, 1, S'/p, p) and the feature maps of every conv.

    Args:
        period: fold width p (the waveform is right-padded by reflection to a multiple of p).
        channels: output channels of the strided (5, 1) convs (HiFi-GAN: 32, 128, 512, 1024), followed by
            one unstrided conv of ``channels[-1]`` and a (3, 1) output conv.
    """

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024)) -> None:
        super().__init__()
        self.period = int(period)
        layers, previous = [], 1
        for width in channels:
            layers.append(weight_norm(nn.Conv2d(previous, width, (5, 1), (3, 1), padding=(2, 0))))
            previous = width
        layers.append(weight_norm(nn.Conv2d(previous, previous, (5, 1), 1, padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(previous, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_wave(wave)
        batch, samples = wave.shape
        pad = -samples % self.period
        if pad:
            wave = F.pad(wave.unsqueeze(1), (0, pad), mode="reflect").squeeze(1)
        x = wave.reshape(batch, 1, -1, self.period)
        return _conv_stack(x, self.convs, self.out)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's MPD: one :class:`PeriodDiscriminator` per period. (B, S) -> :data:`DiscriminatorOutput`."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 channels: Sequence[int] = (32, 128, 512, 1024)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods])

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        return _run_all(self.discriminators, wave)


class SpectrogramDiscriminator(nn.Module):
    """One resolution of the MRD: (B, S) -> logits (B, T'·F') and the feature maps of every conv.

    The input is the linear magnitude spectrogram (B, 1, T, n_fft/2+1) with a Hann window (UnivNet).

    Args:
        n_fft, hop_length, win_length: the STFT.
        channels: width of the 2-D conv stack (UnivNet / Vocos: 32).
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = int(n_fft), int(hop_length), int(win_length)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        c = int(channels)
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_wave(wave)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                              center=True, return_complex=True).abs()  # (B, F, T)
        x = spec.transpose(1, 2).unsqueeze(1)  # (B, 1, T, F)
        return _conv_stack(x, self.convs, self.out)


class MultiResolutionSTFTDiscriminator(nn.Module):
    """One :class:`SpectrogramDiscriminator` per ``(n_fft, hop_length, win_length)``.
    (B, S) -> :data:`DiscriminatorOutput`.

    Default resolutions are Vocos' (2048/512, 1024/256, 512/128) scaled to 16 kHz by 2/3 and rounded to
    powers of two: (1024, 256), (512, 128), (256, 64).
    """

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((1024, 256, 1024), (512, 128, 512), (256, 64, 256)),
                 channels: int = 32) -> None:
        super().__init__()
        for resolution in resolutions:
            if len(resolution) != 3:
                raise ValueError(f"resolution {resolution!r}: expected [n_fft, hop_length, win_length]")
        self.discriminators = nn.ModuleList([SpectrogramDiscriminator(*r, channels=channels) for r in resolutions])

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        return _run_all(self.discriminators, wave)


class VocoderDiscriminator(nn.Module):
    """MPD + MRD, the vocoder task's ``discriminator`` part. ``forward`` returns both outputs by name.

    Args:
        periods, period_channels: :class:`MultiPeriodDiscriminator` settings (HiFi-GAN's by default).
        resolutions, stft_channels: :class:`MultiResolutionSTFTDiscriminator` settings.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 period_channels: Sequence[int] = (32, 128, 512, 1024),
                 resolutions: Sequence[Sequence[int]] = ((1024, 256, 1024), (512, 128, 512), (256, 64, 256)),
                 stft_channels: int = 32) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, period_channels)
        self.mrd = MultiResolutionSTFTDiscriminator(resolutions, stft_channels)

    def forward(self, wave: Tensor) -> dict[str, DiscriminatorOutput]:
        """(B, S) -> ``{"mpd": (logits, features), "mrd": (logits, features)}``."""
        return {"mpd": self.mpd(wave), "mrd": self.mrd(wave)}
