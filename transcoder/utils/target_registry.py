"""The project's own classes that a checkpoint's config may name as a ``target``.

A checkpoint is data that people share, so building a model from the config stored inside one must never
import or call anything else (``os.system``, ``builtins.eval``, ...). The names are plain strings, checked
before anything is imported (:func:`transcoder.utils.targets.check_trusted_target`); each is the defining
module's path or the re-export of its package, exactly as the shipped configs and the trainer write them.
A class added to the project that checkpoints should name goes here (tests/test_trusted_targets.py checks
that every entry imports to a class of this package).
"""

from __future__ import annotations

__all__ = ["TRUSTED_TARGETS"]

_MODELS = (
    "transcoder.models.audiobsq.AudioBSQModel",
    "transcoder.models.mae.AudioMAE",
    "transcoder.models.vocoder.VocosGenerator",
    "transcoder.models.discriminators.VocoderDiscriminator",
    "transcoder.models.discriminators.MultiPeriodDiscriminator",
    "transcoder.models.discriminators.MultiResolutionSTFTDiscriminator",
    "transcoder.models.mel_discriminator.MultiScaleMelDiscriminator",
    "transcoder.models.mel_discriminator.PatchDiscriminator2d",
)
_QUANTIZERS = (
    "transcoder.models.quantizer.bsq.BinarySphericalQuantizer",
    "transcoder.models.quantizer.fsq.FiniteScalarQuantizer",
)
_LOSSES = (
    "transcoder.losses.AudioTokenizerLoss",
    "transcoder.losses.reconstruction.AudioTokenizerLoss",
    "transcoder.losses.AudioTokenizerGanLoss",
    "transcoder.losses.tokenizer_gan.AudioTokenizerGanLoss",
    "transcoder.losses.VocoderLoss",
    "transcoder.losses.vocoder.VocoderLoss",
    "transcoder.losses.MultiResolutionMelLoss",
    "transcoder.losses.vocoder.MultiResolutionMelLoss",
    "transcoder.losses.masked.MaskedPatchLoss",
)
_DATASETS = (
    "transcoder.data.AudioFolderDataset",
    "transcoder.data.audio_folder.AudioFolderDataset",
    "transcoder.data.LibriSpeechDataset",
    "transcoder.data.librispeech.LibriSpeechDataset",
    "transcoder.data.CommonVoiceDataset",
    "transcoder.data.common_voice.CommonVoiceDataset",
    "transcoder.data.LhotseCutsDataset",
    "transcoder.data.lhotse_cuts.LhotseCutsDataset",
    "transcoder.data.ShardDataset",
    "transcoder.data.shard_index.ShardDataset",
    "transcoder.data.ShardIndexDataset",
    "transcoder.data.shard_index.ShardIndexDataset",
    "transcoder.data.ShardStreamDataset",
    "transcoder.data.shard_stream.ShardStreamDataset",
    "transcoder.data.CodesDataset",
    "transcoder.data.codes_dataset.CodesDataset",
)
_RENDERERS = (
    "transcoder.audio.GriffinLimRenderer",
    "transcoder.audio.griffin_lim.GriffinLimRenderer",
    "transcoder.audio.NeuralVocoder",
    "transcoder.audio.neural_vocoder.NeuralVocoder",
)

#: Every ``target`` a checkpoint may name without ``trust_config``.
TRUSTED_TARGETS: frozenset[str] = frozenset(_MODELS + _QUANTIZERS + _LOSSES + _DATASETS + _RENDERERS)
