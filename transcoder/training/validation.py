"""Validation metrics of the trainer: a ``val/*`` view of :class:`transcoder.evaluation.ReconstructionMetrics`."""

from __future__ import annotations

import torch
from torch import Tensor

from transcoder.audio.mel import LogMelFrontend
from transcoder.evaluation.reconstruction import ReconstructionMetrics


class ValidationMetrics:
    """MSE / MAE in dB, L1 in model space, quantizer loss and codebook usage of reconstructions.

    Only valid mel frames count, and only the token rows covering them for code usage: the zero padding
    of a file's last window and windows the data pipeline could not decode (``num_valid == 0``) are left
    out, exactly as in the evaluation (both use :class:`ReconstructionMetrics`).
    """

    def __init__(self, frontend: LogMelFrontend, bits: int, device: torch.device, patch_t: int | None = None) -> None:
        self.frontend = frontend
        self.device = device
        self._bits = bits
        self._patch_t = patch_t
        self._metrics: ReconstructionMetrics | None = None

    def update(self, recon: Tensor, target: Tensor, quant_loss: Tensor, indices: Tensor, num_valid: Tensor) -> None:
        """recon, target (B, T, F) model space; indices (B, Nt, Nf); num_valid (B,) unpadded samples."""
        if self._metrics is None:
            # Frames per token row, from the shapes when not given (T / Nt).
            patch_t = self._patch_t or target.shape[1] // indices.shape[1]
            self._metrics = ReconstructionMetrics(self.frontend, self._bits, patch_t, self.device)
        self._metrics.update(recon, target, quant_loss.detach().float(), indices, num_valid)

    def compute(self) -> dict[str, float]:
        """Reduce over ranks (a collective) and return the ``val/*`` scalars."""
        if self._metrics is None:  # no batch on this rank: still join the collectives
            self._metrics = ReconstructionMetrics(self.frontend, self._bits, self._patch_t or 1, self.device)
        summary = self._metrics.compute()
        return {
            "val/mse_db": summary.mse_db,
            "val/mae_db": summary.mae_db,
            "val/l1": summary.l1,
            "val/distinct_codes": float(summary.codebook.distinct_codes),
            "val/code_entropy_bits": float(summary.codebook.entropy_bits),
            "val/clips": float(summary.windows),
        }
