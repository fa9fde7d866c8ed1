"""Layers that act on the log-mel itself rather than on tokens: the per-bin standardisation of the model's input
and the convolutional head on the decoder's output. Both map ``(B, T, F)`` to ``(B, T, F)``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OutputConvHead", "PerBinNorm"]


class OutputConvHead(nn.Module):
    """Residual 3x3 convolutions over the decoded (B, T, F) mel: ``x + conv(gelu(conv(x)))``.

    Each patch is predicted by its own linear head, so the decoder has no direct way to match the cells on
    either side of a patch boundary; two 3x3 convolutions see across it. The last convolution starts at
    zero, so the head starts as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, T, F) → (B, T, F)."""
        x = mel.unsqueeze(1)
        return (x + self.conv_out(F.gelu(self.conv_in(x)))).squeeze(1)


class PerBinNorm(nn.Module):
    """Per-mel-bin standardisation whose statistics are the mean / std of the first ``batches`` training batches.

    In training mode the first ``batches`` calls of :meth:`update` accumulate each bin's sum and sum of squares
    over the valid frames; afterwards the statistics are frozen. They are buffers, so checkpoints carry them and
    evaluation, tokenization and export use the statistics the model was trained with. Before any update the
    map is the identity (mean 0, std 1).
    """

    def __init__(self, bins: int, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))
        self.register_buffer("seen_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("frame_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("bin_sum", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("bin_sum_sq", torch.zeros(bins, dtype=torch.float64))
        # Set once the statistics are frozen, so later training steps read no buffer back from the device.
        self._frozen = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._frozen = False  # the loaded count decides again

    @torch.no_grad()
    def update(self, mel: Tensor, valid_frames: Tensor | None = None) -> None:
        """Accumulate (B, T, F) ``mel`` (only the first ``valid_frames[b]`` frames of item b) while training."""
        if not self.training or self._frozen:
            return
        if int(self.seen_batches) >= self.batches:
            self._frozen = True
            return
        values = mel.detach().double()
        if valid_frames is not None:
            keep = torch.arange(mel.shape[1], device=mel.device)[None, :] < valid_frames.to(mel.device)[:, None]
            values = values[keep]  # (frames, F)
        else:
            values = values.reshape(-1, mel.shape[-1])
        if values.shape[0] == 0 or not bool(torch.isfinite(values).all()):
            return  # nothing to count, or a damaged batch (its step is skipped too): the statistics stay clean
        self.frame_count += values.shape[0]
        self.bin_sum += values.sum(0)
        self.bin_sum_sq += values.square().sum(0)
        self.seen_batches += 1
        mean = self.bin_sum / self.frame_count
        variance = (self.bin_sum_sq / self.frame_count - mean.square()).clamp_min(0.0)
        self.mean.copy_(mean.float())
        self.std.copy_(variance.sqrt().float().clamp_min(1e-2))

    def normalize(self, mel: Tensor) -> Tensor:
        """(B, T, F) model-space mel → standardised (B, T, F)."""
        return (mel - self.mean.to(mel.dtype)) / self.std.to(mel.dtype)

    def denormalize(self, mel: Tensor) -> Tensor:
        """Standardised (B, T, F) → model-space (B, T, F)."""
        return mel * self.std.to(mel.dtype) + self.mean.to(mel.dtype)
