"""The tokenizer's training loss: L1 / L2 reconstruction, an optional multi-scale spectrogram term and the
weighted quantizer loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Codebook-weight ramps: ``up`` from 0 (a warm-up) or ``down`` from ``codebook_start_factor`` times the
#: weight (BSQ-ViT's annealing of the entropy weight).
CODEBOOK_RAMPS = ("up", "down")


def _pool_pairs(scales: Sequence[Sequence[int]] | Sequence[int]) -> list[tuple[int, int]]:
    """``[[t, f], ...]`` or ``[s, ...]`` (square) → ``[(t, f), ...]``; raises ``ValueError`` naming the key."""
    pairs = []
    for scale in scales:
        pair = (scale, scale) if isinstance(scale, int) and not isinstance(scale, bool) else tuple(scale)
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
            raise ValueError(f"multiscale_scales entry {scale!r}: expected a positive int or a [time, freq] pair "
                             "of positive ints")
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs


def multiscale_l1(recon: Tensor, target: Tensor, scales: Sequence[tuple[int, int]]) -> Tensor:
    """Mean over ``scales`` of the L1 between ``recon`` and ``target`` (B, T, F), each average-pooled with a
    ``(time, freq)`` window and stride (a partial last window is padded by ``ceil_mode``)."""
    terms = []
    for time, freq in scales:
        pooled_recon = F.avg_pool2d(recon.unsqueeze(1), (time, freq), ceil_mode=True)
        pooled_target = F.avg_pool2d(target.unsqueeze(1), (time, freq), ceil_mode=True)
        terms.append(F.l1_loss(pooled_recon, pooled_target))
    return torch.stack(terms).mean()


class AudioTokenizerLoss(nn.Module):
    """``l1_weight * L1 + l2_weight * L2 + multiscale_weight * MS-L1 + codebook_weight(step) * quant_loss``.

    Args:
        l1_weight, l2_weight: weights of the per-cell L1 and L2 errors (model space).
        codebook_weight: weight of the quantizer loss once the ramp is over.
        codebook_warmup_steps: length of the ramp in applied updates (0: constant weight).
        codebook_ramp: ``"up"`` ramps linearly from 0 to ``codebook_weight`` (the entropy terms do not
            dominate the first updates); ``"down"`` starts at ``codebook_start_factor * codebook_weight`` and
            decays linearly to ``codebook_weight`` (BSQ-ViT's schedule: strong entropy regularisation first).
        codebook_start_factor: start multiplier of the ``down`` ramp (>= 1).
        multiscale_weight: weight of the multi-scale spectrogram L1 (0: off): the L1 of the reconstruction
            and the target average-pooled at each ``multiscale_scales`` (time, freq) resolution (cf. the
            multi-resolution STFT losses of Parallel WaveGAN, Yamamoto et al. 2020, here on the log-mel).
        multiscale_scales: pooling windows, ``[[time, freq], ...]`` or square sizes.
        silence_weight: weight of near-silent frames in the L1 / L2 terms (1: every frame alike; the weighted
            mean is over frames, so the loss keeps its scale).
        silence_level: a frame is near-silent when its mean over mel bins (model space) is below this; -0.5 is
            -60 dB with the default [-80, 0] dB map.
    """

    def __init__(self, l1_weight: float = 1.0, l2_weight: float = 0.0, codebook_weight: float = 0.1,
                 codebook_warmup_steps: int = 0, codebook_ramp: str = "up", codebook_start_factor: float = 3.0,
                 multiscale_weight: float = 0.0,
                 multiscale_scales: Sequence[Sequence[int]] | Sequence[int] = ((2, 2), (4, 4), (8, 8)),
                 silence_weight: float = 1.0, silence_level: float = -0.5) -> None:
        super().__init__()
        if isinstance(silence_weight, bool) or not isinstance(silence_weight, int | float) or silence_weight < 0:
            raise ValueError(f"loss.params.silence_weight={silence_weight!r}: expected a number >= 0 (1: no weighting)")
        if isinstance(silence_level, bool) or not isinstance(silence_level, int | float):
            raise ValueError(f"loss.params.silence_level={silence_level!r}: expected a number (model space)")
        self.silence_weight = float(silence_weight)
        self.silence_level = float(silence_level)
        if l1_weight < 0 or l2_weight < 0 or l1_weight + l2_weight == 0:
            raise ValueError(f"l1_weight={l1_weight}, l2_weight={l2_weight}: expected non-negative weights, "
                             "at least one positive")
        if codebook_weight < 0 or codebook_warmup_steps < 0:
            raise ValueError(f"codebook_weight={codebook_weight}, codebook_warmup_steps={codebook_warmup_steps}: "
                             "expected non-negative values")
        if codebook_ramp not in CODEBOOK_RAMPS:
            raise ValueError(f"loss.params.codebook_ramp={codebook_ramp!r}: expected one of {list(CODEBOOK_RAMPS)}")
        if isinstance(codebook_start_factor, bool) or not isinstance(codebook_start_factor, int | float) \
                or codebook_start_factor < 1:
            raise ValueError(f"loss.params.codebook_start_factor={codebook_start_factor!r}: expected a number >= 1")
        if isinstance(multiscale_weight, bool) or not isinstance(multiscale_weight, int | float) \
                or multiscale_weight < 0:
            raise ValueError(f"loss.params.multiscale_weight={multiscale_weight!r}: expected a number >= 0")
        self.l1_weight = l1_weight
        self.l2_weight = l2_weight
        self.codebook_weight = codebook_weight
        self.codebook_warmup_steps = codebook_warmup_steps
        self.codebook_ramp = codebook_ramp
        self.codebook_start_factor = float(codebook_start_factor)
        self.multiscale_weight = float(multiscale_weight)
        self.multiscale_scales = _pool_pairs(multiscale_scales)
        if self.multiscale_weight > 0 and not self.multiscale_scales:
            raise ValueError("loss.params.multiscale_scales is empty but multiscale_weight > 0")

    def codebook_weight_at(self, step: int) -> float:
        """The quantizer-loss weight after ``step`` applied updates."""
        if self.codebook_warmup_steps == 0:
            return self.codebook_weight
        progress = min(1.0, step / self.codebook_warmup_steps)
        if self.codebook_ramp == "up":
            return self.codebook_weight * progress
        return self.codebook_weight * (self.codebook_start_factor + (1.0 - self.codebook_start_factor) * progress)

    def reconstruction(self, recon: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The reconstruction part (no quantizer term) of (B, T, F) ``recon`` vs ``target`` → (loss, terms)."""
        recon = recon.float()
        target = target.float()
        l1 = F.l1_loss(recon, target)
        l2 = F.mse_loss(recon, target)
        terms = {"loss/l1": l1.detach(), "loss/l2": l2.detach()}
        if self.silence_weight != 1.0:
            weights = self.frame_weights(target)
            l1 = (weights * (recon - target).abs().mean(-1)).sum() / weights.sum()
            l2 = (weights * (recon - target).square().mean(-1)).sum() / weights.sum()
            terms["loss/l1_weighted"] = l1.detach()
        loss = self.l1_weight * l1 + self.l2_weight * l2
        if self.multiscale_weight > 0:
            multiscale = multiscale_l1(recon, target, self.multiscale_scales)
            loss = loss + self.multiscale_weight * multiscale
            terms["loss/multiscale"] = multiscale.detach()
        return loss, terms

    def frame_weights(self, target: Tensor) -> Tensor:
        """(B, T, F) target → (B, T) weights: ``silence_weight`` for frames whose mean level (model space) is below
        ``silence_level`` (near-silent frames), 1 elsewhere."""
        quiet = target.mean(-1) < self.silence_level
        return torch.where(quiet, torch.full_like(quiet, self.silence_weight, dtype=target.dtype),
                           torch.ones_like(quiet, dtype=target.dtype))

    def forward(self, recon: Tensor, target: Tensor, quant_loss: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """recon, target (B, T, F) in model space; quant_loss scalar → (total, {name: detached term})."""
        rec_loss, rec_terms = self.reconstruction(recon, target)
        weight = self.codebook_weight_at(step)
        total = rec_loss + weight * quant_loss
        terms = {
            "loss/total": total.detach(),
            **rec_terms,
            "loss/quantizer": quant_loss.detach(),
            "loss/codebook_weight": torch.tensor(weight),
        }
        return total, terms
