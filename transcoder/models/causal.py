"""Causal building blocks of the streaming Audio BSQ-ViT variant (``audioconfig.causal: true``).

Tokens are ordered time-major on a ``(Nt, Nf)`` grid (token ``t * Nf + f``); time row ``t`` holds the
``Nf`` frequency patches of time patch ``t``. The causal variant changes three things:

* **Block-causal attention over time rows with a sliding window.** A token of row ``r`` attends to
  every token of rows ``r - context + 1 .. r + lookahead`` (all frequency patches of those rows).
  ``context`` bounds what a streaming step must keep (the key/value cache) and is also what the model
  sees in training, so an unbounded stream behaves like a training clip after ``context`` rows.
* **Rotary time positions** (RoPE, Su et al. 2021) over the absolute time-row index, plus a learned
  frequency-band embedding added to the input (the bands are a fixed, finite set). RoPE makes the
  attention scores depend only on row *differences*, so nothing is tied to a position inside a
  training window and a stream can run forever. Angles are computed in float64 from the integer row
  index, so a row gets bit-identical rotations whether it arrives in a long or a short chunk.
* **Causal depthwise convolution** in the Conformer module: kernel ``K`` over rows ``r - K + 1 .. r``
  (left zero padding), so its streaming state is the last ``K - 1`` rows of its input.

Lookahead: only the *first encoder block's attention* looks ``lookahead`` rows ahead; all other
attentions and all convolutions are strictly causal. A per-layer lookahead would compound (the conv
after the attention inside a block would already add its own), so the total receptive future of the
encoder is exactly ``lookahead`` rows and that of the decoder is zero. The design follows the
streaming codecs of Défossez et al. 2024 (Mimi: causal convolutions, causal windowed attention);
no code is taken from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from transcoder.models.conformer_conv import ConformerConvModule
from transcoder.models.depthwise_conv import depthwise_conv_time

__all__ = ["rope_tables", "apply_rope", "row_mask", "CausalSelfAttention", "CausalConvModule",
           "CausalTransformerBlock", "BlockState", "band_position_embedding"]


def rope_tables(rows: Tensor, head_dim: int, tokens_per_row: int, base: float,
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables for tokens of the given time rows.

    Args:
        rows: (R,) int64 absolute time-row indices.
        head_dim: D, even.
        tokens_per_row: Nf (each row's angle is repeated for its Nf tokens).
        base: RoPE base (angles ``row * base^(-2i/D)``).
        dtype: dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each (R * Nf, D / 2), computed in float64 and then cast, so a row's table does not
        depend on which other rows are in the call.
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=rows.device) / half)
    angles = rows.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(tokens_per_row, dim=0)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(x[..., i], x[..., i + D/2])`` of (B, H, N, D) by the (N, D/2) angles."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def row_mask(query_rows: Tensor, key_rows: Tensor, tokens_per_row: int, context: int, lookahead: int) -> Tensor:
    """Boolean attention mask (Nq * Nf, Nk * Nf): True where query row ``r`` may see key row ``s``,
    i.e. ``r - context < s <= r + lookahead``. ``query_rows`` (Nq,), ``key_rows`` (Nk,) int64."""
    delta = key_rows[None, :] - query_rows[:, None]
    allowed = (delta > -context) & (delta <= lookahead)
    return allowed.repeat_interleave(tokens_per_row, 0).repeat_interleave(tokens_per_row, 1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with rotary time positions and a block-causal sliding-window mask.

    Same parameters as timm's ``Attention`` (``qkv``: Linear C→3C, ``proj``: Linear C→C).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float,
                 context: int, lookahead: int, rope_base: float) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"width={dim} / heads={heads} must give an even head size for rotary positions")
        self.heads = heads
        self.head_dim = dim // heads
        self.context = context
        self.lookahead = lookahead
        self.rope_base = rope_base
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def project(self, x: Tensor, rows: Tensor, nf: int) -> tuple[Tensor, Tensor, Tensor]:
        """(B, R*Nf, C) tokens of time rows ``rows`` (R,) → rotated q, k and v, each (B, H, R*Nf, D)."""
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_tables(rows, self.head_dim, nf, self.rope_base, x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, query_rows: Tensor, key_rows: Tensor, nf: int) -> Tensor:
        """Rotated q (B, H, Nq*Nf, D) over k, v (B, H, Nk*Nf, D) → projected output (B, Nq*Nf, C)."""
        mask = row_mask(query_rows, key_rows, nf, self.context, self.lookahead)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        batch, _, tokens, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, -1)))

    def forward(self, x: Tensor, grid: tuple[int, int], first_row: int = 0) -> Tensor:
        """(B, Nt*Nf, C) → (B, Nt*Nf, C), rows numbered from ``first_row``."""
        rows = torch.arange(first_row, first_row + grid[0], device=x.device)
        q, k, v = self.project(x, rows, grid[1])
        return self.attend(q, k, v, rows, rows, grid[1])


class CausalConvModule(ConformerConvModule):
    """The Conformer convolution module whose depthwise conv only looks back.

    LayerNorm → Linear C→2C → GLU → depthwise conv over rows ``r - K + 1 .. r`` (per frequency band)
    → BatchNorm → SiLU → Linear C→C → dropout: the layers (and parameter names) of
    :class:`ConformerConvModule`, with a causal window and a streaming entry point (:meth:`finish`).
    """

    def __init__(self, dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__(dim, kernel_size, dropout)
        self.kernel_size = kernel_size

    def conv_input(self, x: Tensor) -> Tensor:
        """(B, R, Nf, C) → the depthwise conv's input (B, R, Nf, C): norm, pointwise, GLU."""
        return F.glu(self.pointwise_in(self.norm(x)), dim=-1)

    def finish(self, history: Tensor, u: Tensor) -> Tensor:
        """Conv over ``cat(history (B, K-1, Nf, C), u (B, R, Nf, C))`` → module output (B, R, Nf, C).

        Row ``i`` of the result sees ``u`` rows ``i - K + 1 .. i`` (``history`` supplies the earlier ones).
        """
        batch, rows, nf, channels = u.shape
        half = self.kernel_size // 2
        # The library conv is centred (zero padding K//2 each side); on the history-extended input the
        # centred output at index i + K//2 is the causal output of row i and touches no padding.
        y = depthwise_conv_time(torch.cat([history, u], dim=1), self.depthwise_weight, self.depthwise_bias)
        y = y[:, half:half + rows]
        y = self.batch_norm(y.reshape(-1, channels)).reshape(batch, rows, nf, channels)
        return self.dropout(self.pointwise_out(F.silu(y)))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, Nt*Nf, C) tokens → (B, Nt*Nf, C); the rows before the first are zeros."""
        batch, tokens, channels = x.shape
        u = self.conv_input(x.reshape(batch, grid[0], grid[1], channels))
        history = u.new_zeros(batch, self.kernel_size - 1, grid[1], channels)
        return self.finish(history, u).reshape(batch, tokens, channels)


@dataclass
class BlockState:
    """Streaming state of one :class:`CausalTransformerBlock` (all tensors on the model's device).

    ``keys``/``values`` (B, H, rows*Nf, D) cover rows ``[cache_start, next_input)``; ``pending`` (B, P, Nf, C)
    holds the block inputs of rows ``[next_output, next_input)`` whose lookahead has not arrived yet
    (``P <= lookahead``, plus the rows of the current chunk); ``queries`` their rotated queries;
    ``conv_history`` (B, K-1, Nf, C) the conv inputs of the last ``K - 1`` output rows.
    """

    next_input: int = 0
    next_output: int = 0
    cache_start: int = 0
    keys: Tensor | None = None
    values: Tensor | None = None
    pending: Tensor | None = None
    queries: Tensor | None = None
    conv_history: Tensor | None = None

    def num_elements(self) -> int:
        """Numbers held (to check that the state stays bounded)."""
        tensors = [self.keys, self.values, self.pending, self.queries, self.conv_history]
        return sum(t.numel() for t in tensors if t is not None)


class CausalTransformerBlock(nn.Module):
    """Pre-norm block of the causal variant: attention, causal Conformer conv module (optional), MLP.

    Args:
        dim, heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate: as in ``AudioTransformerBlock``.
        use_conv_module, conv_kernel_size: the Conformer module and its kernel ``K``.
        drop_path: stochastic depth rate of this block.
        context: rows of attention window (this row and ``context - 1`` before it).
        lookahead: rows this block's attention sees ahead (non-zero only in the encoder's first block).
        rope_base: RoPE base.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_rate: float,
                 attn_drop_rate: float, use_conv_module: bool, conv_kernel_size: int, drop_path: float,
                 context: int, lookahead: int, rope_base: float) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, qkv_bias, attn_drop_rate, drop_rate, context, lookahead,
                                        rope_base)
        self.conv = CausalConvModule(dim, conv_kernel_size, drop_rate) if use_conv_module else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, Nt*Nf, C) → (B, Nt*Nf, C) (offline: the whole grid at once, rows numbered from 0)."""
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        if self.conv is not None:
            x = x + self.drop_path(self.conv(x, grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    # -- streaming ----------------------------------------------------------------------------------
    def step(self, x: Tensor, state: BlockState, final: bool) -> Tensor:
        """Feed the next rows (B, R, Nf, C) (R may be 0) → the output rows now determined (B, R', Nf, C).

        An output row ``r`` is determined once input row ``r + lookahead`` has arrived, or at ``final``
        (end of stream: there are no later rows, as in the offline model at the end of its input).
        Equals :meth:`forward` on the concatenation of all inputs, row for row.
        """
        batch, rows, nf, channels = x.shape
        if rows:
            new_rows = torch.arange(state.next_input, state.next_input + rows, device=x.device)
            q, k, v = self.attn.project(self.norm1(x).reshape(batch, rows * nf, channels), new_rows, nf)
            state.keys = k if state.keys is None else torch.cat([state.keys, k], dim=2)
            state.values = v if state.values is None else torch.cat([state.values, v], dim=2)
            state.queries = q if state.queries is None else torch.cat([state.queries, q], dim=2)
            state.pending = x if state.pending is None else torch.cat([state.pending, x], dim=1)
            state.next_input += rows
        ready_until = state.next_input if final else state.next_input - self.lookahead
        ready = max(0, ready_until - state.next_output)
        if ready == 0 or state.pending is None:
            return x.new_zeros(batch, 0, nf, channels)
        query_rows = torch.arange(state.next_output, state.next_output + ready, device=x.device)
        key_rows = torch.arange(state.cache_start, state.next_input, device=x.device)
        assert state.queries is not None and state.keys is not None and state.values is not None
        out = self.attn.attend(state.queries[:, :, :ready * nf], state.keys, state.values, query_rows, key_rows, nf)
        y = state.pending[:, :ready] + out.reshape(batch, ready, nf, channels)
        state.pending, state.queries = state.pending[:, ready:], state.queries[:, :, ready * nf:]
        state.next_output += ready
        if self.conv is not None:
            u = self.conv.conv_input(y)
            history = state.conv_history
            if history is None:
                history = u.new_zeros(batch, self.conv.kernel_size - 1, nf, channels)
            y = y + self.conv.finish(history, u)
            state.conv_history = torch.cat([history, u], dim=1)[:, u.shape[1]:]
        y = y + self.mlp(self.norm2(y))
        # Keep the keys the next query row needs: rows >= next_output - context + 1.
        drop = max(0, state.next_output - self.attn.context + 1 - state.cache_start)
        if drop:
            state.keys, state.values = state.keys[:, :, drop * nf:], state.values[:, :, drop * nf:]
            state.cache_start += drop
        return y


def band_position_embedding(band_embed: Tensor, rows: int) -> Tensor:
    """Learned per-band embedding (1, Nf, C) tiled over ``rows`` time rows → (1, rows*Nf, C)."""
    return band_embed.repeat(1, rows, 1)
