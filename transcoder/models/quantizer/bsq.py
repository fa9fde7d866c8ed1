"""Binary Spherical Quantization (BSQ).

Zhao, Xiong and Krähenbühl, "Image and Video Tokenization with Binary Spherical Quantization",
arXiv 2406.07548. A token ``z`` (``embed_dim`` numbers) is projected onto the unit sphere,
``u = z / |z|``, and quantized to the nearest corner of the hypercube scaled onto the same
sphere, ``q = sign(u) / sqrt(d)``. The codebook is implicit (2^d codes, no lookup table) and
the index of a code is its bits read as an integer.

Loss (all terms computed in fp32, even under autocast)::

    beta * |sg(q) - u|^2 + zeta * (gamma0 * H_per_sample - gamma * H_codebook) / inv_temperature

The entropies are soft: each token gets a distribution over codes from its distance to them.
"analytical" factorises it per bit (exact for BSQ, since the code distribution of one token is
a product over bits); "group" computes it over sub-codebooks of ``group_size`` bits (2^group_size
entries), so memory never grows with 2^d.

The soft entropies are computed only when a loss needs them: in training mode, or when the caller
asks (``forward(z, compute_entropy=True)``). Tokenizing (eval mode) skips them and the info dict has
no entropy keys. ``cb_entropy_ddp_average`` averages the code probabilities over DDP ranks before
the codebook entropy (as lucidrains' ``LookupFreeQuantization`` does), so the term sees the global
batch; gradients flow through this rank's part only.

Straight-through estimator (``straight_through``): ``"unit"`` passes the gradient of the codes to
``u`` unchanged (``codes = q + u - sg(u)``); ``"scaled"`` multiplies it by ``q_scale`` (1/sqrt(d) with
``l2_norm``), as the original BSQ-ViT does (it quantizes ``sign(u)`` with a straight-through estimator,
then scales the result by 1/sqrt(d)). The forward values are identical.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

EntropyMode = Literal["analytical", "group"]
StraightThrough = Literal["unit", "scaled"]

#: Largest code width whose indices fit a signed int64 with a bit to spare.
MAX_INDEX_BITS = 62


def binary_entropy(prob: Tensor) -> Tensor:
    """Entropy in nats of Bernoulli variables with ``P(1) = prob``; elementwise, 0 log 0 = 0."""
    return -(torch.special.xlogy(prob, prob) + torch.special.xlogy(1.0 - prob, 1.0 - prob))


def categorical_entropy(prob: Tensor, dim: int = -1) -> Tensor:
    """Entropy in nats of categorical distributions along ``dim``; 0 log 0 = 0."""
    return -torch.special.xlogy(prob, prob).sum(dim)


def token_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the tokens of ``values`` (N, ...) → (...), only over tokens of weight 1 when ``weights`` (N,)
    0/1 is given (no data-dependent shapes, so it compiles without a graph break); zeros for no token."""
    if weights is None:
        return values.mean(0) if values.shape[0] else values.sum(0)
    return token_sum(values, weights) / weights.sum().clamp_min(1.0)


def token_sum(values: Tensor, weights: Tensor) -> Tensor:
    """Sum over the tokens of ``values`` (N, ...) weighted by ``weights`` (N,) → (...)."""
    return (values * weights.reshape(-1, *([1] * (values.ndim - 1)))).sum(0)


class BinarySphericalQuantizer(nn.Module):
    """Quantize vectors on the unit sphere to signed binary codes.

    Args:
        embed_dim: code width ``d`` in bits.
        beta: weight of the commitment term ``|sg(q) - u|^2``.
        gamma0: weight of the per-sample entropy (pushes each token towards one code).
        gamma: weight of the codebook entropy (pushes the batch to use every code).
        zeta: overall weight of the entropy terms.
        inv_temperature: sharpness of the soft code distribution. It enters the training entropies only
            (the codes are signs), so it changes no trained model's codes. Default 10, measured: at 1 with
            ``l2_norm`` each bit's soft probability stays near 0.5 and the codes collapse.
        group_size: bits per sub-codebook for the "group" entropy mode; ``None`` picks the
            largest divisor of ``embed_dim`` that is at most 9 (512-entry sub-codebooks).
        persample_entropy_compute: "analytical" (per bit) or "group".
        cb_entropy_compute: "analytical" (per bit) or "group".
        l2_norm: project inputs onto the unit sphere and scale codes by ``1/sqrt(d)``.
        straight_through: ``"unit"`` (gradient reaches ``u`` unchanged) or ``"scaled"`` (times
            ``q_scale``, the original BSQ-ViT's estimator).
        cb_entropy_ddp_average: average the code probabilities over the ranks of the default
            process group before taking the codebook entropy (no effect without one).
    """

    #: The first ``k`` code dimensions are a ``k``-bit code (what ``nested_bits`` trains and decodes).
    nested_prefixes = True
    #: Codes are the corners ``+-q_scale`` of a hypercube, one bit per dimension: what the ONNX graphs read (a
    #: quantizer that sets this flag has a float ``q_scale``).
    binary_codes = True

    def __init__(
        self,
        *,
        embed_dim: int,
        beta: float = 0.0,
        gamma0: float = 1.0,
        gamma: float = 1.0,
        zeta: float = 1.0,
        inv_temperature: float = 10.0,
        group_size: int | None = None,
        persample_entropy_compute: EntropyMode = "analytical",
        cb_entropy_compute: EntropyMode = "group",
        l2_norm: bool = True,
        straight_through: StraightThrough = "unit",
        cb_entropy_ddp_average: bool = False,
    ) -> None:
        super().__init__()
        if straight_through not in ("unit", "scaled"):
            raise ValueError(f"straight_through={straight_through!r}: expected 'unit' or 'scaled'")
        if not isinstance(cb_entropy_ddp_average, bool):
            raise ValueError(f"cb_entropy_ddp_average={cb_entropy_ddp_average!r}: expected true or false")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or not 1 <= embed_dim <= MAX_INDEX_BITS:
            raise ValueError(f"embed_dim={embed_dim}: expected 1..{MAX_INDEX_BITS} bits (indices are int64)")
        for name, value in (("beta", beta), ("gamma0", gamma0), ("gamma", gamma), ("zeta", zeta),
                            ("inv_temperature", inv_temperature)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}={value!r}: expected a number")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)):
            raise ValueError(f"group_size={group_size!r}: expected null or an integer dividing embed_dim ({embed_dim})")
        if inv_temperature <= 0:
            raise ValueError(f"inv_temperature={inv_temperature}: expected a positive number")
        if group_size is None:
            group_size = max(g for g in range(1, 10) if embed_dim % g == 0)
        for name, mode in (("persample_entropy_compute", persample_entropy_compute),
                           ("cb_entropy_compute", cb_entropy_compute)):
            if mode not in ("analytical", "group"):
                raise ValueError(f"{name}={mode!r}: expected 'analytical' or 'group'")
            if mode == "group" and (group_size < 1 or embed_dim % group_size != 0 or group_size > 16):
                raise ValueError(
                    f"{name}='group' needs group_size (got {group_size}) between 1 and 16 dividing "
                    f"embed_dim ({embed_dim}); use 'analytical' or another group_size"
                )
        self.embed_dim = embed_dim
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.inv_temperature = inv_temperature
        self.group_size = group_size
        self.persample_entropy_compute = persample_entropy_compute
        self.cb_entropy_compute = cb_entropy_compute
        self.l2_norm = l2_norm
        self.straight_through = straight_through
        self.cb_entropy_ddp_average = cb_entropy_ddp_average
        self.q_scale = 1.0 / math.sqrt(embed_dim) if l2_norm else 1.0
        self.register_buffer("bit_weights", 2 ** torch.arange(embed_dim, dtype=torch.int64), persistent=False)
        if "group" in (persample_entropy_compute, cb_entropy_compute):
            # Every sub-code of group_size bits as +-1 vectors, bit order matching the indices.
            sub_indices = torch.arange(2**group_size)
            sub_bits = (sub_indices[:, None] >> torch.arange(group_size)) & 1
            self.register_buffer("group_codebook", (2.0 * sub_bits - 1.0), persistent=False)

    @property
    def bits(self) -> int:
        return self.embed_dim

    def forward(self, z: Tensor, compute_entropy: bool | None = None,
                token_mask: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize ``z`` (..., d) → codes (..., d) in fp32, the scalar loss and an info dict.

        ``compute_entropy`` (default: ``self.training``) decides whether the soft entropies are computed.
        The info dict holds ``indices`` (...) int64 and ``commit_loss``; with the entropies also
        ``per_sample_entropy`` and ``codebook_entropy`` (nats, in [0, d ln 2]) and ``entropy_loss``.
        Without them the loss is the commitment term alone.

        ``token_mask`` (...) bool: the tokens that count in the loss, the commitment and the entropies
        (e.g. not the zero padding of a file's last window); every token is still quantized. With no
        token left the statistics are 0.
        """
        if z.shape[-1] != self.embed_dim:
            raise ValueError(f"expected last dim {self.embed_dim}, got shape {tuple(z.shape)}")
        if token_mask is not None and token_mask.shape != z.shape[:-1]:
            raise ValueError(f"token_mask has shape {tuple(token_mask.shape)}, expected z's leading shape "
                             f"{tuple(z.shape[:-1])}")
        if compute_entropy is None:
            compute_entropy = self.training
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            u = F.normalize(z, dim=-1) if self.l2_norm else z
            hard = self.sign_codes(u)
            # Straight-through: the value is `hard` bit for bit (u - sg(u) == 0), so
            # decode(encode(x)) equals decode_indices(indices); the gradient reaches u times `st_gain`.
            st_gain = self.q_scale if self.straight_through == "scaled" else 1.0
            codes = hard + st_gain * (u - u.detach())
            weights = None if token_mask is None else token_mask.reshape(-1).to(u.device, torch.float32)
            commit_loss = token_mean(((hard - u) ** 2).sum(-1).reshape(-1), weights)
            loss = self.beta * commit_loss
            info = {"commit_loss": commit_loss.detach()}
            if compute_entropy:
                per_sample_entropy, codebook_entropy = self.soft_entropies(u, weights)
                entropy_loss = (self.gamma0 * per_sample_entropy - self.gamma * codebook_entropy) / self.inv_temperature
                loss = loss + self.zeta * entropy_loss
                info.update(per_sample_entropy=per_sample_entropy.detach(),
                            codebook_entropy=codebook_entropy.detach(), entropy_loss=entropy_loss.detach())
        info["indices"] = self.codes_to_indices(hard)
        return codes, loss, info

    def sign_codes(self, u: Tensor) -> Tensor:
        """(..., d) → the corner codes ``+-q_scale`` (0 maps to the negative code)."""
        return torch.where(u > 0, self.q_scale, -self.q_scale).to(torch.float32)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """(..., d) codes → (...) int64 indices; bit ``i`` of the index is the sign of dim ``i``."""
        return ((codes > 0).long() * self.bit_weights).sum(-1)

    def indices_to_codes(self, indices: Tensor, bits: int | None = None) -> Tensor:
        """(...) integer indices → (..., k) fp32 codes (exact inverse of the above).

        ``bits`` (default ``d``): the indices hold the first ``k = bits`` bits of each code only (a
        nested-bits model's truncated tokens); the values keep the full code's scale ``q_scale``.
        """
        if indices.dtype.is_floating_point:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        width = self.embed_dim if bits is None else bits
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= self.embed_dim:
            raise ValueError(f"bits={bits!r}: expected an integer in 1..{self.embed_dim}")
        indices = indices.long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= 2**width):
            raise ValueError(f"indices must lie in [0, 2^{width}), got min {int(indices.min())} "
                             f"max {int(indices.max())}")
        bit_values = (indices.unsqueeze(-1) >> torch.arange(width, device=indices.device)) & 1
        return torch.where(bit_values.bool(), self.q_scale, -self.q_scale).to(torch.float32)

    def soft_entropies(self, u: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample and codebook entropy (nats) of the soft code distribution of (..., d) ``u``
        (0 for no token)."""
        flat = u.reshape(-1, self.embed_dim)
        if self.persample_entropy_compute == "analytical" or self.cb_entropy_compute == "analytical":
            # Softmax over the two codes +-q_scale of one bit, logits 2 * inv_temperature * <u, c>.
            bit_prob = torch.sigmoid(4.0 * self.inv_temperature * self.q_scale * flat)
        if self.persample_entropy_compute == "group" or self.cb_entropy_compute == "group":
            group_prob = self._group_probabilities(flat)

        if self.persample_entropy_compute == "analytical":
            per_sample = token_mean(binary_entropy(bit_prob).sum(-1), weights)
        else:
            per_sample = token_mean(categorical_entropy(group_prob).sum(-1), weights)
        if self.cb_entropy_compute == "analytical":
            codebook = binary_entropy(self._mean_over_ranks(bit_prob, weights)).sum()
        else:
            codebook = categorical_entropy(self._mean_over_ranks(group_prob, weights)).sum()
        return per_sample, codebook

    def _mean_over_ranks(self, prob: Tensor, weights: Tensor | None = None) -> Tensor:
        """(N, ...) probabilities → (...) their mean over this batch, or over every rank's batch with
        ``cb_entropy_ddp_average`` under an initialised process group. The other ranks' sums enter as
        constants, so the gradient reaches this rank's tokens only (each rank back-propagates its own)."""
        if not (self.cb_entropy_ddp_average and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return token_mean(prob, weights)
        if weights is None:
            local_sum, count = prob.sum(0), torch.tensor([float(prob.shape[0])], device=prob.device)
        else:
            local_sum, count = token_sum(prob, weights), weights.sum().reshape(1)
        stats = torch.cat([local_sum.detach().reshape(-1), count.to(local_sum.dtype)])
        dist.all_reduce(stats)
        global_sum = stats[:-1].reshape(local_sum.shape)
        # Value: the global sum; gradient: d(local_sum).
        return (local_sum + (global_sum - local_sum.detach())) / stats[-1].clamp_min(1.0)

    def _group_probabilities(self, flat: Tensor) -> Tensor:
        """(N, d) → (N, d / group_size, 2^group_size) soft assignment to each sub-codebook."""
        groups = flat.reshape(flat.shape[0], self.embed_dim // self.group_size, self.group_size)
        logits = 2.0 * self.inv_temperature * self.q_scale * torch.einsum("ngb,kb->ngk", groups, self.group_codebook)
        return logits.softmax(-1)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, beta={self.beta}, gamma0={self.gamma0}, gamma={self.gamma}, "
                f"zeta={self.zeta}, inv_temperature={self.inv_temperature}, group_size={self.group_size}, "
                f"l2_norm={self.l2_norm}, straight_through={self.straight_through!r}, "
                f"cb_entropy_ddp_average={self.cb_entropy_ddp_average}")
