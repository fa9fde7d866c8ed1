"""The tokenizer loss with a mel-domain adversarial term (task ``tokenizer_gan``).

As in VQGAN (Esser et al. 2021) and BSQ-ViT: the generator's adversarial loss is weighted adaptively by
``|grad_W rec| / |grad_W gan|`` at the decoder's last layer ``W`` (so it never dominates the reconstruction
loss, whatever their scales), times ``disc_weight``, and switched on after ``disc_start`` generator updates.
The hinge and feature-matching terms come from :mod:`transcoder.losses.adversarial`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from transcoder.losses.reconstruction import AudioTokenizerLoss


class AudioTokenizerGanLoss(AudioTokenizerLoss):
    """:class:`AudioTokenizerLoss` plus the settings of the adversarial terms.

    Args:
        disc_weight: weight of the generator's hinge loss (times the adaptive weight when enabled).
        disc_start: generator updates before the discriminator trains and the adversarial terms apply.
        adaptive_weight: scale the adversarial loss by ``|grad rec| / |grad gan|`` at the decoder's last layer.
        max_adaptive_weight: clamp of the adaptive weight (VQGAN: 1e4).
        feature_matching_weight: weight of the discriminator feature-matching L1 (0: off).
        **kwargs: the reconstruction settings of :class:`AudioTokenizerLoss`.
    """

    def __init__(self, disc_weight: float = 0.1, disc_start: int = 0, adaptive_weight: bool = True,
                 max_adaptive_weight: float = 1e4, feature_matching_weight: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("disc_weight", disc_weight), ("max_adaptive_weight", max_adaptive_weight),
                            ("feature_matching_weight", feature_matching_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"loss.params.{name}={value!r}: expected a number >= 0")
        if isinstance(disc_start, bool) or not isinstance(disc_start, int) or disc_start < 0:
            raise ValueError(f"loss.params.disc_start={disc_start!r}: expected an integer >= 0")
        if not isinstance(adaptive_weight, bool):
            raise ValueError(f"loss.params.adaptive_weight={adaptive_weight!r}: expected true or false")
        self.disc_weight = float(disc_weight)
        self.disc_start = disc_start
        self.adaptive_weight = adaptive_weight
        self.max_adaptive_weight = float(max_adaptive_weight)
        self.feature_matching_weight = float(feature_matching_weight)

    def gan_active(self, generator_updates: int) -> bool:
        """Whether the discriminator trains and the adversarial terms apply after this many updates."""
        return generator_updates >= self.disc_start

    def gan_weight(self, rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor | Sequence[Tensor]) -> Tensor:
        """``disc_weight`` times, with ``adaptive_weight``, ``|d rec / d W| / (|d gan / d W| + 1e-4)`` clamped
        to ``[0, max_adaptive_weight]`` (a detached scalar). Both losses must still have their graphs."""
        if not self.adaptive_weight:
            return torch.tensor(self.disc_weight, device=rec_loss.device)
        rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
        gan_grads = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
        rec_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in rec_grads]))
        gan_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gan_grads]))
        weight = (rec_norm / (gan_norm + 1e-4)).clamp(0.0, self.max_adaptive_weight).detach()
        return weight * self.disc_weight
