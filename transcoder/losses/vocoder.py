"""Losses of the vocoder task: multi-resolution mel L1, hinge adversarial terms and feature matching.

Weights follow HiFi-GAN (Kong et al. 2020: mel 45, feature matching 2, adversarial 1) and Vocos
(Siuzdak 2023: mel 45, the multi-resolution STFT discriminator's terms scaled by 0.1). As in both papers
the adversarial and feature-matching terms are SUMS over sub-discriminators (and, for feature matching,
over layers) of per-map means, so the weights mean what they mean there; the shared helpers of
:mod:`transcoder.losses.adversarial` return means, which are multiplied back by the counts here.
The mel loss is the mean over resolutions of the L1 between natural-log magnitude mels (clamped at
1e-5), HiFi-GAN's mel loss taken at several resolutions as in DAC (Kumar et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio
from torch import Tensor, nn

from transcoder.losses.adversarial import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from transcoder.models.discriminators import DiscriminatorOutput

__all__ = ["MultiResolutionMelLoss", "VocoderLoss"]


class MultiResolutionMelLoss(nn.Module):
    """Mean over resolutions of ``L1(log mel(fake), log mel(real))``; (B, S), (B, S) -> scalar.

    Args:
        sample_rate: of the waveforms.
        resolutions: ``[n_fft, hop_length, n_mels]`` per resolution (defaults suit 16 kHz speech).
        f_max: upper edge of the filterbanks (``None``: Nyquist).
    """

    def __init__(self, sample_rate: int = 16000,
                 resolutions: Sequence[Sequence[int]] = ((256, 64, 40), (512, 128, 80), (1024, 256, 128)),
                 f_max: float | None = None) -> None:
        super().__init__()
        for resolution in resolutions:
            if len(resolution) != 3:
                raise ValueError(f"mel resolution {resolution!r}: expected [n_fft, hop_length, n_mels]")
        self.mels = nn.ModuleList([
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=int(n_fft), hop_length=int(hop), n_mels=int(mels),
                                                 f_max=f_max, power=1.0, center=True, norm="slaney",
                                                 mel_scale="slaney")
            for n_fft, hop, mels in resolutions])

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        if fake.shape != real.shape:
            raise ValueError(f"fake {tuple(fake.shape)} and real {tuple(real.shape)} waveforms differ in shape")
        with torch.autocast(device_type=fake.device.type, enabled=False):
            terms = [torch.nn.functional.l1_loss(torch.log(mel(fake.float()).clamp_min(1e-5)),
                                                 torch.log(mel(real.float()).clamp_min(1e-5)))
                     for mel in self.mels]
        return torch.stack(terms).mean()


def _count_maps(features: list[list[Tensor]]) -> int:
    return sum(len(layers) for layers in features)


class VocoderLoss(nn.Module):
    """The vocoder's generator and discriminator objectives.

    Args:
        sample_rate: of the waveforms (for the mel loss).
        mel_weight: weight of the multi-resolution mel L1 (45).
        adv_weight: weight of the generator hinge terms of the MPD (1).
        fm_weight: weight of the MPD feature matching (2, HiFi-GAN's; Vocos uses 1).
        mrd_weight: extra factor on the MRD's adversarial and feature-matching terms (Vocos: 0.1).
        disc_start_step: generator updates with the mel loss only before the discriminators start.
        mel_resolutions: ``[n_fft, hop_length, n_mels]`` per resolution of :class:`MultiResolutionMelLoss`.
    """

    def __init__(self, sample_rate: int = 16000, mel_weight: float = 45.0, adv_weight: float = 1.0,
                 fm_weight: float = 2.0, mrd_weight: float = 0.1, disc_start_step: int = 0,
                 mel_resolutions: Sequence[Sequence[int]] = ((256, 64, 40), (512, 128, 80), (1024, 256, 128))) -> None:
        super().__init__()
        if isinstance(disc_start_step, bool) or not isinstance(disc_start_step, int) or disc_start_step < 0:
            raise ValueError(f"disc_start_step={disc_start_step!r}: expected an integer >= 0")
        self.mel_loss = MultiResolutionMelLoss(sample_rate, mel_resolutions)
        self.mel_weight, self.adv_weight, self.fm_weight = float(mel_weight), float(adv_weight), float(fm_weight)
        self.mrd_weight = float(mrd_weight)
        self.disc_start_step = disc_start_step

    def adversarial_active(self, generator_updates: int) -> bool:
        """Whether the discriminators train (and the generator sees them) after this many generator updates."""
        return generator_updates >= self.disc_start_step

    def _scale(self, name: str) -> float:
        return 1.0 if name == "mpd" else self.mrd_weight

    def discriminator(self, real: dict[str, DiscriminatorOutput],
                      fake: dict[str, DiscriminatorOutput]) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of every sub-discriminator, summed (the MRD's scaled by ``mrd_weight``).

        Returns ``(total, {"loss/disc_mpd": ..., "loss/disc_mrd": ...})`` (terms detached, unscaled)."""
        total, terms = None, {}
        for name in real:
            logits_real, logits_fake = real[name][0], fake[name][0]
            loss = discriminator_hinge_loss(logits_real, logits_fake) * len(logits_real)
            terms[f"loss/disc_{name}"] = loss.detach()
            total = loss * self._scale(name) if total is None else total + loss * self._scale(name)
        assert total is not None
        return total, terms

    def generator(self, fake_wave: Tensor, real_wave: Tensor, real: dict[str, DiscriminatorOutput] | None,
                  fake: dict[str, DiscriminatorOutput] | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Mel L1, plus hinge and feature-matching terms when discriminator outputs are given.

        Returns ``(total, terms)`` with ``loss/total`` first, then ``loss/mel``, ``loss/gen_<d>``,
        ``loss/fm_<d>`` (zeros before the discriminators start, so every step logs the same keys)."""
        mel = self.mel_loss(fake_wave, real_wave)
        total = self.mel_weight * mel
        terms = {"loss/mel": mel.detach()}
        for name in ("mpd", "mrd"):
            if real is None or fake is None:
                gen = fm = torch.zeros((), device=mel.device)
            else:
                gen = generator_hinge_loss(fake[name][0]) * len(fake[name][0])
                fm = feature_matching_loss(real[name][1], fake[name][1]) * _count_maps(fake[name][1])
                total = total + self._scale(name) * (self.adv_weight * gen + self.fm_weight * fm)
            terms[f"loss/gen_{name}"], terms[f"loss/fm_{name}"] = gen.detach(), fm.detach()
        return total, {"loss/total": total.detach(), **terms}
