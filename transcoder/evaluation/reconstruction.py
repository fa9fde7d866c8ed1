"""Reconstruction metrics over valid frames, shared by training validation and the evaluation.

Only what the data really hold counts: frames covering a window's ``num_valid`` unpadded samples
(``ceil(num_valid / hop)``), and for codebook usage the token rows covering those frames
(``ceil(frames / patch_t)``); the zero padding of a file's last window and windows that failed to
decode (``num_valid == 0``) count nowhere. Sums are reduced over DDP ranks by :meth:`compute`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from transcoder.audio.mel import LogMelFrontend
from transcoder.evaluation.metrics import CodebookStats, CodebookUsage
from transcoder.models.patching import valid_token_mask
from transcoder.utils.distributed import all_reduce_sum

__all__ = ["ReconstructionMetrics", "ReconstructionSummary", "frames_covering"]


def frames_covering(num_valid: Tensor, hop_length: int, frames: int) -> Tensor:
    """``(B,)`` unpadded samples → ``(B,)`` mel frames covering them (``ceil(num_valid / hop)``, at most
    ``frames``); 0 for a window that failed to decode."""
    return (-(-num_valid.long() // int(hop_length))).clamp_max(frames)


@dataclass
class ReconstructionSummary:
    """Means over all valid frames (``*_db`` in dB / dB^2, ``l1`` in model space) and windows."""

    mse_db: float
    mae_db: float
    l1: float
    quant_loss: float  # mean over decoded windows
    windows: int  # windows with at least one valid sample
    frames: int  # valid frames
    codebook: CodebookStats
    # mean of |max(X̂, c) - max(X, c)| over all valid cells (those below the floor on both sides count as 0)
    mae_db_common_floor: float | None = None


class ReconstructionMetrics:
    """Accumulate dB MSE / MAE, model-space L1, quantizer loss and code usage of reconstructions.

    Args:
        frontend: the mel front end (for ``model_to_db`` and ``hop_length``).
        bits: code width.
        patch_t: frames per token row.
        device: where the running sums live.
        common_floor_db: also the dB MAE with reconstruction and target both clamped below at this level
            (``mae_db_common_floor``), so models whose front ends clamp at different ``db_min`` are scored on the
            same range: pass the highest floor among them. ``None``: not computed.
    """

    def __init__(self, frontend: LogMelFrontend, bits: int, patch_t: int, device: torch.device | str = "cpu",
                 common_floor_db: float | None = None) -> None:
        self.frontend = frontend
        self.patch_t = int(patch_t)
        self.device = torch.device(device)
        self.common_floor_db = None if common_floor_db is None else float(common_floor_db)
        # squared dB error, absolute dB error, model-space L1, valid elements, quant loss * windows, windows,
        # absolute dB error of both mels clamped below at the common floor
        self.sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        self.usage = CodebookUsage(bits)

    def valid_frames(self, num_valid: Tensor, frames: int) -> Tensor:
        """``(B,)`` unpadded samples -> ``(B,)`` frames covering them, at most ``frames``."""
        return frames_covering(num_valid.to(self.device), self.frontend.hop_length, frames)

    @torch.no_grad()
    def update(self, recon: Tensor, target: Tensor, quant_loss: Tensor | float, indices: Tensor,
               num_valid: Tensor) -> None:
        """Add a batch.

        Args:
            recon, target: ``(B, T, F)`` model-space mels.
            quant_loss: the batch's mean quantizer loss (scalar).
            indices: ``(B, T / patch_t, Nf)`` codes.
            num_valid: ``(B,)`` unpadded samples per window (0: failed to decode).
        """
        if recon.shape != target.shape or recon.ndim != 3:
            raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} must both be (B, T, F)")
        recon, target = recon.to(self.device).double(), target.to(self.device).double()
        frames = self.valid_frames(num_valid, target.shape[1])
        mask = (torch.arange(target.shape[1], device=self.device)[None, :] < frames[:, None]).unsqueeze(-1)
        recon_db, target_db = self.frontend.model_to_db(recon).double(), self.frontend.model_to_db(target).double()
        diff_db = (recon_db - target_db) * mask
        floor = self.common_floor_db
        above_floor = 0.0 if floor is None else ((recon_db.clamp_min(floor) - target_db.clamp_min(floor)).abs()
                                                 * mask).sum()
        decoded = frames > 0
        windows = decoded.sum()
        self.sums += torch.stack([
            diff_db.square().sum(), diff_db.abs().sum(), ((recon - target).abs() * mask).sum(),
            mask.sum().double() * target.shape[2], torch.as_tensor(quant_loss, dtype=torch.float64,
                                                                   device=self.device) * windows,
            windows.double(), torch.as_tensor(above_floor, dtype=torch.float64, device=self.device)])
        token_mask = valid_token_mask(frames, tuple(indices.shape[1:]), self.patch_t)  # (B, Nt*Nf)
        self.usage.update(indices.to(self.device).flatten(1)[token_mask])

    def compute(self) -> ReconstructionSummary:
        """Reduce over ranks (a collective: call on every rank) and summarize."""
        sums = all_reduce_sum(self.sums.clone())
        self.usage.all_reduce()
        elements = max(sums[3].item(), 1.0)
        windows = sums[5].item()
        n_mels = self.frontend.config.n_mels
        return ReconstructionSummary(
            mse_db=sums[0].item() / elements, mae_db=sums[1].item() / elements, l1=sums[2].item() / elements,
            quant_loss=sums[4].item() / max(windows, 1.0), windows=int(windows), frames=int(sums[3].item()) // n_mels,
            codebook=self.usage.compute(),
            mae_db_common_floor=None if self.common_floor_db is None else sums[6].item() / elements)
