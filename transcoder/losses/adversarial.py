"""Adversarial loss terms shared by every GAN-trained part (the vocoder, the mel discriminator).

Discriminators return, per sub-discriminator, its logits and its intermediate feature maps; the losses
below take lists over sub-discriminators. Hinge loss as in Lim & Ye 2017 (used by Vocos and BSQ-ViT);
feature matching as in MelGAN (Kumar et al. 2019) and HiFi-GAN (Kong et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discriminator_hinge_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """Mean over sub-discriminators of ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]``."""
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError(f"expected equal, non-empty lists of logits, got {len(real_logits)} and {len(fake_logits)}")
    terms = [F.relu(1 - real).mean() + F.relu(1 + fake).mean()
             for real, fake in zip(real_logits, fake_logits, strict=True)]
    return torch.stack(terms).mean()


def generator_hinge_loss(fake_logits: list[Tensor]) -> Tensor:
    """Mean over sub-discriminators of ``E[relu(1 - D(fake))]`` (Vocos' generator hinge loss)."""
    if not fake_logits:
        raise ValueError("expected a non-empty list of logits")
    return torch.stack([F.relu(1 - fake).mean() for fake in fake_logits]).mean()


def feature_matching_loss(real_features: list[list[Tensor]], fake_features: list[list[Tensor]]) -> Tensor:
    """Mean L1 between the discriminator's feature maps of real and generated input, averaged over layers
    and sub-discriminators (lists of lists of tensors). Real features are detached."""
    terms = [F.l1_loss(fake, real.detach())
             for real_layers, fake_layers in zip(real_features, fake_features, strict=True)
             for real, fake in zip(real_layers, fake_layers, strict=True)]
    if not terms:
        raise ValueError("expected feature maps from at least one discriminator layer")
    return torch.stack(terms).mean()
