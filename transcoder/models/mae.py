"""Masked-autoencoder pre-training of the tokenizer's encoder (ideas from MAE, He et al. 2022, and AudioMAE,
Huang et al. 2022).

Data flow (shapes for the demo grid, ``Nt x Nf = 16 x 8``, mask ratio 0.8)::

    mel (B, T, F) → patches (B, N=128, pt*pf) → random mask: visible (B, Nv=26), masked (B, Nm=102)
    → encoder on visible tokens only (B, Nv, width)      [MaskedAudioEncoder.forward_visible]
    → Linear(width → decoder_width) → scatter into (B, N, decoder_width) with a learned mask token
    → + pos-embed → light decoder blocks → LayerNorm → Linear(→ pt*pf) → predicted patches (B, N, pt*pf)

The encoder is the tokenizer's own encoder (:class:`MaskedAudioEncoder` adds the visible-token forward and no
weights) built from the same ``audioconfig`` keys, so its weights load
into :class:`~transcoder.models.audiobsq.AudioBSQModel` (``training.init_from``). The loss (masked patches
only) is :class:`transcoder.losses.masked.MaskedPatchLoss`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from transcoder.models.audiobsq import AudioConfig, AudioTransformerBlock, AudioTransformerEncoder, init_vit_weights
from transcoder.models.conformer_conv import ConformerConvModule
from transcoder.models.depthwise_conv import depthwise_conv_time
from transcoder.models.patching import patchify, unpatchify

__all__ = ["AudioMAE", "MaskSpec", "MaskedAudioEncoder", "MaskedPatchDecoder", "MaskedPrediction", "patchify",
           "scatter_tokens", "take_tokens", "unpatchify"]

MASK_MODES = ("unstructured", "time", "frequency", "time_frequency")
ENCODER_CONV_MODES = ("zero_fill", "skip")


def take_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Tokens ``x`` (B, N, C) at ``index`` (B, K) int64 → (B, K, C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(tokens: Tensor, index: Tensor, fill: Tensor, num_tokens: int) -> Tensor:
    """Place ``tokens`` (B, K, C) at positions ``index`` (B, K) of a (B, num_tokens, C) sequence whose other
    positions hold ``fill`` (broadcastable to (B, num_tokens, C), e.g. a (1, 1, C) mask token)."""
    batch, _, channels = tokens.shape
    base = fill.to(tokens.dtype).expand(batch, num_tokens, channels)
    return base.scatter(1, index.unsqueeze(-1).expand(-1, -1, channels), tokens)


class MaskedAudioEncoder(AudioTransformerEncoder):
    """The tokenizer's encoder (same parameters, same state-dict keys) with a forward over visible tokens."""

    def forward_visible(self, mel: Tensor, visible: Tensor, conv: str = "zero_fill") -> Tensor:
        """Encode only the visible patches (AudioMAE, Huang et al. 2022): masked tokens are dropped from
        the sequence, so attention and MLPs cost ``Nv / N`` of a full forward.

        Args:
            mel: (B, T, F) log-mel.
            visible: (B, Nv) int64 token indices (time-major, ``t * Nf + f``) to keep, the same count per row.
            conv: how the Conformer conv module, which needs the full (Nt, Nf) grid, runs: ``"zero_fill"``
                scatters the visible tokens into a zero grid for the depthwise convolution only (per-token
                layers and BatchNorm see visible tokens only); ``"skip"`` leaves the conv modules out (they
                are then trained only when fine-tuning).

        Returns:
            (B, Nv, width) features of the visible tokens, after the final LayerNorm. (Gradient
            checkpointing is not applied here: a masked step is already a fraction of a full one.)
        """
        if conv not in ENCODER_CONV_MODES:
            raise ValueError(f"conv={conv!r}: expected one of {list(ENCODER_CONV_MODES)}")
        grid = self.token_grid(mel)
        patches = patchify(mel, self.config.patch_tf)
        tokens = self.patch_embed(patches) + self.position_embedding(grid).to(patches.dtype)
        x = take_tokens(tokens, visible)
        for block in self.blocks:
            x = x + block.drop_path(block.attn(block.norm1(x)))
            if block.conv is not None and conv == "zero_fill":
                x = x + block.drop_path(_conv_module_on_visible(block.conv, x, visible, grid))
            x = x + block.drop_path(block.mlp(block.norm2(x)))
        return self.norm(x)


def _conv_module_on_visible(module: ConformerConvModule, x: Tensor, visible: Tensor, grid: tuple[int, int]) -> Tensor:
    """The conv module on visible tokens (B, Nv, C) → (B, Nv, C): the depthwise convolution runs on the
    full grid with zeros at masked positions; everything per-token (and BatchNorm's statistics) sees
    visible tokens only."""
    batch, _, channels = x.shape
    nt, nf = grid
    h = F.glu(module.pointwise_in(module.norm(x)), dim=-1)
    full = scatter_tokens(h, visible, h.new_zeros(()), nt * nf)
    full = depthwise_conv_time(full.reshape(batch, nt, nf, channels), module.depthwise_weight,
                               module.depthwise_bias).reshape(batch, nt * nf, channels)
    h = take_tokens(full, visible)
    h = module.batch_norm(h.reshape(-1, channels)).reshape(h.shape)
    return module.dropout(module.pointwise_out(F.silu(h)))


@dataclass(frozen=True)
class MaskSpec:
    """How many tokens a mask drops: ``ratio`` of the grid, unstructured or as whole time rows / frequency
    columns. Every sample of a batch gets the same number of visible tokens (so they batch)."""

    ratio: float
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask_mode={self.mode!r}: expected one of {list(MASK_MODES)}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"mask_ratio={self.ratio!r}: expected a number in [0, 1)")

    def masked_rows_cols(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Masked time rows and frequency columns of a structured mask on ``grid = (Nt, Nf)``. For
        ``time_frequency`` each axis drops ``1 - sqrt(1 - ratio)`` of its lines, so the union is ~``ratio``."""
        nt, nf = grid
        if self.mode == "time":
            return round(self.ratio * nt), 0
        if self.mode == "frequency":
            return 0, round(self.ratio * nf)
        per_axis = 1.0 - math.sqrt(1.0 - self.ratio)
        return round(per_axis * nt), round(per_axis * nf)

    def num_masked(self, grid: tuple[int, int]) -> int:
        """Masked tokens per sample on ``grid``; at least one token stays visible."""
        nt, nf = grid
        if self.mode == "unstructured":
            masked = round(self.ratio * nt * nf)
        else:
            rows, cols = self.masked_rows_cols(grid)
            masked = nt * nf - (nt - rows) * (nf - cols)
        if masked >= nt * nf:
            raise ValueError(f"mask_ratio={self.ratio} masks every token of the {nt}x{nf} grid ({self.mode}); "
                             "lower it")
        return masked

    def sample(self, batch: int, grid: tuple[int, int], device: torch.device,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw one mask per sample.

        Returns:
            visible: (B, Nv) int64 token indices, ascending; masked: (B, Nm) int64, ascending;
            mask: (B, N) bool, True where a token is masked. ``Nv + Nm = N`` and ``Nm = num_masked(grid)``.
        """
        nt, nf = grid
        num = nt * nf
        num_masked = self.num_masked(grid)
        if self.mode == "unstructured":
            scores = torch.rand(batch, num, device=device, generator=generator)
        else:
            rows, cols = self.masked_rows_cols(grid)
            row_rank = torch.rand(batch, nt, device=device, generator=generator).argsort(1).argsort(1)
            col_rank = torch.rand(batch, nf, device=device, generator=generator).argsort(1).argsort(1)
            # A token is masked if its row or its column is among the lowest-ranked `rows` / `cols`.
            masked_grid = (row_rank < rows).unsqueeze(2) | (col_rank < cols).unsqueeze(1)
            scores = masked_grid.reshape(batch, num).float() * -1.0  # masked tokens sort first
        order = scores.argsort(dim=1, stable=True)
        masked = order[:, :num_masked].sort(dim=1).values
        visible = order[:, num_masked:].sort(dim=1).values
        mask = torch.zeros(batch, num, dtype=torch.bool, device=device).scatter(1, masked, True)
        return visible, masked, mask


@dataclass
class MaskedPrediction:
    """What :class:`AudioMAE` returns: predicted patches for every position, the mask and the targets.

    pred: (B, N, pt*pf); target: (B, N, pt*pf) patches of the input; mask: (B, N) bool (True = masked);
    visible: (B, Nv) and masked: (B, Nm) int64 indices; grid: (Nt, Nf).
    """

    pred: Tensor
    target: Tensor
    mask: Tensor
    visible: Tensor
    masked: Tensor
    grid: tuple[int, int]


class MaskedPatchDecoder(nn.Module):
    """Light decoder on the full grid: learned position embedding, ``layers`` blocks (attention + MLP, no conv
    module), LayerNorm and a patch projection. (B, N, width) → (B, N, pt*pf)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.grid = config.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], config.width))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(AudioTransformerBlock(config, 0.0) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        pt, pf = config.patch_tf
        self.to_patches = nn.Linear(config.width, pt * pf)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, width) on ``grid`` → (B, N, pt*pf)."""
        if grid != self.grid:
            raise ValueError(f"the MAE decoder is built for a {self.grid} token grid, got {grid}: pre-train "
                             "on windows of data.target_length frames")
        x = tokens + self.pos_embed.to(tokens.dtype)
        for block in self.blocks:
            x = block(x, grid)
        return self.to_patches(self.norm(x))


class AudioMAE(nn.Module):
    """Masked autoencoder around the tokenizer's encoder.

    Args:
        audioconfig: the encoder's architecture, the same keys as the tokenizer's ``audioconfig``.
        mask_ratio: share of tokens dropped (AudioMAE used 0.8).
        mask_mode: ``unstructured`` | ``time`` (whole time rows) | ``frequency`` (whole frequency columns) |
            ``time_frequency`` (rows and columns).
        encoder_conv: ``zero_fill`` or ``skip``; see :meth:`MaskedAudioEncoder.forward_visible`.
        decoder_width, decoder_layers, decoder_heads, decoder_mlp_ratio: the light decoder.
    """

    def __init__(
        self,
        audioconfig: dict[str, Any] | AudioConfig | None = None,
        mask_ratio: float = 0.8,
        mask_mode: str = "unstructured",
        encoder_conv: str = "zero_fill",
        decoder_width: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        decoder_mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.config = AudioConfig.from_dict(audioconfig)
        self.mask_spec = MaskSpec(mask_ratio, mask_mode)
        if encoder_conv not in ENCODER_CONV_MODES:
            raise ValueError(f"encoder_conv={encoder_conv!r}: expected one of {list(ENCODER_CONV_MODES)}")
        self.encoder_conv = encoder_conv
        try:
            decoder_config = dataclasses.replace(
                self.config, width=decoder_width, layers=decoder_layers, heads=decoder_heads,
                mlp_ratio=decoder_mlp_ratio, use_conv_module=False, drop_path=0.0, grad_checkpointing=False)
            decoder_config.validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"MAE decoder (decoder_width={decoder_width!r}, decoder_layers={decoder_layers!r}, "
                             f"decoder_heads={decoder_heads!r}): {err}") from None
        self.encoder = MaskedAudioEncoder(self.config)
        self.decoder_embed = nn.Linear(self.config.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder = MaskedPatchDecoder(decoder_config)
        self.apply(init_vit_weights)
        trunc_normal_(self.mask_token, std=0.02)
        if encoder_conv == "skip":
            # Never used here: frozen from construction (so DDP and AdamW leave them out); they keep their
            # initial values in checkpoints and are trained when the tokenizer is fine-tuned.
            for block in self.encoder.blocks:
                if block.conv is not None:
                    block.conv.requires_grad_(False)

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.config.patch_tf

    def forward(self, mel: Tensor, generator: torch.Generator | None = None) -> MaskedPrediction:
        """(B, T, F) log-mel → :class:`MaskedPrediction`; the mask is drawn from ``generator`` (default: the
        global torch RNG, which checkpoints restore)."""
        grid = self.encoder.token_grid(mel)
        visible, masked, mask = self.mask_spec.sample(mel.shape[0], grid, mel.device, generator)
        features = self.encoder.forward_visible(mel, visible, conv=self.encoder_conv)
        tokens = scatter_tokens(self.decoder_embed(features), visible, self.mask_token, grid[0] * grid[1])
        pred = self.decoder(tokens, grid)
        return MaskedPrediction(pred=pred, target=patchify(mel, self.patch_size), mask=mask, visible=visible,
                                masked=masked, grid=grid)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW should not decay (besides norms and biases)."""
        return {"encoder.pos_embed", "decoder.pos_embed", "mask_token"}
