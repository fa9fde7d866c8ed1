"""Tests for transcoder.models.depthwise_conv.

The Triton kernels are checked on the CPU through Triton's interpreter. ``TRITON_INTERPRET=1`` must
be set before Triton is imported, which pytest has usually done already, so those checks run this
file as a script in a subprocess (``--interpreter-worker``) and compare its JSON report here.

The tests marked ``cuda`` check the compiled kernels on a GPU (``pytest -m cuda -rs``); without CUDA and
Triton they are skipped, with the reason, and report as skipped, not passed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from transcoder.models import depthwise_conv as dc

REPO_ROOT = Path(__file__).resolve().parents[1]


def naive_depthwise_conv_time(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Shift-and-add in float64 straight from the definition; x (B, T, G, C), weight (C, K)."""
    T = x.shape[1]
    K = weight.shape[1]
    P = K // 2
    xp = F.pad(x.double(), (0, 0, 0, 0, P, P))
    y = sum(xp[:, k : k + T] * weight[:, k].double() for k in range(K))
    if bias is not None:
        y = y + bias.double()
    return y


def _inputs(shape: tuple[int, int, int, int], K: int, with_bias: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, generator=gen, dtype=dtype)
    w = torch.randn(C, K, generator=gen, dtype=dtype) / K**0.5
    b = torch.randn(C, generator=gen, dtype=dtype) if with_bias else None
    return x, w, b


def rel_err(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want|, in float64."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def _grads(fn, x: Tensor, w: Tensor, b: Tensor | None, gy: Tensor) -> tuple[Tensor, list[Tensor]]:
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return y, list(grads)


CASES = [
    ((2, 7, 3, 5), 3, True),
    ((1, 13, 2, 70), 31, False),
    ((2, 9, 1, 33), 5, True),
    ((1, 40, 2, 16), 31, True),
]


@pytest.mark.parametrize(("shape", "K", "with_bias"), CASES)
def test_reference_matches_definition(shape: tuple[int, int, int, int], K: int, with_bias: bool) -> None:
    x, w, b = _inputs(shape, K, with_bias, torch.float64, seed=1)
    gy = torch.randn(shape, dtype=torch.float64)
    y_ref, g_ref = _grads(dc.depthwise_conv_time_reference, x, w, b, gy)
    y_naive, g_naive = _grads(naive_depthwise_conv_time, x, w, b, gy)
    assert y_ref.shape == shape and y_ref.is_contiguous()
    torch.testing.assert_close(y_ref, y_naive, rtol=1e-10, atol=1e-10)
    for got, want in zip(g_ref, g_naive, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_is_per_band_and_zero_padded() -> None:
    # A delta kernel at tap k shifts each band by k - K//2 along time and leaves other bands alone.
    x = torch.randn(1, 6, 3, 4, dtype=torch.float64)
    w = torch.zeros(4, 5, dtype=torch.float64)
    w[:, 4] = 1.0  # y[t] = x[t + 2]
    y = dc.depthwise_conv_time_reference(x, w)
    torch.testing.assert_close(y[:, :4], x[:, 2:])
    assert torch.all(y[:, 4:] == 0)


def test_reference_mixed_dtypes() -> None:
    x, w, b = _inputs((2, 5, 2, 8), 3, True, torch.float32, seed=2)
    y = dc.depthwise_conv_time_reference(x.bfloat16(), w, b)
    assert y.dtype == torch.bfloat16
    want = naive_depthwise_conv_time(x.bfloat16(), w.bfloat16(), b.bfloat16())
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2)


def test_argument_checks() -> None:
    x = torch.randn(1, 4, 2, 3)
    with pytest.raises(ValueError, match="odd"):
        dc.depthwise_conv_time(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match="weight"):
        dc.depthwise_conv_time(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="bias"):
        dc.depthwise_conv_time(x, torch.randn(3, 3), torch.randn(4))
    with pytest.raises(ValueError, match="B, T, G, C"):
        dc.depthwise_conv_time(x[0], torch.randn(3, 3))


def test_backend_selection_on_cpu() -> None:
    assert dc.get_backend() == "auto"
    assert dc.active_backend("cpu") == "reference"
    with dc.use_backend("reference"):
        assert dc.get_backend() == "reference"
        assert dc.active_backend("cuda") == "reference"
    assert dc.get_backend() == "auto"
    with pytest.raises(ValueError):
        dc.set_backend("fast")  # type: ignore[arg-type]
    x, w, b = _inputs((1, 4, 2, 3), 3, True, torch.float32, seed=3)
    with dc.use_backend("triton"), pytest.raises(RuntimeError, match="cannot run on cpu"):
        dc.depthwise_conv_time(x, w, b)
    torch.testing.assert_close(dc.depthwise_conv_time(x, w, b), dc.depthwise_conv_time_reference(x, w, b))


@pytest.mark.parametrize("with_bias", [True, False])
def test_custom_op_cpu_matches_reference(with_bias: bool) -> None:
    # Without Triton the op computes the same float32 math through aten, so its autograd rule,
    # fake kernels and schema can be checked on the CPU.
    x, w, b = _inputs((2, 9, 2, 6), 5, with_bias, torch.float32, seed=4)
    gy = torch.randn(x.shape)
    y_op, g_op = _grads(torch.ops.transcoder.dwconv_time_fwd, x, w, b, gy)
    y_ref, g_ref = _grads(naive_depthwise_conv_time, x, w, b, gy)
    torch.testing.assert_close(y_op.double(), y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(g_op, g_ref, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.transcoder.dwconv_time_fwd, (x.requires_grad_(), w.requires_grad_(), b))


def test_custom_op_partial_grads() -> None:
    x, w, b = _inputs((1, 6, 2, 4), 3, True, torch.float32, seed=5)
    w.requires_grad_()
    y = torch.ops.transcoder.dwconv_time_fwd(x, w, b)  # x and b need no grad
    (gw,) = torch.autograd.grad(y.sum(), [w])
    _, (_, gw_ref) = _grads(naive_depthwise_conv_time, x, w.detach(), None, torch.ones(x.shape))
    torch.testing.assert_close(gw.double(), gw_ref.double(), rtol=1e-5, atol=1e-5)
    dx, dw, db = torch.ops.transcoder.dwconv_time_bwd(torch.ones(x.shape), x, w, True, False)
    assert dx.shape == x.shape and dw.numel() == 0 and db.numel() == 0


def test_autocast_cpu_casts_input_like_conv1d() -> None:
    x, w, b = _inputs((2, 6, 2, 8), 3, True, torch.float32, seed=6)
    x.requires_grad_()
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dc.depthwise_conv_time(x, w, b)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert w.grad is not None and w.grad.dtype == torch.float32
    torch.testing.assert_close(y.double(), naive_depthwise_conv_time(x, w, b).detach(), rtol=3e-2, atol=3e-2)


def test_torch_compile_cpu() -> None:
    torch._dynamo.reset()
    x, w, b = _inputs((2, 7, 2, 8), 5, True, torch.float32, seed=7)
    gy = torch.randn(x.shape)

    def step(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.relu(dc.depthwise_conv_time(x, w, b)) * 2.0

    y_c, g_c = _grads(torch.compile(step, backend="inductor"), x, w, b, gy)
    y_e, g_e = _grads(step, x, w, b, gy)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    for got, want in zip(g_c, g_e, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_torch_compile_custom_op_fullgraph() -> None:
    # The Triton path's custom op must trace without graph breaks (fake kernels, autograd rule).
    torch._dynamo.reset()
    x, w, b = _inputs((1, 5, 3, 4), 3, True, torch.float32, seed=8)
    gy = torch.randn(x.shape)

    def step(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.ops.transcoder.dwconv_time_fwd(x * 1.5, w, b).sin()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=True)
    y_c, g_c = _grads(compiled, x, w, b, gy)
    y_e, g_e = _grads(step, x, w, b, gy)
    torch.testing.assert_close(y_c, y_e)
    for got, want in zip(g_c, g_e, strict=True):
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter
# --------------------------------------------------------------------------------------------------

# (shape, K, bias, x dtype, fwd config, dw config); tiny because the interpreter is slow.
INTERPRETER_CASES = [
    ((2, 7, 3, 5), 3, True, "float32", {}, {}),
    ((1, 13, 2, 70), 31, False, "float32", {}, {}),
    ((1, 25, 1, 33), 31, True, "float32", {"BLOCK_T": 8, "BLOCK_C": 32}, {"BLOCK_T": 4, "BLOCK_C": 16}),
    ((2, 9, 1, 33), 5, True, "float32", {"BLOCK_T": 4, "BLOCK_C": 16, "unroll": 0}, {"reduce_per_tile": 1}),
    ((2, 11, 2, 24), 31, True, "bfloat16", {}, {}),
]


def _interpreter_worker() -> None:
    """Run in a subprocess with TRITON_INTERPRET=1: print a JSON list of relative errors per case."""
    assert dc.active_backend("cpu") == "triton-interpreter", dc.active_backend("cpu")
    calls = {"conv": 0, "weight_grad": 0}
    conv, weight_grad = dc._triton_conv, dc._triton_weight_grad

    def counted_conv(*args, **kwargs):
        calls["conv"] += 1
        return conv(*args, **kwargs)

    def counted_weight_grad(*args, **kwargs):
        calls["weight_grad"] += 1
        return weight_grad(*args, **kwargs)

    dc._triton_conv, dc._triton_weight_grad = counted_conv, counted_weight_grad
    fwd_default, dw_default = dict(dc.FWD_CONFIG), dict(dc.DW_CONFIG)
    report = []
    for i, (shape, K, with_bias, dtype_name, fwd_cfg, dw_cfg) in enumerate(INTERPRETER_CASES):
        dc.FWD_CONFIG.update(fwd_default | fwd_cfg)
        dc.DW_CONFIG.update(dw_default | dw_cfg)
        x, w, b = _inputs(shape, K, with_bias, torch.float32, seed=100 + i)
        x = x.to(getattr(torch, dtype_name))
        gy = torch.randn(shape, generator=torch.Generator().manual_seed(200 + i))
        y, grads = _grads(dc.depthwise_conv_time, x, w, b, gy)
        b64 = b.double() if b is not None else None
        y_ref, grads_ref = _grads(naive_depthwise_conv_time, x.double(), w.double(), b64, gy.to(x.dtype).double())
        names = ["y", "grad_x", "grad_weight"] + (["grad_bias"] if with_bias else [])
        errs = {}
        for name, got, want in zip(names, [y] + grads, [y_ref] + grads_ref, strict=True):
            want_dtype = {"y": x.dtype, "grad_x": x.dtype}.get(name, torch.float32)
            assert got.dtype == want_dtype, (name, got.dtype, want_dtype)
            assert got.shape == want.shape, (name, got.shape, want.shape)
            errs[name] = rel_err(got, want)
        report.append({"case": i, "dtype": dtype_name, "errors": errs})
    report.append({"calls": dict(calls)})
    # Schema, fake kernels and autograd rule of the op, with the Triton kernels behind it.
    x, w, b = _inputs((1, 5, 2, 6), 3, True, torch.float32, seed=300)
    torch.library.opcheck(torch.ops.transcoder.dwconv_time_fwd, (x.requires_grad_(), w.requires_grad_(), b))
    report.append({"opcheck_kernel_calls": calls["conv"] - report[-1]["calls"]["conv"]})

    def block(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.silu(dc.depthwise_conv_time(x * 0.5, w, b)) + x

    # The public function on the Triton path traces without graph breaks.
    x, w, b = _inputs((2, 9, 2, 8), 5, True, torch.float32, seed=301)
    gy = torch.randn(x.shape)
    y_c, g_c = _grads(torch.compile(block, backend="aot_eager", fullgraph=True), x, w, b, gy)
    y_e, g_e = _grads(block, x, w, b, gy)
    report.append({"compile_errors": [rel_err(a, r) for a, r in zip([y_c, *g_c], [y_e, *g_e], strict=True)]})
    print(json.dumps(report))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")
def test_triton_kernels_under_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    env.pop("TRANSCODER_DISABLE_TRITON", None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--interpreter-worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    *cases, calls, opcheck, compiled = report
    assert len(cases) == len(INTERPRETER_CASES)
    # Every case ran the forward and input-gradient kernel twice and the weight-gradient kernel once.
    assert calls["calls"] == {"conv": 2 * len(cases), "weight_grad": len(cases)}
    assert opcheck["opcheck_kernel_calls"] > 0
    assert max(compiled["compile_errors"]) < 1e-6, compiled
    for case in cases:
        tol = 1e-5 if case["dtype"] == "float32" else 1e-2
        for name, err in case["errors"].items():
            assert err < tol, f"case {case['case']} ({case['dtype']}) {name}: relative error {err:.2e}"


# --------------------------------------------------------------------------------------------------
# Triton kernels on a CUDA device
# --------------------------------------------------------------------------------------------------

def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    if not dc.triton_runs_on("cuda"):
        return (f"needs Triton on CUDA (triton importable: {dc.TRITON_AVAILABLE}, "
                f"TRANSCODER_DISABLE_TRITON set: {dc.DISABLED_BY_ENV})")
    return None


needs_cuda_triton = pytest.mark.skipif(_cuda_skip_reason() is not None, reason=_cuda_skip_reason() or "")

# (shape (B, T, G, C), K, bias, x dtype): odd sizes, channel counts off the tile widths, the standard shape.
CUDA_CASES = [
    ((2, 7, 3, 5), 3, True, torch.float32),
    ((1, 13, 2, 70), 31, False, torch.float32),
    ((3, 64, 8, 96), 31, True, torch.float32),
    ((2, 100, 3, 200), 7, True, torch.float32),
    ((1, 257, 1, 33), 31, True, torch.float32),
    ((4, 64, 8, 768), 31, True, torch.bfloat16),
    ((2, 50, 4, 136), 15, False, torch.float16),
]


def _cuda_inputs(shape: tuple[int, int, int, int], K: int, dtype: torch.dtype, seed: int):
    """x and dy in ``dtype``, fp32 weight and bias, on the GPU."""
    x, w, b = _inputs(shape, K, True, torch.float32, seed)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1000))
    return x.to("cuda", dtype), w.cuda(), b.cuda(), dy.to("cuda", dtype)


@pytest.mark.cuda
@needs_cuda_triton
@pytest.mark.parametrize(("shape", "K", "with_bias", "dtype"), CUDA_CASES,
                         ids=[f"{s}-K{k}-{'bias' if b else 'nobias'}-{str(d)[6:]}" for s, k, b, d in CUDA_CASES])
def test_triton_on_cuda_matches_float64_reference(shape, K: int, with_bias: bool, dtype: torch.dtype) -> None:
    x, w, b, dy = _cuda_inputs(shape, K, dtype, seed=len(shape) * K)
    b = b if with_bias else None
    with dc.use_backend("triton"):
        y, grads = _grads(dc.depthwise_conv_time, x, w, b, dy)
    b64 = b.double() if b is not None else None
    y_ref, grads_ref = _grads(dc.depthwise_conv_time_reference, x.double(), w.double(), b64, dy.double())
    assert y.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    names = ["y", "grad_x", "grad_weight"] + (["grad_bias"] if with_bias else [])
    for name, got, want in zip(names, [y, *grads], [y_ref, *grads_ref], strict=True):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) < tol, f"{name}: relative error {rel_err(got, want):.2e} (tolerance {tol:g})"


@pytest.mark.cuda
@needs_cuda_triton
def test_triton_on_cuda_under_autocast_is_deterministic() -> None:
    x, w, b, dy = _cuda_inputs((8, 64, 8, 256), 31, torch.float32, seed=99)

    def run() -> tuple[Tensor, list[Tensor]]:
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        with dc.use_backend("triton"), torch.autocast("cuda", dtype=torch.bfloat16):
            y = dc.depthwise_conv_time(*leaves)
        return y, list(torch.autograd.grad(y, leaves, dy.to(y.dtype)))

    (y1, g1), (y2, g2) = run(), run()
    # Like conv1d under autocast: bf16 activations, fp32 gradients of the fp32 leaves.
    assert (y1.dtype, *(g.dtype for g in g1)) == (torch.bfloat16, torch.float32, torch.float32, torch.float32)
    assert torch.equal(y1, y2) and all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
    y_ref, g_ref = _grads(dc.depthwise_conv_time_reference, x.double(), w.double(), b.double(), dy.double())
    for got, want in zip([y1, *g1], [y_ref, *g_ref], strict=True):
        assert rel_err(got, want) < 2e-2


@pytest.mark.cuda
@needs_cuda_triton
def test_torch_compile_fullgraph_over_the_triton_op_on_cuda() -> None:
    torch._dynamo.reset()
    x, w, b, dy = _cuda_inputs((4, 64, 8, 256), 31, torch.bfloat16, seed=7)

    def block(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.silu(dc.depthwise_conv_time(x * 0.5, w, b)) + x

    with dc.use_backend("triton"):
        y_c, g_c = _grads(torch.compile(block, fullgraph=True), x, w, b, dy)
        y_e, g_e = _grads(block, x, w, b, dy)
    for got, want in zip([y_c, *g_c], [y_e, *g_e], strict=True):
        assert rel_err(got, want) < 2e-2


if __name__ == "__main__" and "--interpreter-worker" in sys.argv:
    _interpreter_worker()
