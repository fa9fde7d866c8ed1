"""Benchmark the depthwise time convolution (transcoder.models.depthwise_conv).

On CUDA, in this order, each step guarded so that one failure never stops the rest:

1. device-to-device copy bandwidth (the memory ceiling of this card);
2. a sweep of kernel tile configurations (each kernel alone), keeping the fastest (a configuration whose
   error against the reference is too large is never kept);
3. fwd and fwd+bwd timings of the reference (eager and torch.compile'd) and the Triton op at
   B=64, T=64, G=8, C=768, K=31, bf16 activations with fp32 weights under bf16 autocast, with
   effective GB/s against the memory floor and the max error against the reference.

The kernel's correctness on CUDA (against a float64 reference, autocast, determinism, torch.compile) is
tested by ``pytest -m cuda -rs tests/test_depthwise_conv.py``. On CPU this script times the reference and
says that CUDA is unavailable. Usage::

    python scripts/benchmark_depthwise_conv.py [--quick | --no-sweep] [--json PATH]

With ``$OUT`` set, the JSON report also goes to ``$OUT/benchmark_depthwise_conv.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transcoder.models import depthwise_conv as dc  # noqa: E402

SHAPE = (64, 64, 8, 768)  # (B, T, G, C)
K = 31

FWD_SWEEP = [
    {"BLOCK_T": 32, "BLOCK_C": 128, "num_warps": 4, "unroll": 1},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 1},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 1, "cache": ".ca"},
    {"BLOCK_T": 32, "BLOCK_C": 128, "num_warps": 4, "unroll": 0},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 0},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 0, "num_stages": 1},
    {"BLOCK_T": 32, "BLOCK_C": 128, "num_warps": 4, "unroll": 0, "num_stages": 1},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 4, "unroll": 0, "cache": ".ca"},
    {"BLOCK_T": 64, "BLOCK_C": 64, "num_warps": 4, "unroll": 0},
    {"BLOCK_T": 32, "BLOCK_C": 64, "num_warps": 4, "unroll": 0},
    {"BLOCK_T": 16, "BLOCK_C": 128, "num_warps": 4, "unroll": 0},
    {"BLOCK_T": 64, "BLOCK_C": 256, "num_warps": 8, "unroll": 0},
    {"BLOCK_T": 64, "BLOCK_C": 128, "num_warps": 8, "unroll": 0},
    {"BLOCK_T": 16, "BLOCK_C": 64, "num_warps": 2, "unroll": 0},
]
DW_SWEEP = [
    {"BLOCK_T": 4, "BLOCK_C": 64, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0, "cache": ".ca"},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 2, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 8, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0, "num_stages": 1},
    {"BLOCK_T": 2, "BLOCK_C": 64, "num_warps": 2, "programs_per_sm": 8, "reduce_per_tile": 0},
    {"BLOCK_T": 1, "BLOCK_C": 128, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 256, "num_warps": 4, "programs_per_sm": 4, "reduce_per_tile": 0},
    {"BLOCK_T": 2, "BLOCK_C": 128, "num_warps": 8, "programs_per_sm": 4, "reduce_per_tile": 0},
]

REPORT: dict = {"sweep_fwd": [], "sweep_dw": [], "timings": []}


class StepTimeout(Exception):
    pass


@contextmanager
def step(name: str, seconds: int = 180) -> Iterator[None]:
    """Run a block with a wall-clock limit, printing (not raising) any error."""

    def on_alarm(signum: int, frame: object) -> None:
        raise StepTimeout(f"{name}: over {seconds} s")

    has_alarm = hasattr(signal, "SIGALRM")
    if has_alarm:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(seconds)
    t0 = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a benchmark step must never stop the others
        print(f"[{name}] ERROR {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=6)
        REPORT.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        if has_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)


def time_ms(fn: Callable[[], object], warmup: int = 5, reps: int = 30) -> float:
    """Median wall time of ``fn`` in ms, with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def make_inputs(shape: tuple[int, int, int, int], k: int, dtype: torch.dtype, device: str, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    w = torch.randn(C, k, generator=gen, device=device) / k**0.5
    b = torch.randn(C, generator=gen, device=device)
    dy = torch.randn(shape, generator=gen, device=device).to(dtype)
    return x, w, b, dy


def copy_bandwidth() -> float:
    n = 1 << 28  # 512 MiB of bf16
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    gbs = 2 * src.numel() * src.element_size() / ms / 1e6
    print(f"device-to-device copy: {gbs:.0f} GB/s (read + write)", flush=True)
    REPORT["copy_GBps"] = gbs
    return gbs


def kernel_info(jit_fn: object) -> str:
    """Registers and spills of the most recently compiled variant of a Triton kernel, if readable."""
    try:
        for entry in getattr(jit_fn, "device_caches", {}).values():
            cache = entry[0] if isinstance(entry, tuple) else entry
            kernel = list(cache.values())[-1]
            return f"regs={kernel.n_regs} spills={kernel.n_spills}"
    except Exception as exc:  # noqa: BLE001 - Triton internals differ between versions
        return f"({type(exc).__name__})"
    return ""


def sweep_kernel(kind: str, configs: list[dict], live: dict, run: Callable[[], object],
                 error: Callable[[], float], tolerance: float, kernel: object, nbytes: int) -> None:
    """Time ``run`` under each tile configuration (written into ``live``, the module's config dict) and
    leave the fastest one whose ``error()`` is below ``tolerance`` in ``live``."""
    best = (float("inf"), dict(live))
    for cfg in configs:
        with step(f"sweep {kind} {cfg}", 60):
            live.clear()
            live.update(cfg)
            err = error()
            ms = time_ms(run)
            print(f"  {kind} {cfg}: {ms * 1e3:.1f} us  {2 * nbytes / ms / 1e6:.0f} GB/s  err {err:.1e} "
                  f"{kernel_info(kernel)}", flush=True)
            REPORT[f"sweep_{kind}"].append({"config": cfg, "ms": ms, "err": err})
            if err < tolerance and ms < best[0]:
                best = (ms, dict(cfg))
    live.clear()
    live.update(best[1])
    print(f"best {kind} config: {best[1]} ({best[0] * 1e3:.1f} us)", flush=True)
    REPORT[f"best_{kind}_config"] = best[1]


def sweep(quick: bool) -> None:
    x, w, b, dy = make_inputs(SHAPE, K, torch.bfloat16, "cuda", seed=5)
    nbytes = x.numel() * x.element_size()
    y_ref = dc.depthwise_conv_time_reference(x, w, b).float()
    sweep_kernel("fwd", FWD_SWEEP[:2] if quick else FWD_SWEEP, dc.FWD_CONFIG,
                 lambda: dc._triton_conv(x, w, b, flip=False),
                 lambda: rel_err(dc._triton_conv(x, w, b, flip=False), y_ref), 1e-2, dc._dwconv_time_kernel, nbytes)
    dw_ref, db_ref = dc._triton_weight_grad(dy, x, K)

    def dw_error() -> float:
        dw, db = dc._triton_weight_grad(dy, x, K)
        return max(rel_err(dw, dw_ref), rel_err(db, db_ref))

    sweep_kernel("dw", DW_SWEEP[:2] if quick else DW_SWEEP, dc.DW_CONFIG, lambda: dc._triton_weight_grad(dy, x, K),
                 dw_error, 1e-4, dc._dwconv_time_dw_kernel, nbytes)


def timings(copy_gbs: float | None) -> None:
    x, w, b, dy = make_inputs(SHAPE, K, torch.bfloat16, "cuda", seed=11)
    n = x.numel() * x.element_size()
    floor_bytes = {"fwd": 2 * n, "fwd+bwd": 5 * n}  # x, y | x, y, dy, x again for dw, dx
    with torch.no_grad():
        y_ref = dc.depthwise_conv_time_reference(x, w, b)

    def compiled_reference():
        torch._dynamo.reset()
        return torch.compile(dc.depthwise_conv_time_reference)

    variants: list[tuple[str, Callable[[], Callable], str]] = [
        ("reference (F.conv1d, eager)", lambda: dc.depthwise_conv_time_reference, "reference"),
        ("reference (torch.compile)", compiled_reference, "reference"),
        ("triton", lambda: dc.depthwise_conv_time, "triton"),
    ]
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    for name, make, backend in variants:
        with step(f"time {name}", 300):
            fn = make()
            with dc.use_backend(backend):  # type: ignore[arg-type]

                def run_fwd(fn: Callable = fn) -> torch.Tensor:
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                        return fn(x, w, b)

                def run_fwd_bwd(fn: Callable = fn) -> tuple[torch.Tensor, ...]:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        y = fn(*leaves)
                    return torch.autograd.grad(y, leaves, dy)

                err = (run_fwd().float() - y_ref.float()).abs().max().item()
                res = {"variant": name, "max_abs_err_vs_reference": err}
                for label, f in (("fwd", run_fwd), ("fwd+bwd", run_fwd_bwd)):
                    ms = time_ms(f)
                    gbs = floor_bytes[label] / ms / 1e6
                    res[label + "_ms"] = ms
                    res[label + "_GBps_eff"] = gbs
                    floor = f", floor {floor_bytes[label] / copy_gbs / 1e6:.3f} ms" if copy_gbs else ""
                    print(f"  {name:32s} {label:8s} {ms:7.3f} ms  {gbs:6.0f} GB/s eff{floor}", flush=True)
                print(f"  {name:32s} max |y - y_ref| = {err:.3e}", flush=True)
                REPORT["timings"].append(res)

    print(f"\n=== summary (B,T,G,C)={SHAPE} K={K} bf16, {REPORT.get('device', '?')} ===")
    if copy_gbs:
        print(f"memory floor at {copy_gbs:.0f} GB/s: fwd {floor_bytes['fwd'] / copy_gbs / 1e6:.3f} ms, "
              f"fwd+bwd {floor_bytes['fwd+bwd'] / copy_gbs / 1e6:.3f} ms")
    for r in REPORT["timings"]:
        print(f"{r['variant']:32s} fwd {r.get('fwd_ms', float('nan')):7.3f} ms | fwd+bwd "
              f"{r.get('fwd+bwd_ms', float('nan')):7.3f} ms ({r.get('fwd+bwd_GBps_eff', 0):5.0f} GB/s eff) | "
              f"max err {r['max_abs_err_vs_reference']:.2e}")
    print(f"errors: {len(REPORT.get('errors', []))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two configs per sweep only")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile-config sweep")
    parser.add_argument("--profile-once", action="store_true", help="one fwd and one dw launch (for ncu)")
    args = parser.parse_args()
    if args.profile_once:
        x, w, b, dy = make_inputs(SHAPE, K, torch.bfloat16, "cuda", seed=0)
        dc._triton_conv(x, w, b, flip=False)
        dc._triton_weight_grad(dy, x, K)
        torch.cuda.synchronize()
        print(f"profiled fwd {dc.FWD_CONFIG} and dw {dc.DW_CONFIG}")
        return
    faulthandler.dump_traceback_later(540, exit=True)  # last resort against a hang

    REPORT["torch"] = torch.__version__
    REPORT["triton_available"] = dc.TRITON_AVAILABLE
    if dc.TRITON_AVAILABLE:
        import triton

        REPORT["triton"] = triton.__version__
    if not torch.cuda.is_available():
        print(f"CUDA is unavailable: timing the reference on CPU only (torch {torch.__version__}).")
        x, w, b, _ = make_inputs((4, 64, 8, 256), K, torch.float32, "cpu", seed=0)
        for _ in range(2):
            dc.depthwise_conv_time(x, w, b)
        t0 = time.perf_counter()
        for _ in range(5):
            dc.depthwise_conv_time(x, w, b)
        ms = (time.perf_counter() - t0) / 5 * 1e3
        print(f"backend={dc.active_backend('cpu')}  (4, 64, 8, 256) K={K} fp32 fwd: {ms:.2f} ms")
        return

    REPORT["device"] = torch.cuda.get_device_name()
    print(f"device {REPORT['device']}, torch {torch.__version__}, triton {REPORT.get('triton')}, "
          f"backend {dc.active_backend('cuda')}", flush=True)
    if dc.active_backend("cuda") != "triton":
        print("Triton backend unavailable on CUDA: only the reference will be timed.")
    copy_gbs = None
    with step("copy bandwidth", 60):
        copy_gbs = copy_bandwidth()
    if dc.active_backend("cuda") == "triton" and not args.no_sweep:
        sweep(args.quick)
    timings(copy_gbs)

    out = args.json
    if out is None and os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "benchmark_depthwise_conv.json"
    if out is not None:
        out.write_text(json.dumps(REPORT, indent=1, default=str))
        print(f"report written to {out}")


if __name__ == "__main__":
    main()
