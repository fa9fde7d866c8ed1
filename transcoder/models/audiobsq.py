"""Audio BSQ-ViT: a ViT encoder/decoder over log-mel patches with Binary Spherical Quantization.

Data flow (shapes for the standard config)::

    mel (B, T=1024, F=128) → patches (B, Nt*Nf = 64*8, pt*pf) → Linear → + pos-embed
    → encoder blocks [attention, Conformer conv module, MLP] → LayerNorm → Linear(width → d)
    → BSQ codes (B, 512, d) → Linear(d → width) → + pos-embed → decoder blocks → LayerNorm
    → Linear(width → pt*pf) → mel (B, T, F)

Tokens are ordered time-major (token ``t * Nf + f``), so the token grid is ``(B, Nt, Nf, C)``
channels-last. The Conformer module's depthwise convolution runs along time within each
frequency band (see AUDIO_ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Attention
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from transcoder.models.causal import CausalTransformerBlock, band_position_embedding
from transcoder.models.conformer_conv import ConformerConvModule
from transcoder.models.mel_layers import OutputConvHead, PerBinNorm
from transcoder.models.patching import patchify, unpatchify, valid_token_mask
from transcoder.models.quantizer.bsq import MAX_INDEX_BITS
from transcoder.models.quantizer.nested import NestedBits, truncate_indices
from transcoder.models.quantizer.spec import build_quantizer, keyword_names, quantizer_bits, quantizer_spec
from transcoder.utils.rates import token_rates


@dataclass
class AudioConfig:
    """Architecture of the encoder and (mirrored) decoder: the model config's ``audioconfig``."""

    input_size: int = 128  # mel bins F
    input_length: int = 1024  # time frames T the position embeddings are trained on
    patch_size: int | tuple[int, int] = 16  # int or (time, freq)
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_conv_module: bool = True
    conv_kernel_size: int = 31
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # Streaming variant (transcoder/models/causal.py): block-causal sliding-window attention over time
    # rows with rotary time positions, causal convs. ``lookahead``: rows the encoder's first attention
    # sees ahead (the encoder's whole receptive future); ``context``: attention window in rows.
    causal: bool = False
    lookahead: int = 0
    context: int = 32
    rope_base: float = 10000.0
    output_conv_channels: int = 0  # >0: a residual 3x3 conv head over the decoded mel (smooths patch seams)
    decoder_layers: int | None = None  # decoder depth; None: the same as ``layers`` (the encoder's)
    # "per_bin": standardise each mel bin with statistics of the first ``input_norm_batches`` training batches
    # (kept in the weights); the decoder predicts in the standardised space and the output is mapped back.
    input_norm: str = "none"
    input_norm_batches: int = 100

    @classmethod
    def from_dict(cls, values: dict[str, Any] | AudioConfig | None) -> AudioConfig:
        """Build and validate from a dict; an unknown key raises a ``ValueError`` naming it."""
        if isinstance(values, AudioConfig):
            return values
        values = dict(values or {})
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown audioconfig key(s) {unknown}; valid keys: {sorted(valid)}")
        config = cls(**values)
        config.validate()
        return config

    @property
    def patch_tf(self) -> tuple[int, int]:
        """Patch size as ``(time, freq)``."""
        if isinstance(self.patch_size, int):
            return (self.patch_size, self.patch_size)
        return (int(self.patch_size[0]), int(self.patch_size[1]))

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(Nt, Nf)`` for ``input_length`` frames."""
        pt, pf = self.patch_tf
        return (self.input_length // pt, self.input_size // pf)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the ``audioconfig`` key of the first bad value."""
        for name in ("input_size", "input_length", "width", "layers", "heads", "conv_kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"audioconfig.{name}={value!r}: expected a positive integer")
        if isinstance(self.output_conv_channels, bool) or not isinstance(self.output_conv_channels, int) \
                or self.output_conv_channels < 0:
            raise ValueError(f"audioconfig.output_conv_channels={self.output_conv_channels!r}: expected an integer "
                             ">= 0 (0: off)")
        if self.decoder_layers is not None and (isinstance(self.decoder_layers, bool)
                                                or not isinstance(self.decoder_layers, int) or self.decoder_layers < 1):
            raise ValueError(f"audioconfig.decoder_layers={self.decoder_layers!r}: expected a positive integer or "
                             "null (the encoder's depth)")
        if self.input_norm not in ("none", "per_bin"):
            raise ValueError(f"audioconfig.input_norm={self.input_norm!r}: expected 'none' or 'per_bin'")
        if isinstance(self.input_norm_batches, bool) or not isinstance(self.input_norm_batches, int) \
                or self.input_norm_batches < 1:
            raise ValueError(f"audioconfig.input_norm_batches={self.input_norm_batches!r}: expected a positive "
                             "integer (training batches the statistics are taken from)")
        for name in ("qkv_bias", "use_conv_module", "grad_checkpointing", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"audioconfig.{name}={getattr(self, name)!r}: expected true or false")
        for name in ("mlp_ratio", "drop_rate", "attn_drop_rate", "drop_path"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"audioconfig.{name}={value!r}: expected a number")
        if not 0 < self.mlp_ratio < float("inf") or int(self.width * self.mlp_ratio) < 1:
            raise ValueError(f"audioconfig.mlp_ratio={self.mlp_ratio!r}: expected a positive number "
                             f"(width * mlp_ratio >= 1)")
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int | list | tuple):
            raise ValueError(f"audioconfig.patch_size={self.patch_size!r}: expected an int or a [time, freq] pair")
        if not isinstance(self.patch_size, int):
            if len(self.patch_size) != 2 or not all(isinstance(p, int) and not isinstance(p, bool)
                                                    for p in self.patch_size):
                raise ValueError(f"patch_size={self.patch_size!r}: expected an int or a [time, freq] pair")
            self.patch_size = (int(self.patch_size[0]), int(self.patch_size[1]))
        pt, pf = self.patch_tf
        if pt < 1 or pf < 1:
            raise ValueError(f"patch_size={self.patch_size!r}: sizes must be positive")
        if self.input_length % pt:
            raise ValueError(f"input_length={self.input_length} is not a multiple of the time patch {pt}")
        if self.input_size % pf:
            raise ValueError(f"input_size={self.input_size} is not a multiple of the frequency patch {pf}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        if self.layers < 1:
            raise ValueError(f"layers={self.layers}: expected at least 1")
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size={self.conv_kernel_size}: expected a positive odd number")
        for name in ("drop_rate", "attn_drop_rate", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a value in [0, 1)")
        self._validate_causal()

    def _validate_causal(self) -> None:
        """Checks of the streaming keys (``causal``, ``lookahead``, ``context``, ``rope_base``)."""
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) or self.lookahead < 0:
            raise ValueError(f"audioconfig.lookahead={self.lookahead!r}: expected an integer >= 0 (time rows)")
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 1:
            raise ValueError(f"audioconfig.context={self.context!r}: expected a positive integer (time rows)")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, int | float) or self.rope_base <= 1:
            raise ValueError(f"audioconfig.rope_base={self.rope_base!r}: expected a number > 1")
        if not self.causal and self.lookahead:
            raise ValueError(f"audioconfig.lookahead={self.lookahead} needs causal: true")
        if self.causal and (self.width // self.heads) % 2:
            raise ValueError(f"audioconfig width={self.width} / heads={self.heads}: the causal variant's rotary "
                             f"positions need an even head size")


#: The model variants (width / layers / heads / bits).
PRESETS: dict[str, dict[str, Any]] = {
    "small_b9": {"embed_dim": 9, "audioconfig": {"width": 512, "layers": 6, "heads": 8}},
    "base_b18": {"embed_dim": 18, "audioconfig": {"width": 768, "layers": 12, "heads": 12}},
    "large_b36": {"embed_dim": 36, "audioconfig": {"width": 1024, "layers": 24, "heads": 16}},
}


class AudioTransformerBlock(nn.Module):
    """Pre-norm block: attention, optional Conformer conv module, MLP; each with a residual."""

    def __init__(self, config: AudioConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.width
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=config.heads, qkv_bias=config.qkv_bias,
                              attn_drop=config.attn_drop_rate, proj_drop=config.drop_rate)
        self.conv = (ConformerConvModule(dim, config.conv_kernel_size, config.drop_rate)
                     if config.use_conv_module else None)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), act_layer=nn.GELU, drop=config.drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, C) → (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        if self.conv is not None:
            x = x + self.drop_path(self.conv(x, grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _AudioTransformer(nn.Module):
    """Learnable time-frequency position embedding + a stack of blocks + final LayerNorm."""

    def __init__(self, config: AudioConfig, lookahead: int = 0, layers: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.grid = config.grid
        layers = config.layers if layers is None else layers
        rates = [config.drop_path * i / max(layers - 1, 1) for i in range(layers)]
        if config.causal:
            # Streaming variant: a learned band embedding (rotary time positions live in the attention),
            # ``lookahead`` in the first block only (see transcoder/models/causal.py).
            self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[1], config.width))
            self.blocks = nn.ModuleList(_causal_block(config, rate, lookahead if i == 0 else 0)
                                        for i, rate in enumerate(rates))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], config.width))
            self.blocks = nn.ModuleList(AudioTransformerBlock(config, rate) for rate in rates)
        trunc_normal_(self.pos_embed, std=0.02)
        self.norm = nn.LayerNorm(config.width)
        self.grad_checkpointing = config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """(1, Nt*Nf, C) position embedding, resampled along time when ``Nt`` differs from training
        (causal variant: the band embedding tiled over the ``Nt`` rows)."""
        if self.config.causal:
            return band_position_embedding(self.pos_embed, grid[0])
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=list(self.grid),
                                      num_prefix_tokens=0, interpolation="bilinear", antialias=False)

    def run_blocks(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, C) tokens → (B, N, C) after position embedding, blocks and norm."""
        x = x + self.position_embedding(grid).to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # torch.compile only accepts dispatch modes as checkpoint contexts: there the recomputation
                # updates the BatchNorm running statistics a second time (documented).
                contexts = ({} if torch.compiler.is_compiling()
                            else {"context_fn": functools.partial(_checkpoint_contexts, block)})
                x = checkpoint(block, x, grid, use_reentrant=False, **contexts)
            else:
                x = block(x, grid)
        return self.norm(x)


class AudioTransformerEncoder(_AudioTransformer):
    """Log-mel (B, T, F) → token features (B, Nt*Nf, width). T may be any multiple of ``pt``."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config, lookahead=config.lookahead)
        pt, pf = config.patch_tf
        self.patch_embed = nn.Linear(pt * pf, config.width)

    def token_grid(self, mel: Tensor) -> tuple[int, int]:
        """Token grid ``(Nt, Nf)`` for a (B, T, F) input; raises ``ValueError`` on a bad shape."""
        if mel.ndim != 3:
            raise ValueError(f"expected a log-mel batch (B, T, F), got shape {tuple(mel.shape)}")
        _, frames, bins = mel.shape
        pt, pf = self.config.patch_tf
        if bins != self.config.input_size:
            raise ValueError(f"expected {self.config.input_size} mel bins (input_size), got {bins}")
        if frames % pt or frames == 0:
            raise ValueError(f"time frames T={frames} must be a positive multiple of the time patch {pt}")
        return (frames // pt, bins // pf)

    def forward(self, mel: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = self.token_grid(mel)
        return self.run_blocks(self.patch_embed(patchify(mel, self.config.patch_tf)), grid), grid


class AudioTransformerDecoder(_AudioTransformer):
    """Token features (B, Nt*Nf, width) on ``grid`` → log-mel (B, Nt*pt, Nf*pf)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config, layers=config.decoder_layers)
        pt, pf = config.patch_tf
        self.to_patches = nn.Linear(config.width, pt * pf)
        self.output_conv = OutputConvHead(config.output_conv_channels) if config.output_conv_channels else None

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        mel = unpatchify(self.to_patches(self.run_blocks(tokens, grid)), grid, self.config.patch_tf)
        return self.output_conv(mel) if self.output_conv is not None else mel


def bits_per_token(params: Mapping[str, Any]) -> int:
    """Bits per token of the :class:`AudioBSQModel` a config's ``model.params`` describe, building the quantizer
    only (not the model): ``embed_dim`` for BSQ, ``sum(log2(levels))`` for FSQ."""
    own = keyword_names(AudioBSQModel)
    flat = {k: v for k, v in params.items() if k not in own}
    embed_dim = params.get("embed_dim", 18)
    spec = quantizer_spec(params.get("quantizer"), **flat)
    return quantizer_bits(build_quantizer(spec, embed_dim, params.get("l2_norm", True)), embed_dim)


class AudioBSQModel(nn.Module):
    """Audio tokenizer: encoder → BSQ → decoder on log-mel spectrograms.

    Args:
        audioconfig: architecture (dict or :class:`AudioConfig`).
        embed_dim: code dimension; for BSQ also the bits per token (:attr:`bits` is the quantizer's bits per
            token: ``sum(log2(levels))`` for :class:`~transcoder.models.quantizer.fsq.FiniteScalarQuantizer`).
        l2_norm: quantize on the unit sphere (BSQ); codes have norm 1. Must be false for FSQ.
        clamp_range: range the reconstruction is clamped to outside training (model space).
        quantizer: the quantizer's spec ``{"target": ..., "params": {...}}`` (see :func:`quantizer_spec`);
            default: :class:`BinarySphericalQuantizer` with its defaults. The model passes ``embed_dim`` and
            ``l2_norm`` to it.
        **quantizer_params: the quantizer's settings given flat (``beta``, ``gamma0``, ``gamma``, ``zeta``,
            ``inv_temperature``, ``group_size``, ``persample_entropy_compute``, ``cb_entropy_compute``,
            ``straight_through``, ``cb_entropy_ddp_average``), as older configs and checkpoints do; they
            are nested into ``quantizer.params``.
        nested_bits: ``{widths, probs, per, fill}`` trains every prefix of ``widths`` bits to be a
            usable code (see :class:`NestedBits`); ``None`` (default) trains the full width only. Needs a
            quantizer whose code dimension ``i`` is bit ``i`` (BSQ); refused with FSQ.

    Attributes:
        bits: bits per token of the codes (the quantizer's ``bits``: ``embed_dim`` for BSQ); what rates, codes
            files and the ``bits`` arguments count.
    """

    def __init__(
        self,
        audioconfig: dict[str, Any] | AudioConfig | None = None,
        embed_dim: int = 18,
        l2_norm: bool = True,
        clamp_range: tuple[float, float] = (-1.0, 1.0),
        quantizer: Mapping[str, Any] | None = None,
        nested_bits: dict[str, Any] | None = None,
        **quantizer_params: Any,
    ) -> None:
        super().__init__()
        self.config = AudioConfig.from_dict(audioconfig)
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or not 1 <= embed_dim <= MAX_INDEX_BITS:
            raise ValueError(f"embed_dim={embed_dim!r}: expected 1..{MAX_INDEX_BITS} bits (indices are int64)")
        if len(clamp_range) != 2 or clamp_range[0] >= clamp_range[1]:
            raise ValueError(f"clamp_range={clamp_range!r}: expected [low, high] with low < high")
        self.embed_dim = embed_dim
        self.clamp_range = (float(clamp_range[0]), float(clamp_range[1]))
        self.quantizer_spec = quantizer_spec(quantizer, **quantizer_params)
        self.encoder = AudioTransformerEncoder(self.config)
        self.quant_embed = nn.Linear(self.config.width, embed_dim)
        self.quantizer = build_quantizer(self.quantizer_spec, embed_dim, l2_norm)
        self.bits = quantizer_bits(self.quantizer, embed_dim)
        if nested_bits is not None and not isinstance(nested_bits, dict):
            raise ValueError(f"nested_bits={nested_bits!r}: expected null or a mapping "
                             "{widths: [...], probs, per, fill}")
        if nested_bits and not self._nested_prefixes:
            raise ValueError(f"model.params.nested_bits={nested_bits!r}: nested bits need a quantizer whose first k "
                             f"code dimensions are a k-bit code (BinarySphericalQuantizer); "
                             f"{type(self.quantizer).__name__} has no nested prefixes: set model.params.nested_bits"
                             "=null")
        self.nested_bits = NestedBits(embed_dim=embed_dim, **nested_bits) if nested_bits else None
        self.post_quant_embed = nn.Linear(embed_dim, self.config.width)
        self.decoder = AudioTransformerDecoder(self.config)
        self.input_norm = (PerBinNorm(self.config.input_size, self.config.input_norm_batches)
                           if self.config.input_norm == "per_bin" else None)
        self.apply(init_vit_weights)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AudioBSQModel:
        """Build a spec variant (``small_b9``, ``base_b18``, ``large_b36``); ``audioconfig``
        overrides are merged key by key."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
        preset = dict(PRESETS[name])
        audioconfig = {**preset.pop("audioconfig"), **overrides.pop("audioconfig", {})}
        return cls(audioconfig=audioconfig, **{**preset, **overrides})

    # -- properties -------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int]:
        return self.config.patch_tf

    @property
    def input_length(self) -> int:
        return self.config.input_length

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def _nested_prefixes(self) -> bool:
        """Whether the first ``k`` code dimensions are a ``k``-bit code (BSQ: yes; FSQ: no)."""
        return bool(getattr(self.quantizer, "nested_prefixes", True))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    # -- API --------------------------------------------------------------------------------
    def encode(self, mel: Tensor, compute_entropy: bool | None = None,
               valid_frames: Tensor | None = None, bits: int | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(B, T, F) log-mel → codes (B, N, k) (BSQ: on the unit sphere), quantizer loss, info.

        ``info["indices"]`` has shape (B, T/pt, F/pf), int64; ``info["grid"]`` is (Nt, Nf). The soft
        entropies (and their loss terms) are computed in training mode or with ``compute_entropy=True``.
        ``valid_frames`` (B,): unpadded frames per item; when given, only the token rows covering them
        enter the quantizer's loss and entropies (padding and failed windows count nowhere).
        ``bits`` (default: :attr:`bits`) keeps the first ``k = bits`` bits of every token (codes and
        indices), for a model trained with ``nested_bits``. ``info["bits"]`` is the width of the indices.
        """
        width = self._check_bits(bits)
        if self.input_norm is not None:
            self.input_norm.update(mel, valid_frames)
            mel = self.input_norm.normalize(mel)
        features, grid = self.encoder(mel)
        extra = {}
        if valid_frames is not None:
            extra["token_mask"] = valid_token_mask(valid_frames.to(mel.device), grid, self.config.patch_tf[0])
        codes, quant_loss, info = self.quantizer(self.quant_embed(features), compute_entropy=compute_entropy, **extra)
        info["indices"] = info["indices"].reshape(mel.shape[0], *grid)
        info["grid"] = grid
        if width < self.bits:
            codes = codes[..., :width]
            info["indices"] = truncate_indices(info["indices"], width)
        info["bits"] = width
        return codes, quant_loss, info

    def _check_bits(self, bits: int | None) -> int:
        """The code width asked for: :attr:`bits` by default; fewer only for a nested-bits model."""
        if bits is None or bits == self.bits:
            return self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= self.bits:
            raise ValueError(f"bits={bits!r}: expected an integer in 1..{self.bits}")
        if self.nested_bits is None:
            fewer = ("fewer bits need a model trained with model.params.nested_bits" if self._nested_prefixes else
                     f"{type(self.quantizer).__name__} codes have no nested prefixes")
            raise ValueError(f"bits={bits}: this model was trained for {self.bits}-bit codes only; {fewer}")
        return bits

    def decode(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Codes (B, N, k) → log-mel (B, Nt*pt, F). ``grid`` defaults to ``N / Nf`` time rows.

        ``k`` is ``embed_dim``, or fewer bits for a nested-bits model (the missing bits get its fill).

        Outside training the output is clamped to ``clamp_range``; in training it is returned
        unclamped so the loss sees (and can correct) values beyond the range.
        """
        if codes.ndim != 3 or not 1 <= codes.shape[-1] <= self.embed_dim:
            raise ValueError(f"expected codes (B, N, {self.embed_dim}), got shape {tuple(codes.shape)}")
        if codes.shape[-1] < self.embed_dim:
            if not self._nested_prefixes:
                raise ValueError(f"expected codes (B, N, {self.embed_dim}), got shape {tuple(codes.shape)} "
                                 f"({type(self.quantizer).__name__} codes have no nested prefixes)")
            self._check_bits(codes.shape[-1])
            codes = self.nested_bits.pad(codes)  # type: ignore[union-attr]
        nf = self.config.grid[1]
        if grid is None:
            if codes.shape[1] % nf:
                raise ValueError(f"{codes.shape[1]} tokens is not a whole number of time rows of {nf}")
            grid = (codes.shape[1] // nf, nf)
        mel = self.decoder(self.post_quant_embed(codes.to(self.post_quant_embed.weight.dtype)), grid)
        if self.input_norm is not None:
            mel = self.input_norm.denormalize(mel)
        if not self.training:
            mel = mel.clamp(*self.clamp_range)
        return mel

    def forward(self, mel: Tensor, compute_entropy: bool | None = None,
                valid_frames: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(B, T, F) → reconstruction (B, T, F), quantizer loss (scalar), info (see :meth:`encode`)."""
        codes, quant_loss, info = self.encode(mel, compute_entropy, valid_frames)
        if self.training and self.nested_bits is not None:
            codes, info["nested_widths"] = self.nested_bits(codes)
        return self.decode(codes, info["grid"]), quant_loss, info

    def indices_to_codes(self, indices: Tensor, bits: int | None = None) -> Tensor:
        """(B, Nt, Nf) int64 indices of ``bits`` bits (default :attr:`bits`) → codes (B, Nt*Nf, k), ``k`` code
        dimensions (``embed_dim``; ``bits`` for a nested-bits model's fewer bits)."""
        if indices.ndim != 3:
            raise ValueError(f"expected indices (B, Nt, Nf), got shape {tuple(indices.shape)}")
        return self.quantizer.indices_to_codes(indices.flatten(1), self._check_bits(bits))

    def decode_indices(self, indices: Tensor, bits: int | None = None) -> Tensor:
        """(B, Nt, Nf) int64 → log-mel (B, Nt*pt, F); equals ``decode(encode(x, bits=k)[0])`` exactly."""
        return self.decode(self.indices_to_codes(indices, bits), tuple(indices.shape[1:]))

    def tokens_per_second(self, hop_length: int, sample_rate: int) -> float:
        """Tokens per second of audio for mel frames every ``hop_length`` samples."""
        return token_rates(self.patch_size, self.input_size, hop_length, sample_rate).tokens_per_second

    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW should not decay (besides norms and biases)."""
        return {"encoder.pos_embed", "decoder.pos_embed"}


def _causal_block(config: AudioConfig, drop_path: float, lookahead: int) -> CausalTransformerBlock:
    """A block of the streaming variant (``audioconfig.causal: true``)."""
    return CausalTransformerBlock(
        config.width, config.heads, config.mlp_ratio, config.qkv_bias, config.drop_rate, config.attn_drop_rate,
        config.use_conv_module, config.conv_kernel_size, drop_path, config.context, lookahead, config.rope_base)


def _checkpoint_contexts(block: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """Plain forward; the backward's recomputation leaves BatchNorm running statistics untouched."""
    return contextlib.nullcontext(), _frozen_batchnorm_stats(block)


@contextlib.contextmanager
def _frozen_batchnorm_stats(block: nn.Module) -> Iterator[None]:
    """Batch statistics are still used (training mode) but the running ones are not updated again."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights with zero biases and unit LayerNorms (timm's ViT init)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
