"""A multi-scale 2-D patch discriminator on log-mel spectrograms (for :mod:`transcoder.tasks.tokenizer_gan`).

Each sub-discriminator is a PatchGAN (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks"): strided 2-D convolutions whose output is a map of real/fake logits, one per
receptive-field patch of the spectrogram, here over (time, mel) cells. Sub-discriminator ``k`` sees the
input average-pooled by ``2^k`` along both axes (the multi-scale arrangement of MelGAN, Kumar et al.
2019), so coarse and fine spectral texture are both judged. BSQ-ViT and VQGAN use a single PatchGAN on
images; this is its log-mel counterpart.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator2d(nn.Module):
    """(B, 1, T, F) → logits (B, 1, T', F') and the feature maps after every hidden layer.

    ``layers`` stride-2 convolutions (kernel 4) double the channels from ``channels`` (capped at 8x),
    then a stride-1 convolution (kernel 3) and a 1-channel output convolution (kernel 3). LeakyReLU(0.2),
    no normalisation (so the discriminator behaves the same for any batch size).
    """

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width_in = 1
        for index in range(layers):
            width_out = channels * min(2**index, 8)
            blocks.append(nn.Conv2d(width_in, width_out, kernel_size=4, stride=2, padding=1))
            width_in = width_out
        blocks.append(nn.Conv2d(width_in, width_in, kernel_size=3, stride=1, padding=1))
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.Conv2d(width_in, 1, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for conv in self.hidden:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.output(x), features


class MultiScaleMelDiscriminator(nn.Module):
    """``num_scales`` patch discriminators on a (B, T, F) log-mel pooled by 1, 2, 4, ... .

    Args:
        channels: channels of the first convolution of each sub-discriminator.
        layers: stride-2 convolutions per sub-discriminator.
        num_scales: number of sub-discriminators (scale ``k`` pools by ``2^k`` in time and frequency).

    ``forward(mel)`` returns ``(logits, features)``: a list over sub-discriminators of (B, 1, T_k, F_k)
    logit maps and a list over sub-discriminators of lists of feature maps, the layout
    :func:`transcoder.losses.discriminator_hinge_loss` and :func:`transcoder.losses.feature_matching_loss` take.
    """

    def __init__(self, channels: int = 32, layers: int = 3, num_scales: int = 2) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("layers", layers), ("num_scales", num_scales)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"discriminator.params.{name}={value!r}: expected a positive integer")
        self.discriminators = nn.ModuleList(PatchDiscriminator2d(channels, layers) for _ in range(num_scales))

    def forward(self, mel: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        """(B, T, F) log-mel → (logits per scale, feature maps per scale)."""
        if mel.ndim != 3:
            raise ValueError(f"expected a log-mel batch (B, T, F), got shape {tuple(mel.shape)}")
        x = mel.unsqueeze(1)
        all_logits, all_features = [], []
        for index, discriminator in enumerate(self.discriminators):
            if index:
                x = F.avg_pool2d(x, 2, ceil_mode=True)
            logits, features = discriminator(x)
            all_logits.append(logits)
            all_features.append(features)
        return all_logits, all_features
