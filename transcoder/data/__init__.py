"""Data pipeline: audio decoding, dataset layouts, the log-mel front end and SpecAugment.

See AUDIO_README.md ("Data"). Workers decode and crop (``AudioClipDataset`` subclasses + ``collate_audio``);
the training device turns waveform batches into model-space log-mels (``LogMelFrontend``).
At scale: Lhotse manifests (``LhotseCutsDataset``, optional extra) and tar shards streamed per rank and
worker (``ShardStreamDataset``; ``ShardDataset`` is the config target, ``scripts/prepare_shards.py`` writes them).
For a language model: token sequences from a codes folder (``CodesDataset``).
"""

from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.data.audio_folder import AudioFolderDataset
from transcoder.data.audio_io import (
    AUDIO_EXTENSIONS,
    SF_UNKNOWN_FRAMES,
    AudioDecodeError,
    AudioFile,
    AudioInfo,
    audio_info,
    load_audio,
    resample,
)
from transcoder.data.base import AudioClipDataset, AudioDataError, AudioSkipWarning, collate_audio
from transcoder.data.build import build_dataset, resolve_target
from transcoder.data.codes_dataset import CodesDataset
from transcoder.data.common_voice import CommonVoiceDataset
from transcoder.data.lhotse_cuts import LhotseCutsDataset, MissingExtraError
from transcoder.data.librispeech import LibriSpeechDataset
from transcoder.data.shard_format import ShardError, ShardManifest, ShardWriter, read_records
from transcoder.data.shard_index import ShardDataset, ShardIndexDataset
from transcoder.data.shard_prepare import write_dataset_shards
from transcoder.data.shard_stream import ShardStreamDataset
from transcoder.data.specaugment import SpecAugment

__all__ = [
    "AUDIO_EXTENSIONS",
    "SF_UNKNOWN_FRAMES",
    "AudioClipDataset",
    "AudioDataError",
    "AudioDecodeError",
    "AudioFile",
    "AudioFolderDataset",
    "AudioInfo",
    "AudioSkipWarning",
    "CodesDataset",
    "CommonVoiceDataset",
    "LhotseCutsDataset",
    "LibriSpeechDataset",
    "LogMelFrontend",
    "MelConfig",
    "MissingExtraError",
    "ShardDataset",
    "ShardError",
    "ShardIndexDataset",
    "ShardManifest",
    "ShardStreamDataset",
    "ShardWriter",
    "SpecAugment",
    "audio_info",
    "build_dataset",
    "collate_audio",
    "load_audio",
    "read_records",
    "resample",
    "resolve_target",
    "write_dataset_shards",
]
