"""Reconstruction loss on the model-space mel plus the weighted quantizer loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AudioTokenizerLoss(nn.Module):
    """``l1_weight * L1 + l2_weight * L2 + codebook_weight(step) * quant_loss``.

    The codebook weight ramps linearly from 0 to ``codebook_weight`` over
    ``codebook_warmup_steps`` (0: constant), so the entropy terms do not dominate the first
    updates of a randomly initialised encoder. Every term is returned under its own name.
    """

    def __init__(self, l1_weight: float = 1.0, l2_weight: float = 0.0, codebook_weight: float = 0.1,
                 codebook_warmup_steps: int = 0) -> None:
        super().__init__()
        if l1_weight < 0 or l2_weight < 0 or l1_weight + l2_weight == 0:
            raise ValueError(f"l1_weight={l1_weight}, l2_weight={l2_weight}: expected non-negative weights, "
                             "at least one positive")
        if codebook_weight < 0 or codebook_warmup_steps < 0:
            raise ValueError(f"codebook_weight={codebook_weight}, codebook_warmup_steps={codebook_warmup_steps}: "
                             "expected non-negative values")
        self.l1_weight = l1_weight
        self.l2_weight = l2_weight
        self.codebook_weight = codebook_weight
        self.codebook_warmup_steps = codebook_warmup_steps

    def codebook_weight_at(self, step: int) -> float:
        if self.codebook_warmup_steps == 0:
            return self.codebook_weight
        return self.codebook_weight * min(1.0, step / self.codebook_warmup_steps)

    def forward(self, recon: Tensor, target: Tensor, quant_loss: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """recon, target (B, T, F) in model space; quant_loss scalar → (total, {name: detached term})."""
        recon = recon.float()
        target = target.float()
        l1 = F.l1_loss(recon, target)
        l2 = F.mse_loss(recon, target)
        weight = self.codebook_weight_at(step)
        total = self.l1_weight * l1 + self.l2_weight * l2 + weight * quant_loss
        terms = {
            "loss/total": total.detach(),
            "loss/l1": l1.detach(),
            "loss/l2": l2.detach(),
            "loss/quantizer": quant_loss.detach(),
            "loss/codebook_weight": torch.tensor(weight),
        }
        return total, terms
