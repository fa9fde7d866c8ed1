"""The masked-autoencoder loss: mean squared error on masked patches only (MAE, He et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, N, P) → each patch with zero mean and unit variance over its P values (MAE's ``norm_pix_loss``)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class MaskedPatchLoss(nn.Module):
    """MSE between predicted and target patches, averaged over the masked patches only.

    Args:
        norm_pix_loss: compare with per-patch normalised targets (each patch's mean and variance removed),
            which MAE found gives better representations; the prediction is then in normalised units.
    """

    def __init__(self, norm_pix_loss: bool = False) -> None:
        super().__init__()
        if not isinstance(norm_pix_loss, bool):
            raise ValueError(f"loss.params.norm_pix_loss={norm_pix_loss!r}: expected true or false")
        self.norm_pix_loss = norm_pix_loss

    def target(self, patches: Tensor) -> Tensor:
        """What the prediction is compared with: (B, N, P) patches, normalised if ``norm_pix_loss``."""
        return normalize_patches(patches) if self.norm_pix_loss else patches

    def forward(self, pred: Tensor, patches: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """pred, patches (B, N, P); mask (B, N) bool (True = masked) → (loss, terms).

        Visible patches do not contribute: the loss is the per-patch MSE summed over masked patches divided
        by their number. ``terms`` holds detached ``loss/total`` and ``loss/masked_mse``.
        """
        if pred.shape != patches.shape or mask.shape != pred.shape[:2]:
            raise ValueError(f"pred {tuple(pred.shape)}, patches {tuple(patches.shape)} and mask "
                             f"{tuple(mask.shape)} do not match (expected (B, N, P), (B, N, P), (B, N))")
        per_patch = (pred.float() - self.target(patches.float())).pow(2).mean(dim=-1)
        loss = torch.where(mask, per_patch, 0.0).sum() / mask.sum().clamp_min(1)
        return loss, {"loss/total": loss.detach(), "loss/masked_mse": loss.detach()}
