"""Depthwise 1-D convolution along the time axis of a channels-last (time, freq) token grid.

The Conformer convolution module of every block convolves each channel along time, separately in
each frequency band, with a kernel shared by all bands::

    y[b, t, g, c] = bias[c] + sum_k weight[c, k] * x[b, t + k - K // 2, g, c]      (zero padding)

``x`` is ``(B, T, G, C)`` (batch, time patches, frequency patches, channels), contiguous, so the
library conv needs two transposes around it. Here it runs on that layout directly:

* CUDA with Triton: three Triton kernels behind one ``torch.autograd`` rule. The forward and the
  input gradient share a kernel (the input gradient is a correlation of the output gradient with
  the flipped kernel); the weight and bias gradients are reduced over ``(B, T, G)`` by a grid of
  programs that each write a float32 partial sum, summed afterwards (deterministic, no atomics).
  Each program tiles ``(T block, C block)`` of one ``(b, g)`` row and loads its time halo, so each
  element comes from device memory about once and the ``K`` shifted re-reads hit the L1 cache.
  Accumulation is float32 whatever the input dtype (fp32, bf16, fp16); outputs are in the input's
  dtype, gradients in their tensor's dtype.
* Anywhere else (CPU, no Triton, ``TRANSCODER_DISABLE_TRITON=1`` or ``set_backend("reference")``):
  :func:`depthwise_conv_time_reference`, i.e. permute to ``(B * G, C, T)`` and ``F.conv1d`` with
  ``groups=C``. That is also the reference the tests compare against.

``torch.compile``: the Triton path is a ``torch.library.custom_op`` (``transcoder::dwconv_time_fwd``
and ``transcoder::dwconv_time_bwd``) with ``register_fake`` shape functions and
``register_autograd``. The compiler treats the ops as opaque calls, so neither Dynamo nor Inductor
traces into Triton's launcher, and the graph does not break (``fullgraph=True`` works). The API dates
from torch 2.4; this module was run on torch 2.11 with Triton 3.6 (H200) and torch 2.14 with
Triton 3.8 (CPU, interpreter). ``torch.library.triton_op`` (which lets Inductor see the kernels)
would buy nothing for three fixed kernels and its API has moved between releases. Backend choice is read from module
globals, never from the environment at call time, so Dynamo guards on it cheaply.

The kernels are several times faster than ``F.conv1d`` on the same tensors but latency-bound, well
above the memory floor: each element is loaded ``K`` times from L1, and Triton cannot keep a sliding
window in registers. Measured figures (``scripts/benchmark_depthwise_conv.py``):
``benchmarks/2026-11-26-h200/REPORT.md``.

Autocast: like ``F.conv1d``, under an enabled autocast the input is cast to the autocast dtype;
``weight`` and ``bias`` are left in theirs (fp32 master weights are read as fp32 by the kernels,
where the reference rounds them to the input dtype).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    TRITON_AVAILABLE = False

Backend = Literal["auto", "reference", "triton"]

#: ``TRANSCODER_DISABLE_TRITON=1`` at import time forces the reference path everywhere.
DISABLED_BY_ENV: bool = os.environ.get("TRANSCODER_DISABLE_TRITON", "0") not in ("", "0")
#: ``TRITON_INTERPRET=1`` (set before Triton is imported) runs the kernels on CPU tensors; tests only.
TRITON_INTERPRETER: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_backend: Backend = "auto"

#: Tile shapes. ``fwd`` also serves the input gradient. ``dw``: ``BLOCK_T`` time rows per step,
#: ``programs_per_sm`` sizes the partial-sum grid, ``reduce_per_tile`` sums over time each step
#: (smaller accumulator) instead of once at the end. ``unroll``: unroll the tap loop of the forward.
#: ``cache``: Triton ``cache_modifier`` of the shifted loads. ``num_warps`` and an optional
#: ``num_stages`` go to the launch. The bench script sweeps these; the defaults were the fastest on an
#: H200 (Triton 3.6) at (B, T, G, C, K) = (64, 64, 8, 768, 31) in bf16, though most configs were
#: within 10% of them.
FWD_CONFIG: dict[str, int | str] = {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 0}
DW_CONFIG: dict[str, int | str] = {
    "BLOCK_T": 2,
    "BLOCK_C": 64,
    "num_warps": 2,
    "programs_per_sm": 8,
    "reduce_per_tile": 0,
}


def set_backend(backend: Backend) -> None:
    """Choose the implementation for later calls.

    ``"auto"``: Triton on CUDA tensors when available, else the reference. ``"reference"``: always
    the ``F.conv1d`` path. ``"triton"``: always the Triton custom op, an error where it cannot run.
    """
    global _backend
    if backend not in ("auto", "reference", "triton"):
        raise ValueError(f"unknown backend {backend!r}")
    _backend = backend


def get_backend() -> Backend:
    """The mode set by :func:`set_backend` (``"auto"`` by default)."""
    return _backend


@contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous mode on exit."""
    previous = _backend
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def triton_runs_on(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors of ``device`` (CUDA, or CPU under the interpreter)."""
    if not TRITON_AVAILABLE or DISABLED_BY_ENV:
        return False
    device_type = torch.device(device).type
    if TRITON_INTERPRETER:
        return device_type == "cpu"
    return device_type == "cuda"


def active_backend(device: torch.device | str = "cuda") -> str:
    """Which implementation :func:`depthwise_conv_time` uses for tensors on ``device``.

    Returns ``"triton"``, ``"triton-interpreter"`` or ``"reference"``; for benchmark reports.
    """
    if _backend == "reference" or not triton_runs_on(device):
        return "reference"
    return "triton-interpreter" if TRITON_INTERPRETER else "triton"


def _check_args(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (B, T, G, C), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must be (C, K) with C={x.shape[-1]}, got {tuple(weight.shape)}")
    if weight.shape[1] % 2 != 1:
        raise ValueError(f"kernel size must be odd for 'same' padding, got {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias must be (C,) with C={x.shape[-1]}, got {tuple(bias.shape)}")


def depthwise_conv_time_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Reference depthwise time convolution through ``F.conv1d``.

    Args:
        x: ``(B, T, G, C)``.
        weight: ``(C, K)``, K odd; cast to ``x``'s dtype.
        bias: ``(C,)`` or None; cast to ``x``'s dtype.

    Returns:
        ``(B, T, G, C)``, contiguous, in ``x``'s dtype (or the autocast dtype under autocast).
    """
    _check_args(x, weight, bias)
    B, T, G, C = x.shape
    K = weight.shape[1]
    x_ncl = x.permute(0, 2, 3, 1).reshape(B * G, C, T)
    b = bias.to(x.dtype) if bias is not None else None
    y = F.conv1d(x_ncl, weight.to(x.dtype).unsqueeze(1), b, padding=K // 2, groups=C)
    return y.reshape(B, G, C, T).permute(0, 3, 1, 2).contiguous()


def depthwise_conv_time(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Depthwise 'same' convolution along time, per frequency band, channels-last.

    Args:
        x: ``(B, T, G, C)`` in fp32, bf16 or fp16.
        weight: ``(C, K)``, K odd, shared by all ``G`` bands; any float dtype.
        bias: ``(C,)`` or None.

    Returns:
        ``(B, T, G, C)`` contiguous, in ``x``'s dtype, or the autocast dtype under autocast.
    """
    _check_args(x, weight, bias)
    device_type = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        x = x.to(torch.get_autocast_dtype(device_type))
    # float64 has no Triton path (the kernels accumulate in fp32): it always takes the reference.
    if _backend == "reference" or (_backend == "auto" and (x.dtype == torch.float64 or not triton_runs_on(x.device))):
        return depthwise_conv_time_reference(x, weight, bias)
    if not triton_runs_on(x.device):
        raise RuntimeError(
            f"backend 'triton' forced but Triton cannot run on {x.device} "
            f"(available={TRITON_AVAILABLE}, disabled_by_env={DISABLED_BY_ENV})"
        )
    return torch.ops.transcoder.dwconv_time_fwd(x, weight, bias)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if TRITON_AVAILABLE:

    @triton.jit
    def _conv_tap(acc, x_ptr, w_ptr, base, offs_t, offs_c, mask_c, k, T, row, K, FLIP, CACHE):
        """acc += w[:, k'] * x[t + k - K//2] for one tap k of a (BLOCK_T, BLOCK_C) tile."""
        t_in = offs_t + (k - K // 2)
        mask = ((t_in >= 0) & (t_in < T))[:, None] & mask_c[None, :]
        ptrs = x_ptr + base + t_in[:, None] * row + offs_c[None, :]
        xv = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=CACHE)
        tap = K - 1 - k if FLIP else k
        wv = tl.load(w_ptr + offs_c * K + tap, mask=mask_c, other=0.0)
        return acc + xv.to(tl.float32) * wv.to(tl.float32)[None, :]

    @triton.jit
    def _dwconv_time_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        y_ptr,
        T,
        G,
        C,
        K: tl.constexpr,
        FLIP: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_C: tl.constexpr,
        UNROLL: tl.constexpr,
        CACHE: tl.constexpr,
    ):
        """y[b, t, g, c] = sum_k w[c, k'] x[b, t + k - K//2, g, c] (+ bias), k' = K-1-k if FLIP else k.

        Grid: (B * G, cdiv(T, BLOCK_T), cdiv(C, BLOCK_C)).
        """
        pid_bg = tl.program_id(0)
        pid_t = tl.program_id(1)
        pid_c = tl.program_id(2)
        row = G * C
        b = pid_bg // G
        g = pid_bg - b * G
        base = b.to(tl.int64) * T * row + g.to(tl.int64) * C
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
        if UNROLL:
            for k in tl.static_range(K):
                acc = _conv_tap(acc, x_ptr, w_ptr, base, offs_t, offs_c, mask_c, k, T, row, K, FLIP, CACHE)
        else:
            for k in range(K):
                acc = _conv_tap(acc, x_ptr, w_ptr, base, offs_t, offs_c, mask_c, k, T, row, K, FLIP, CACHE)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        mask_out = (offs_t < T)[:, None] & mask_c[None, :]
        out = y_ptr + base + offs_t[:, None] * row + offs_c[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_out)

    @triton.jit
    def _dwconv_time_dw_kernel(
        x_ptr,
        dy_ptr,
        dw_part_ptr,
        db_part_ptr,
        T,
        G,
        C,
        n_tiles,
        tiles_per_prog,
        K: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_C: tl.constexpr,
        REDUCE_PER_TILE: tl.constexpr,
        CACHE: tl.constexpr,
    ):
        """Partial sums dw_part[s, c, k] = sum dy[b, t, g, c] x[b, t + k - K//2, g, c], db_part[s, c].

        Program ``s`` sums over a contiguous run of (b, g, time-block) tiles of one channel block.
        Grid: (n_split, cdiv(C, BLOCK_C)).
        """
        pid_s = tl.program_id(0)
        pid_c = tl.program_id(1)
        row = G * C
        n_tb = tl.cdiv(T, BLOCK_T)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        offs_k = tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        if REDUCE_PER_TILE:
            acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_K, BLOCK_T, BLOCK_C), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
        start = pid_s * tiles_per_prog
        end = tl.minimum(start + tiles_per_prog, n_tiles)
        for tile in range(start, end):
            bg = tile // n_tb
            tb = tile - bg * n_tb
            b = bg // G
            g = bg - b * G
            base = b.to(tl.int64) * T * row + g.to(tl.int64) * C
            offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
            mask_dy = (offs_t < T)[:, None] & mask_c[None, :]
            dy = tl.load(dy_ptr + base + offs_t[:, None] * row + offs_c[None, :], mask=mask_dy, other=0.0)
            dy = dy.to(tl.float32)
            t_in = offs_t[None, :] + offs_k[:, None] - K // 2
            mask_x = ((t_in >= 0) & (t_in < T) & mask_k[:, None])[:, :, None] & mask_c[None, None, :]
            xs = tl.load(
                x_ptr + base + t_in[:, :, None] * row + offs_c[None, None, :],
                mask=mask_x,
                other=0.0,
                cache_modifier=CACHE,
            )
            prod = xs.to(tl.float32) * dy[None, :, :]
            if REDUCE_PER_TILE:
                acc += tl.sum(prod, axis=1)
                acc_b += tl.sum(dy, axis=0)
            else:
                acc += prod
                acc_b += dy
        if REDUCE_PER_TILE:
            dw = acc
            db = acc_b
        else:
            dw = tl.sum(acc, axis=1)
            db = tl.sum(acc_b, axis=0)
        part = dw_part_ptr + pid_s.to(tl.int64) * C * K + offs_c[None, :] * K + offs_k[:, None]
        tl.store(part, dw, mask=mask_k[:, None] & mask_c[None, :])
        tl.store(db_part_ptr + pid_s.to(tl.int64) * C + offs_c, db, mask=mask_c)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_guard(device: torch.device) -> AbstractContextManager:
    # Triton launches on the current CUDA device, which need not be the tensor's.
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _programs_target(device: torch.device, programs_per_sm: int) -> int:
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    return programs_per_sm * _num_sms(index)


def _launch_options(cfg: dict[str, int | str]) -> dict[str, int | str]:
    return {key: cfg[key] for key in ("num_warps", "num_stages") if key in cfg}


def _triton_conv(x: Tensor, weight: Tensor, bias: Tensor | None, flip: bool) -> Tensor:
    """Launch the forward kernel (or, with ``flip``, the input-gradient correlation). ``x``: (B,T,G,C)."""
    B, T, G, C = x.shape
    K = weight.shape[1]
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    cfg = FWD_CONFIG
    grid = (B * G, triton.cdiv(T, cfg["BLOCK_T"]), triton.cdiv(C, cfg["BLOCK_C"]))
    with _device_guard(x.device):
        _dwconv_time_kernel[grid](
            x,
            weight,
            bias if bias is not None else weight,
            y,
            T,
            G,
            C,
            K=K,
            FLIP=flip,
            HAS_BIAS=bias is not None,
            BLOCK_T=cfg["BLOCK_T"],
            BLOCK_C=cfg["BLOCK_C"],
            UNROLL=bool(cfg.get("unroll", 1)),
            CACHE=cfg.get("cache", ""),
            **_launch_options(cfg),
        )
    return y


def _triton_weight_grad(dy: Tensor, x: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """Weight and bias gradients in float32, ``(C, K)`` and ``(C,)``, from ``dy`` and ``x`` (B,T,G,C)."""
    B, T, G, C = x.shape
    cfg = DW_CONFIG
    if x.numel() == 0:
        return x.new_zeros((C, K), dtype=torch.float32), x.new_zeros((C,), dtype=torch.float32)
    n_cb = triton.cdiv(C, cfg["BLOCK_C"])
    n_tiles = B * G * triton.cdiv(T, cfg["BLOCK_T"])
    n_split = max(1, min(n_tiles, triton.cdiv(_programs_target(x.device, cfg["programs_per_sm"]), n_cb)))
    tiles_per_prog = triton.cdiv(n_tiles, n_split)
    n_split = triton.cdiv(n_tiles, tiles_per_prog)
    dw_part = torch.empty((n_split, C, K), device=x.device, dtype=torch.float32)
    db_part = torch.empty((n_split, C), device=x.device, dtype=torch.float32)
    with _device_guard(x.device):
        _dwconv_time_dw_kernel[(n_split, n_cb)](
            x,
            dy,
            dw_part,
            db_part,
            T,
            G,
            C,
            n_tiles,
            tiles_per_prog,
            K=K,
            BLOCK_K=triton.next_power_of_2(K),
            BLOCK_T=cfg["BLOCK_T"],
            BLOCK_C=cfg["BLOCK_C"],
            REDUCE_PER_TILE=bool(cfg["reduce_per_tile"]),
            CACHE=cfg.get("cache", ""),
            **_launch_options(cfg),
        )
    return dw_part.sum(0), db_part.sum(0)


# --------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile) and their autograd rule
# --------------------------------------------------------------------------------------------------


def _to_ncl(x: Tensor) -> Tensor:
    B, T, G, C = x.shape
    return x.permute(0, 2, 3, 1).reshape(B * G, C, T)


def _from_ncl(y: Tensor, B: int, G: int) -> Tensor:
    BG, C, T = y.shape
    return y.reshape(B, G, C, T).permute(0, 3, 1, 2).contiguous()


@torch.library.custom_op(
    "transcoder::dwconv_time_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
)
def _dwconv_time_fwd(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Forward op: ``(B, T, G, C)`` -> ``(B, T, G, C)`` in ``x``'s dtype, float32 accumulation."""
    x = x.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if triton_runs_on(x.device):
        return _triton_conv(x, weight, bias, flip=False)
    # Same float32 semantics without Triton, so the op (and opcheck) works on any device.
    with torch.autocast(x.device.type, enabled=False):
        b = bias.float() if bias is not None else None
        K = weight.shape[1]
        y = F.conv1d(_to_ncl(x).float(), weight.float().unsqueeze(1), b, padding=K // 2, groups=x.shape[-1])
        return _from_ncl(y, x.shape[0], x.shape[2]).to(x.dtype)


@_dwconv_time_fwd.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op(
    "transcoder::dwconv_time_bwd",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor x, Tensor weight, bool need_x, bool need_weight) -> (Tensor, Tensor, Tensor)",
)
def _dwconv_time_bwd(
    grad_out: Tensor, x: Tensor, weight: Tensor, need_x: bool, need_weight: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward op: returns ``(grad_x (B,T,G,C), grad_weight (C,K), grad_bias (C,) float32)``.

    A gradient that is not needed comes back as an empty tensor (a fresh one each: custom-op outputs
    must not alias).
    """
    grad_out = grad_out.contiguous()
    x = x.contiguous()
    weight = weight.contiguous()
    C, K = weight.shape
    if triton_runs_on(x.device):
        dx = _triton_conv(grad_out.to(x.dtype), weight, None, flip=True) if need_x else x.new_empty(0)
        if need_weight:
            dw, db = _triton_weight_grad(grad_out, x, K)
            return dx, dw.to(weight.dtype), db
        return dx, weight.new_empty(0), x.new_empty(0, dtype=torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        dx, dw, db = torch.ops.aten.convolution_backward(
            _to_ncl(grad_out).float(),
            _to_ncl(x).float(),
            weight.float().unsqueeze(1),
            [C],
            [1],
            [K // 2],
            [1],
            False,
            [0],
            C,
            [need_x, need_weight, need_weight],
        )
    B, G = x.shape[0], x.shape[2]
    dx = _from_ncl(dx, B, G).to(x.dtype) if need_x else x.new_empty(0)
    if need_weight:
        return dx, dw.squeeze(1).to(weight.dtype), db
    return dx, weight.new_empty(0), x.new_empty(0, dtype=torch.float32)


@_dwconv_time_bwd.register_fake
def _(
    grad_out: Tensor, x: Tensor, weight: Tensor, need_x: bool, need_weight: bool
) -> tuple[Tensor, Tensor, Tensor]:
    C, K = weight.shape
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0)
    if need_weight:
        return dx, weight.new_empty((C, K)), x.new_empty((C,), dtype=torch.float32)
    return dx, weight.new_empty(0), x.new_empty(0, dtype=torch.float32)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple:
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    dx, dw, db = torch.ops.transcoder.dwconv_time_bwd(grad_out, x, weight, need_x, need_w or need_b)
    return (
        dx if need_x else None,
        dw if need_w else None,
        db.to(ctx.bias_dtype) if need_b else None,
    )


_dwconv_time_fwd.register_autograd(_backward, setup_context=_setup_context)
