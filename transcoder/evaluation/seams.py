"""Patch-boundary seams of a patch-based reconstruction, as a number.

A ViT decoder predicts each (pt x pf) patch of the log-mel through its own linear head, so neighbouring
cells on either side of a patch boundary can jump where the input is smooth: horizontal stripes every
``pf`` mel bins and vertical ones every ``pt`` frames in the spectrogram images. The seam ratio compares the
mean absolute step between neighbouring cells ACROSS patch boundaries with the mean step INSIDE patches,
relative to the same ratio of the target: 1.0 means boundaries look like the input (no seams), 1.3 means the
steps across boundaries are 30 % larger than the input explains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from transcoder.data import collate_audio

__all__ = ["boundary_step_ratio", "seam_ratio", "seam_scores"]


def boundary_step_ratio(mel: Tensor, patch: int, dim: int) -> Tensor:
    """Mean |step| between neighbours across patch boundaries over the mean |step| inside patches, along
    ``dim`` (1: time, 2: frequency) of a (B, T, F) mel with patches of ``patch`` cells; a scalar."""
    steps = mel.diff(dim=dim).abs()  # position j: between cells j and j + 1
    positions = torch.arange(steps.shape[dim], device=mel.device)
    boundary = (positions + 1) % patch == 0
    if not boundary.any() or boundary.all():
        raise ValueError(f"patch={patch} along a dimension of {mel.shape[dim]} cells has no boundary or no interior")
    shape = [1, 1, 1]
    shape[dim] = -1
    boundary = boundary.reshape(shape).expand_as(steps)
    return steps[boundary].mean() / steps[~boundary].mean().clamp_min(1e-12)


def seam_ratio(recon: Tensor, target: Tensor, patch: int, dim: int) -> float:
    """:func:`boundary_step_ratio` of ``recon`` divided by that of ``target`` (both (B, T, F))."""
    return float(boundary_step_ratio(recon.float(), patch, dim) / boundary_step_ratio(target.float(), patch, dim))


@torch.inference_mode()
def seam_scores(tok: Any, dataset: Any, batch_size: int = 8, max_batches: int | None = 8,
                bits: int | None = None) -> dict[str, float | None]:
    """Frequency and time seam ratios of ``tok``'s reconstructions of the first windows of ``dataset``
    (eval-mode windows of ``tok.window_samples``), pooled over the windows; ``bits``: reconstruct from codes of
    that many bits (a nested-bits model; default: full width). An axis a patch spans whole (e.g. 2 x 128
    patches of 128 mel bins) has no patch boundary, hence no seams: its ratio is ``None``."""
    from transcoder.evaluation.evaluate import reconstruct

    recons, targets = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_audio)
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        mel = tok.frontend(batch["audio"].to(tok.device))
        recon, _, _ = reconstruct(tok, mel, bits)
        recons.append(recon.float().cpu())
        targets.append(mel.float().cpu())
    recon, target = torch.cat(recons), torch.cat(targets)
    pt, pf = tok.patch_size

    def along(patch: int, dim: int) -> float | None:
        return None if patch >= recon.shape[dim] else seam_ratio(recon, target, patch, dim)

    return {"freq": along(pf, 2), "time": along(pt, 1)}
