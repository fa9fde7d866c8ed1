"""Training losses: reconstruction (tokenizer), adversarial terms (GAN-trained parts) and the vocoder's."""

from transcoder.losses.adversarial import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from transcoder.losses.reconstruction import AudioTokenizerLoss
from transcoder.losses.tokenizer_gan import AudioTokenizerGanLoss
from transcoder.losses.vocoder import MultiResolutionMelLoss, VocoderLoss

__all__ = ["AudioTokenizerGanLoss", "AudioTokenizerLoss", "MultiResolutionMelLoss", "VocoderLoss",
           "discriminator_hinge_loss", "feature_matching_loss", "generator_hinge_loss"]
