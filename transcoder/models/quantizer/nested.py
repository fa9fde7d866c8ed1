"""Nested bits: train a BSQ tokenizer so that the first ``k`` bits of every token are a usable ``k``-bit code.

In training, each sample (or the whole batch) draws a width ``k`` from ``widths``; the decoder sees the
first ``k`` bits of every token and, in place of the rest, a fill that stands for "unknown": zero in the
code space (``fill: zero``) or one learned value per dropped bit (``fill: learned``). This is nested
dropout over the bit order (Rippel et al., 2014, "Learning ordered representations with nested
dropout"; the Matryoshka representation idea applied to binary codes), so one model can be tokenized
at any trained width and its bits come in a coarse-to-fine order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

FillMode = Literal["zero", "learned"]
DrawMode = Literal["sample", "batch"]


class NestedBits(nn.Module):
    """Draw a width per sample (or batch) and replace the bits past it by the fill.

    Args:
        embed_dim: bits per token of the model (``d``).
        widths: the widths trained, increasing, each in ``1..d``; ``d`` itself should be one of them
            so the full-width code keeps being trained.
        probs: probability of each width (normalised); ``None`` draws them uniformly.
        per: ``"sample"`` draws a width for every sample of the batch, ``"batch"`` one for the batch.
        fill: ``"zero"`` (a dropped bit is 0, between the two code values) or ``"learned"`` (one
            parameter per bit, initialised at 0).
    """

    def __init__(self, *, embed_dim: int, widths: Sequence[int], probs: Sequence[float] | None = None,
                 per: DrawMode = "sample", fill: FillMode = "zero") -> None:
        super().__init__()
        widths = list(widths) if isinstance(widths, list | tuple) else widths
        if not isinstance(widths, list) or not widths or any(
                isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= embed_dim for w in widths):
            raise ValueError(f"nested_bits.widths={widths!r}: expected a list of integers in 1..{embed_dim}")
        if sorted(set(widths)) != widths:
            raise ValueError(f"nested_bits.widths={widths!r}: expected increasing widths without repeats")
        if probs is None:
            probs = [1.0] * len(widths)
        probs = list(probs)
        if len(probs) != len(widths) or any(isinstance(p, bool) or not isinstance(p, int | float) or p < 0
                                            for p in probs) or sum(probs) <= 0:
            raise ValueError(f"nested_bits.probs={probs!r}: expected {len(widths)} non-negative numbers "
                             f"(one per width) with a positive sum")
        if per not in ("sample", "batch"):
            raise ValueError(f"nested_bits.per={per!r}: expected 'sample' or 'batch'")
        if fill not in ("zero", "learned"):
            raise ValueError(f"nested_bits.fill={fill!r}: expected 'zero' or 'learned'")
        self.embed_dim = embed_dim
        self.widths = widths
        self.per = per
        self.fill_mode = fill
        self.register_buffer("width_values", torch.tensor(widths, dtype=torch.long), persistent=False)
        self.register_buffer("width_probs", torch.tensor(probs, dtype=torch.float32) / float(sum(probs)),
                             persistent=False)
        self.fill = nn.Parameter(torch.zeros(embed_dim)) if fill == "learned" else None

    def fill_values(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(d,) what a dropped bit becomes."""
        if self.fill is None:
            return torch.zeros(self.embed_dim, device=device, dtype=dtype)
        return self.fill.to(dtype)

    def draw_widths(self, batch_size: int, device: torch.device) -> Tensor:
        """(B,) int64 widths drawn from ``probs`` (the same for every sample with ``per="batch"``)."""
        count = batch_size if self.per == "sample" else 1
        choice = torch.multinomial(self.width_probs.to(device), count, replacement=True)
        widths = self.width_values.to(device)[choice]
        return widths.expand(batch_size) if self.per == "batch" else widths

    def keep(self, codes: Tensor, widths: Tensor) -> Tensor:
        """Codes (B, N, d) with the bits past each sample's width (B,) replaced by the fill."""
        kept = torch.arange(self.embed_dim, device=codes.device)[None, :] < widths[:, None]  # (B, d)
        fill = self.fill_values(codes.device, codes.dtype)
        return torch.where(kept[:, None, :], codes, fill)

    def forward(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Training: codes (B, N, d) → (codes with drawn widths applied, widths (B,))."""
        widths = self.draw_widths(codes.shape[0], codes.device)
        return self.keep(codes, widths), widths

    def pad(self, codes: Tensor) -> Tensor:
        """Codes of the first ``k`` bits (B, N, k) → (B, N, d), the missing bits filled."""
        k = codes.shape[-1]
        if k == self.embed_dim:
            return codes
        fill = self.fill_values(codes.device, codes.dtype).expand(*codes.shape[:-1], self.embed_dim)
        return torch.cat([codes, fill[..., k:]], dim=-1)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, per={self.per!r}, fill={self.fill_mode!r}"


def truncate_indices(indices: Tensor, bits: int) -> Tensor:
    """Integer indices → the index of their first ``bits`` bits (bit ``i`` is code dim ``i``)."""
    return indices & ((1 << bits) - 1)
