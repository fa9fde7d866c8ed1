"""The token grid of a log-mel: patches in time-major order, and which tokens hold real audio.

A (B, T, F) log-mel is cut into ``pt x pf`` (time x frequency) patches; token ``t * Nf + f`` is the patch
of time row ``t`` and frequency column ``f`` (``Nt = T / pt``, ``Nf = F / pf``). Every module that turns
mels into tokens or tokens back into mels (the tokenizer, the masked autoencoder, the streaming encoder
and decoder) goes through :func:`patchify` / :func:`unpatchify`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

__all__ = ["patchify", "unpatchify", "valid_token_mask"]


def patchify(mel: Tensor, patch_tf: tuple[int, int]) -> Tensor:
    """(B, T, F) → (B, Nt*Nf, pt*pf) patches, time-major. ``T`` and ``F`` must be multiples of the patch."""
    pt, pf = patch_tf
    return rearrange(mel, "b (nt pt) (nf pf) -> b (nt nf) (pt pf)", pt=pt, pf=pf)


def unpatchify(patches: Tensor, grid: tuple[int, int], patch_tf: tuple[int, int]) -> Tensor:
    """(B, Nt*Nf, pt*pf) on ``grid = (Nt, Nf)`` → (B, Nt*pt, Nf*pf); the inverse of :func:`patchify`."""
    pt, pf = patch_tf
    return rearrange(patches, "b (nt nf) (pt pf) -> b (nt pt) (nf pf)", nt=grid[0], nf=grid[1], pt=pt, pf=pf)


def valid_token_mask(valid_frames: Tensor, grid: tuple[int, int], patch_t: int) -> Tensor:
    """(B,) unpadded mel frames per item → (B, Nt*Nf) bool, True for the tokens of every time row that
    covers at least one of them (``ceil(frames / pt)`` rows); an item with 0 frames has no valid token."""
    rows = -(-valid_frames.long() // int(patch_t))
    row_mask = torch.arange(grid[0], device=rows.device)[None, :] < rows[:, None]  # (B, Nt)
    return row_mask[:, :, None].expand(-1, -1, grid[1]).reshape(valid_frames.shape[0], -1)
