"""Validation metrics accumulated over batches and reduced over DDP ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from transcoder.data import LogMelFrontend
from transcoder.evaluation.metrics import CodebookUsage
from transcoder.utils.distributed import all_reduce_sum


class ValidationMetrics:
    """MSE / MAE in dB, L1 in model space, quantizer loss and codebook usage of reconstructions.

    Only valid mel frames count: the zero padding of a file's last window and windows the data
    pipeline could not decode (``num_valid == 0``) are left out, as in ``scripts/evaluate_audio_tokenizer.py``.
    """

    def __init__(self, frontend: LogMelFrontend, bits: int, device: torch.device) -> None:
        self.frontend = frontend
        self.hop_length = frontend.hop_length
        self.device = device
        # squared dB error, absolute dB error, model-space L1, valid elements, quantizer loss * clips, clips
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.usage = CodebookUsage(bits)

    def update(self, recon: Tensor, target: Tensor, quant_loss: Tensor, indices: Tensor, num_valid: Tensor) -> None:
        """recon, target (B, T, F) model space; indices (B, Nt, Nf); num_valid (B,) unpadded samples."""
        recon = recon.float()
        valid_frames = -(-num_valid.to(self.device) // self.hop_length)  # ceil
        frame_index = torch.arange(target.shape[1], device=self.device)
        mask = (frame_index[None, :] < valid_frames[:, None]).unsqueeze(-1).to(recon.dtype)  # (B, T, 1)
        diff_db = (self.frontend.model_to_db(recon) - self.frontend.model_to_db(target)) * mask
        decoded = valid_frames > 0
        clips = decoded.sum()
        self.sums += torch.stack([
            diff_db.pow(2).sum(), diff_db.abs().sum(), ((recon - target).abs() * mask).sum(),
            mask.sum() * target.shape[2], quant_loss.detach().float() * clips, clips.float()]).double()
        self.usage.update(indices[decoded.to(indices.device)])

    def compute(self) -> dict[str, float]:
        """Reduce over ranks (a collective) and return the ``val/*`` scalars."""
        all_reduce_sum(self.sums)
        self.usage.all_reduce()
        elements = max(self.sums[3].item(), 1.0)
        clips = max(self.sums[5].item(), 1.0)
        stats = self.usage.compute()
        return {
            "val/mse_db": self.sums[0].item() / elements,
            "val/mae_db": self.sums[1].item() / elements,
            "val/l1": self.sums[2].item() / elements,
            "val/quant_loss": self.sums[4].item() / clips,
            "val/distinct_codes": float(stats.distinct_codes),
            "val/code_entropy_bits": float(stats.entropy_bits),
            "val/clips": self.sums[5].item(),
        }
