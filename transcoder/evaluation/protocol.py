"""What evaluation needs from a tokenizer, as a structural type (``transcoder.api.AudioTokenizer`` fits it).

Evaluation sits below the API in the layer order, so it names the attributes it reads instead of importing
the class; any object with them (a wrapper around another codec, a test double) can be evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.render import Renderer

__all__ = ["EvaluatedTokenizer"]


class EvaluatedTokenizer(Protocol):
    """A model with its front end, renderers and rates.

    Attributes:
        model: maps model-space mel ``(B, T, F)`` to ``(recon (B, T, F), quant_loss, info)`` with
            ``info["indices"]`` ``(B, T / patch_t, n_freq_patches)``.
        frontend: waveform ``(B, S)`` -> model-space log-mel ``(B, S // hop, F)``.
        renderer: what decodes audio (a neural vocoder or Griffin-Lim).
        griffin_lim: the Griffin-Lim renderer, the reference every evaluation scores.
    """

    model: nn.Module
    frontend: LogMelFrontend
    mel_config: MelConfig
    device: torch.device
    renderer: Renderer
    griffin_lim: Renderer
    checkpoint_path: Path | None
    checkpoint_step: int | None
    weights: str

    @property
    def checkpoint_sha256(self) -> str | None: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def hop_length(self) -> int: ...
    @property
    def patch_size(self) -> tuple[int, int]: ...
    @property
    def bits_per_token(self) -> int: ...
    @property
    def tokens_per_second(self) -> float: ...
    @property
    def bitrate(self) -> float: ...
    @property
    def time_rows_per_window(self) -> int: ...
    @property
    def n_freq_patches(self) -> int: ...
