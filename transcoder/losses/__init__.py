"""Training losses: reconstruction (tokenizer) and adversarial terms (GAN-trained parts)."""

from transcoder.losses.adversarial import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from transcoder.losses.reconstruction import AudioTokenizerLoss
from transcoder.losses.tokenizer_gan import AudioTokenizerGanLoss

__all__ = ["AudioTokenizerGanLoss", "AudioTokenizerLoss", "discriminator_hinge_loss", "feature_matching_loss",
           "generator_hinge_loss"]
