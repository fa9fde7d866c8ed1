"""The Conformer convolution module (Gulati et al., 2020) on a channels-last token grid, shared by the
offline blocks (:mod:`transcoder.models.audiobsq`) and the causal ones (:mod:`transcoder.models.causal`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transcoder.models.depthwise_conv import depthwise_conv_time

__all__ = ["ConformerConvModule"]


class ConformerConvModule(nn.Module):
    """Conformer convolution module (Gulati et al., 2020) on a channels-last token grid.

    LayerNorm → pointwise (Linear C→2C) → GLU → depthwise conv along time (kernel k, per
    frequency band) → BatchNorm → SiLU → pointwise (Linear C→C) → dropout. The caller adds the
    residual. Pointwise convolutions are Linear layers on the channels-last layout, and
    BatchNorm runs on the ``(B*N, C)`` view, so no transposes are needed around them.
    """

    def __init__(self, dim: int, kernel_size: int = 31, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise_weight = nn.Parameter(torch.empty(dim, kernel_size))
        self.depthwise_bias = nn.Parameter(torch.zeros(dim))
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        # Same fan-in scaling as nn.Conv1d's default for a depthwise kernel.
        nn.init.kaiming_uniform_(self.depthwise_weight, a=5**0.5)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, C) tokens on a ``grid = (Nt, Nf)`` → (B, N, C)."""
        batch, tokens, channels = x.shape
        nt, nf = grid
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        x = depthwise_conv_time(x.reshape(batch, nt, nf, channels), self.depthwise_weight, self.depthwise_bias)
        x = self.batch_norm(x.reshape(batch * tokens, channels)).reshape(batch, tokens, channels)
        return self.dropout(self.pointwise_out(F.silu(x)))
