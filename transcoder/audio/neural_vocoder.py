"""A trained neural vocoder as a renderer: model-space log-mel (B, T, F) -> waveform (B, T * hop).

The vocoder is trained by this repository (task ``vocoder``, ``scripts/train_vocoder.py``) on exactly the
tokenizer front end's model-space log-mel, so it renders a tokenizer's output directly. It implements
:class:`~transcoder.audio.render.Renderer` beside
:class:`~transcoder.audio.griffin_lim.GriffinLimRenderer`, which stays the default everywhere
(:func:`~transcoder.audio.render.build_renderer` picks between them).

    from transcoder.audio.neural_vocoder import load_vocoder
    vocoder = load_vocoder("outputs/vocoder/checkpoints/best.pt")    # EMA weights when present
    wave = vocoder(mel)                                             # (B, T, F) model space -> (B, T * hop)

A vocoder only fits a tokenizer with the same front end: :func:`check_same_mel` compares every mel
setting except ``target_length`` (the training window length, which does not change a frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transcoder.audio.mel import MelConfig

__all__ = ["NeuralVocoder", "check_same_mel", "load_vocoder", "mel_differences"]

#: Mel settings that may differ between a vocoder and a tokenizer (the length of a training window).
WINDOW_ONLY_KEYS = ("target_length",)


def mel_differences(a: MelConfig, b: MelConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (a's value, b's value)}`` for every frame-changing mel setting that differs."""
    da, db = a.to_dict(), b.to_dict()
    return {key: (da[key], db[key]) for key in da if key not in WINDOW_ONLY_KEYS and da[key] != db[key]}


def check_same_mel(vocoder_mel: MelConfig, other_mel: MelConfig, vocoder_name: str, other_name: str) -> None:
    """Raise ``ValueError`` naming every differing setting unless the two front ends give the same frames."""
    diff = mel_differences(vocoder_mel, other_mel)
    if diff:
        listed = ", ".join(f"{key}: {a!r} vs {b!r}" for key, (a, b) in diff.items())
        raise ValueError(f"the vocoder {vocoder_name} was trained on other mel settings than {other_name} "
                         f"({listed}); train a vocoder with the same data mel settings")


class NeuralVocoder(nn.Module):
    """A generator with the mel settings it was trained on; a :class:`~transcoder.audio.render.Renderer`.

    Args:
        generator: maps (B, T, n_mels) model-space log-mel to (B, T * hop_length) samples
            (:class:`transcoder.models.vocoder.VocosGenerator`).
        mel_config: the front end the generator was trained on.
        name: where it came from (used in error messages).
    """

    kind = "neural"
    coherent = True  # feed-forward: overlapping renders agree in phase on their shared frames

    def __init__(self, generator: nn.Module, mel_config: MelConfig, name: str = "<module>") -> None:
        super().__init__()
        self.generator = generator
        self.mel_config = mel_config
        self.name = name
        self.eval()

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    def check_fits(self, mel_config: MelConfig, other_name: str) -> None:
        """``ValueError`` naming the differing settings if ``mel_config`` gives other frames."""
        check_same_mel(self.mel_config, mel_config, self.name, other_name)

    @torch.no_grad()
    def forward(self, mel: Tensor, length: int | None = None) -> Tensor:
        """Model-space mel (B, T, F) or (T, F) -> waveform (B, length) or (length,), fp32 on mel's device.

        ``length`` (default ``T * hop_length``) trims or zero-pads the output.
        """
        squeeze = mel.ndim == 2
        x = mel.unsqueeze(0) if squeeze else mel
        if x.ndim != 3 or x.shape[-1] != self.mel_config.n_mels:
            raise ValueError(f"expected a model-space mel (B, T, {self.mel_config.n_mels}), got {tuple(mel.shape)}")
        wave = self.generator(x.float()).float()
        if length is not None:
            wave = wave[..., :length] if wave.shape[-1] >= length else torch.nn.functional.pad(
                wave, (0, length - wave.shape[-1]))
        return wave[0] if squeeze else wave

    def render(self, mel: Tensor, length: int | None = None, seed: int | None = None) -> Tensor:
        """The :class:`~transcoder.audio.render.Renderer` call: ``mel`` is moved to the vocoder's device;
        ``seed`` is ignored (the vocoder is deterministic)."""
        device = next(self.generator.parameters(), torch.empty(0)).device
        return self(mel.to(device), length)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "checkpoint": self.name}


def load_vocoder(checkpoint: str | Path | dict[str, Any], device: str | torch.device | None = "cpu",
                 use_ema: bool = True, trust_config: bool = False) -> NeuralVocoder:
    """Load a vocoder-task checkpoint (trainer format 2) as a :class:`NeuralVocoder` in eval mode.

    Raises ``FileNotFoundError`` for a missing file and
    :class:`~transcoder.utils.checkpoint.CheckpointError` for a checkpoint of another task or weights
    that do not fit the generator its config describes, or a config naming a class outside the project
    (unless ``trust_config``; :func:`~transcoder.models.build.build_checkpoint_spec`).
    """
    from transcoder.models.build import build_checkpoint_spec
    from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, load_weights_strict, model_weights

    name = str(checkpoint) if not isinstance(checkpoint, dict) else "<dict>"
    state = dict(checkpoint) if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if state.get("task") != "vocoder":
        raise CheckpointError(f"{name} was written by task {state.get('task', 'tokenizer')!r}, not by a vocoder "
                              "run (scripts/train_vocoder.py)")
    config, mel = state.get("config") or {}, state.get("mel")
    if not isinstance(mel, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{name}: a vocoder checkpoint needs 'mel' and config['model']")
    generator = build_checkpoint_spec(config["model"], name, "config.model", trust_config)
    weights, source = model_weights(state, "model", use_ema=use_ema)
    load_weights_strict(generator, weights, f"vocoder {name} ({source} weights)")
    vocoder = NeuralVocoder(generator, MelConfig.from_dict(mel), name=name)
    return vocoder.to(device) if device is not None else vocoder
