"""SpecAugment time and frequency masking (Park et al., 2019, arXiv 1904.08779), batched.

The tokenizer task applies it to the model INPUT only by default (``data.specaugment.apply_to: input``):
the reconstruction target stays the clean mel, so the tokenizer learns to fill masked regions;
``apply_to: input_and_target`` masks both alike (plain augmentation, the masks are reproduced). Time warping
from the paper is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SpecAugment"]


class SpecAugment(nn.Module):
    """Mask random time and frequency bands of a (B, T, F) spectrogram batch, in train mode only.

    Each sample gets ``time_masks`` time masks of width ``~ U{0..time_width}`` frames and
    ``freq_masks`` frequency masks of width ``~ U{0..freq_width}`` bins (the paper's LD policy
    for 80 mels is 2 x 27 bins and 2 x 100 frames), at uniform random positions; masks may overlap.
    Masked cells take ``fill_value`` (default -1, the model-space dB floor, i.e. silence).

    Random numbers come from torch's generator on the input's device (``generator`` to override),
    so the masks follow ``torch.manual_seed`` and cost no host-device transfer. In ``.eval()``
    mode the input is returned unchanged (the same tensor).
    """

    def __init__(
        self,
        time_masks: int = 2,
        time_width: int = 100,
        freq_masks: int = 2,
        freq_width: int = 27,
        fill_value: float = -1.0,
    ) -> None:
        super().__init__()
        for name, value in (("time_masks", time_masks), ("time_width", time_width),
                            ("freq_masks", freq_masks), ("freq_width", freq_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SpecAugment {name}={value!r}: expected a non-negative integer")
        self.time_masks = time_masks
        self.time_width = time_width
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.fill_value = float(fill_value)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, T, F) → (B, T, F) with masked cells set to ``fill_value`` (a new tensor in train mode)."""
        if not self.training:
            return x
        if x.ndim != 3:
            raise ValueError(f"SpecAugment expects (B, T, F), got shape {tuple(x.shape)}")
        batch, frames, bins = x.shape
        time = self._band_mask(batch, frames, self.time_masks, self.time_width, x.device, generator)
        freq = self._band_mask(batch, bins, self.freq_masks, self.freq_width, x.device, generator)
        mask = time[:, :, None] | freq[:, None, :]
        return x.masked_fill(mask, self.fill_value)

    @staticmethod
    def _band_mask(batch: int, size: int, count: int, max_width: int, device: torch.device,
                   generator: torch.Generator | None) -> Tensor:
        """(batch, size) bool: union of ``count`` bands of width U{0..max_width} per row."""
        if count == 0 or max_width == 0 or size == 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        max_width = min(max_width, size)
        width = torch.randint(0, max_width + 1, (batch, count, 1), device=device, generator=generator)
        # Start uniform over the positions where the band fits: floor(u * (size - width + 1)).
        u = torch.rand(batch, count, 1, device=device, generator=generator)
        start = torch.minimum((u * (size - width + 1)).long(), size - width)  # fp32 rounding of u * n
        pos = torch.arange(size, device=device)
        return ((pos >= start) & (pos < start + width)).any(dim=1)

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, time_width={self.time_width}, freq_masks={self.freq_masks}, "
                f"freq_width={self.freq_width}, fill_value={self.fill_value}")
