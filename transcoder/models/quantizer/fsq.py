"""Finite Scalar Quantization (FSQ), a reference quantizer to compare BSQ with.

Mentzer, Minnen, Agustsson and Tschannen, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv 2309.15505.
Each of the ``d = len(levels)`` dimensions of a token is bounded with ``tanh`` and rounded to one of ``levels[i]``
values; the codebook is the implicit product grid (``prod(levels)`` codes, no lookup table, no auxiliary loss) and
the gradient passes the rounding straight through.

Grid used here (written for this project, not the reference code's): with ``L`` levels and ``t = tanh(z)``,
level ``k = clamp(floor(L * (t + 1) / 2), 0, L - 1)`` (``L`` equal cells of ``t``), and the code value of level
``k`` is ``2k / (L - 1) - 1``: ``L`` evenly spaced values from -1 to +1, symmetric about 0. For an odd ``L`` the
middle level is 0; for an even ``L`` the levels sit at half steps (``L = 8``: +-1/7, +-3/7, +-5/7, +-1), which
is the paper's half-step offset for even level counts: the reference implementation shifts the ``tanh`` by half
a step instead and gets the asymmetric integers ``-L/2 .. L/2 - 1``; the grid here keeps the ``L`` levels
symmetric and every code in [-1, 1].

The index of a code is its levels read as a mixed-radix number, dimension 0 the least significant digit:
``index = k_0 + L_0 * (k_1 + L_1 * (k_2 + ...))``. With every level count a power of two this is the binary
number whose bits ``[b_i, b_i + log2 L_i)`` are level ``k_i`` (``b_i`` the bits of the dimensions before), so
``bits = sum(log2(levels))`` is an integer and indices lie in ``[0, 2^bits)``, as the codes files and bitrates
of this project need; the model refuses other level counts (see :attr:`FiniteScalarQuantizer.bits`).

No loss: the quantizer adds nothing to the training loss (its loss is a constant 0). The info dict carries
``indices`` and, for logging only, ``commit_loss`` (the mean squared distance of the bounded input to its code).
There are no soft entropies, so ``compute_entropy`` is accepted (the model passes it) and has no effect.

Configuration: the model passes ``embed_dim`` (must be ``len(levels)``) and ``l2_norm`` (must be false: FSQ
bounds each dimension with ``tanh`` instead of projecting onto the sphere). FSQ codes are not nested: the first
``k`` dimensions are no ``k``-bit code, so ``model.params.nested_bits`` is refused with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from transcoder.models.quantizer.bsq import MAX_INDEX_BITS, token_mean


def _check_levels(levels: object) -> list[int]:
    """``levels`` as a list of ints (each >= 2, product fitting an int64 index); ``ValueError`` naming it."""
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels={levels!r}: expected a non-empty list of level counts (integers >= 2), "
                         "e.g. [8, 8, 8, 8, 8, 8]")
    values = list(levels)
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"levels={values!r}: every level count must be an integer >= 2 (got {value!r} at "
                             f"position {position})")
    if math.prod(values) > 2**MAX_INDEX_BITS:
        raise ValueError(f"levels={values!r}: {math.prod(values)} codes do not fit an int64 index (at most "
                         f"2^{MAX_INDEX_BITS})")
    return values


class FiniteScalarQuantizer(nn.Module):
    """Quantize each dimension of a token to one of a few evenly spaced values in [-1, 1].

    Args:
        embed_dim: code dimension ``d`` (the model's ``embed_dim``); must equal ``len(levels)``.
        levels: level count of each dimension, each an integer >= 2 (e.g. ``[8, 8, 8, 8, 8, 8]``: 18 bits).
            Level counts that are not powers of two (``[8, 5, 5, 5]``, as in the paper) work in the quantizer
            itself (:attr:`bits` is then fractional); the model needs powers of two (whole bits per token).
        l2_norm: must be ``False`` (``model.params.l2_norm: false``); FSQ bounds each dimension with ``tanh``
            and does not project onto the unit sphere. It is a keyword because the model passes it to every
            quantizer; ``True`` raises a ``ValueError`` naming the key rather than being ignored.

    Raises:
        ValueError: bad ``levels`` (naming the value), ``embed_dim != len(levels)`` or ``l2_norm`` true (naming
            the config key and the value to set).
    """

    #: The first ``k`` code dimensions are no ``k``-bit code: a model refuses ``nested_bits`` with FSQ.
    nested_prefixes = False
    #: Codes take several levels per dimension, not the signed bits the ONNX graphs read.
    binary_codes = False

    def __init__(self, *, embed_dim: int, levels: Sequence[int], l2_norm: bool = False) -> None:
        super().__init__()
        values = _check_levels(levels)
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim != len(values):
            raise ValueError(f"embed_dim={embed_dim!r} but levels={values} has {len(values)} entries: the code "
                             f"dimension is one per level count; set model.params.embed_dim={len(values)}")
        if l2_norm is not False:
            raise ValueError(f"l2_norm={l2_norm!r}: FiniteScalarQuantizer bounds each dimension with tanh and does "
                             "not project onto the unit sphere; set model.params.l2_norm=false")
        self.embed_dim = embed_dim
        self.levels = values
        self.l2_norm = False
        self.codebook_size = math.prod(values)
        level_counts = torch.tensor(values, dtype=torch.int64)
        # Mixed-radix place values: dimension 0 is the least significant digit.
        basis = torch.cumprod(torch.tensor([1, *values[:-1]], dtype=torch.int64), 0)
        self.register_buffer("level_counts", level_counts, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        # Code value of level k: k * step - 1, with step = 2 / (L - 1) (fp32, shared by forward and decode).
        self.register_buffer("step", (2.0 / (level_counts.to(torch.float64) - 1.0)).to(torch.float32),
                             persistent=False)

    @property
    def bits(self) -> int | float:
        """Bits per token, ``log2(prod(levels)) = sum(log2(levels))``: an ``int`` when every level count is a
        power of two (``[8] * 6``: 18), else the fractional ``float`` (``[5, 4]``: log2(20) = 4.32...)."""
        if self.codebook_size & (self.codebook_size - 1) == 0:
            return self.codebook_size.bit_length() - 1
        return math.log2(self.codebook_size)

    def forward(self, z: Tensor, compute_entropy: bool | None = None,
                token_mask: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize ``z`` (..., d) → codes (..., d) in fp32 on the level grid, the loss (a 0 scalar) and an info dict.

        The info dict holds ``indices`` (...) int64 in ``[0, prod(levels))`` and ``commit_loss`` (detached, for
        logging: the mean over tokens of ``|code - u|^2``, ``u`` the bounded input on the codes' scale).
        ``compute_entropy`` has no effect (FSQ has no entropy terms; the model passes it to every quantizer).
        ``token_mask`` (...) bool: the tokens ``commit_loss`` averages over (every token is still quantized).
        Computed in fp32 with autocast off, as BSQ is.
        """
        if z.shape[-1] != self.embed_dim:
            raise ValueError(f"expected last dim {self.embed_dim}, got shape {tuple(z.shape)}")
        if token_mask is not None and token_mask.shape != z.shape[:-1]:
            raise ValueError(f"token_mask has shape {tuple(token_mask.shape)}, expected z's leading shape "
                             f"{tuple(z.shape[:-1])}")
        del compute_entropy  # no entropy terms
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            bounded = torch.tanh(z)  # (-1, 1)
            counts = self.level_counts.to(torch.float32)
            level = torch.floor(counts * (bounded + 1.0) * 0.5).clamp(min=0.0).minimum(counts - 1.0)
            hard = self._level_codes(level)
            # u: the bounded input on the codes' scale (level k's cell of `bounded` maps around its code value).
            u = bounded * (counts / (counts - 1.0))
            # Straight-through: the value is `hard` bit for bit (u - sg(u) == 0), the gradient reaches u.
            codes = hard + (u - u.detach())
            weights = None if token_mask is None else token_mask.reshape(-1).to(u.device, torch.float32)
            commit_loss = token_mean(((hard - u.detach()) ** 2).sum(-1).reshape(-1), weights)
            loss = torch.zeros((), device=z.device, dtype=torch.float32)
        info = {"commit_loss": commit_loss.detach(), "indices": self._levels_to_indices(level.long())}
        return codes, loss, info

    def _level_codes(self, level: Tensor) -> Tensor:
        """(..., d) levels (float32 integers) → (..., d) fp32 code values ``k * step - 1``."""
        return level * self.step - 1.0

    def _levels_to_indices(self, level: Tensor) -> Tensor:
        """(..., d) int64 levels → (...) int64 mixed-radix indices."""
        return (level * self.basis).sum(-1)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """(..., d) codes → (...) int64 indices; exact inverse of :meth:`indices_to_codes`.

        A value off the grid goes to the nearest level (beyond +-1: the end level)."""
        if not codes.dtype.is_floating_point:
            raise TypeError(f"codes must be a floating-point tensor, got {codes.dtype}")
        if codes.shape[-1] != self.embed_dim:
            raise ValueError(f"expected codes (..., {self.embed_dim}), got shape {tuple(codes.shape)}")
        top = (self.level_counts - 1).to(torch.float32)
        level = torch.round((codes.float() + 1.0) / self.step).clamp(min=0.0).minimum(top)
        return self._levels_to_indices(level.long())

    def indices_to_codes(self, indices: Tensor, bits: int | float | None = None) -> Tensor:
        """(...) integer indices in ``[0, prod(levels))`` → (..., d) fp32 codes, bit for bit the forward's codes.

        ``bits``: ``None`` or the full width :attr:`bits`; FSQ has no nested prefixes, so any other width raises
        a ``ValueError`` (a BSQ model trained with ``nested_bits`` decodes its first ``k`` bits; FSQ cannot).
        """
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if bits is not None and (isinstance(bits, bool) or bits != self.bits):
            raise ValueError(f"bits={bits!r}: FiniteScalarQuantizer codes have no nested prefixes (the first k "
                             f"dimensions are no k-bit code); only the full width {self.bits} (or None) is accepted")
        indices = indices.long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}) (levels {self.levels}), got min "
                             f"{int(indices.min())} max {int(indices.max())}")
        level = torch.remainder(torch.div(indices.unsqueeze(-1), self.basis, rounding_mode="floor"),
                                self.level_counts)
        return self._level_codes(level.to(torch.float32))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, levels={self.levels}, bits={self.bits:g}"
