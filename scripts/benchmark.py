"""Training-throughput benchmark: the trainer's own step (:func:`transcoder.training.step.train_step`) on a
config's task, with the config's optimizer, clipping, schedule, precision and EMA.

Prints samples/s, seconds of audio per second, model FLOP utilisation (FLOPs counted by
``torch.utils.flop_counter`` for one step, against ``--peak-tflops``), peak memory, and the
time split between data wait, the log-mel front end, forward (with the loss), backward and the optimizer step.
FLOPs are counted on the eager model before ``--compile`` compiles it (the counter's global module hooks
would make a compiled model recompile inside the timed steps).

Synthetic batch on the device (default)::

    python scripts/benchmark.py configs/tokenizer/audio_simple_bsq_b18.yaml --batch-size 64 --precision bf16

Real data from a folder (decoding + cropping in loader workers, as in training)::

    python scripts/benchmark.py CONFIG --data-dir my_audio/train --num-workers 8

A few steps on a CPU (checks the script; tests/test_benchmark.py runs this on a smaller model)::

    python scripts/benchmark.py configs/tokenizer/audio_demo_librivox_mini.yaml --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from transcoder.audio import MelConfig
from transcoder.data import AudioFolderDataset
from transcoder.models import depthwise_conv
from transcoder.models.audiobsq import ConformerConvModule
from transcoder.tasks import build_task
from transcoder.training.config import load_config
from transcoder.training.loader import build_loader
from transcoder.training.sampler import ResumableTrainSampler
from transcoder.training.state import TrainState
from transcoder.training.step import StepState, build_parts, train_step
from transcoder.training.trainer import resolve_precision

PHASES = ("frontend", "forward", "backward", "optimizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--conv-module", choices=["config", "on", "off"], default="config",
                        help="override audioconfig.use_conv_module")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--reference-conv", action="store_true",
                        help="use the library depthwise conv instead of the Triton kernel")
    parser.add_argument("--data-dir", default=None,
                        help="read real audio from this folder instead of a synthetic batch")
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="peak dense bf16 TFLOP/s of the device for MFU (H100 SXM: 989)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY.SUB=VALUE")
    return parser.parse_intermixed_args(argv)


@dataclass
class Timings:
    """Seconds per phase, summed over the timed steps."""

    data: float = 0.0
    total: float = 0.0
    phases: dict[str, float] | None = None


def synthetic_batches(batch_size: int, clip_samples: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """The same random waveform batch forever (already on the device: no data cost)."""
    wave = (torch.rand(batch_size, clip_samples, device=device) * 2 - 1) * 0.3
    while True:
        yield {"audio": wave}


def real_batches(folder: str, mel: MelConfig, batch_size: int, workers: int,
                 device: torch.device) -> Iterator[dict[str, Any]]:
    dataset = AudioFolderDataset(folder, sample_rate=mel.sample_rate, clip_samples=mel.clip_samples, mode="train")
    loader = build_loader(dataset, ResumableTrainSampler(len(dataset)), batch_size, workers=workers, device=device,
                          seed=0, persistent=True, prefetch_factor=4)
    yield from loader


def phase_seconds(marks: list[tuple[str, Any]]) -> dict[str, float]:
    """Sum the intervals between consecutive marks by the name of the mark that ends them."""
    totals = dict.fromkeys(PHASES, 0.0)
    for (_, start), (phase, end) in zip(marks, marks[1:], strict=False):
        if phase in totals:
            totals[phase] += end - start if isinstance(start, float) else start.elapsed_time(end) / 1000.0
    return totals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.conv_module != "config":
        overrides.append(f"model.params.audioconfig.use_conv_module={args.conv_module == 'on'}")
    if args.grad_checkpointing:
        overrides.append("training.grad_checkpointing=true")
    if args.precision:
        overrides.append(f"training.precision={args.precision}")
    config = load_config(args.config, overrides)
    device = torch.device(args.device)
    precision = resolve_precision(config["training"]["precision"], device)
    if args.reference_conv:
        depthwise_conv.set_backend("reference")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    mel = MelConfig.from_dict(config["data"], strict=False)
    batch_size = int(config["data"]["batch_size"])
    task = build_task(config, mel, device)
    state = StepState(parts=build_parts(task, config, device, precision), counters=TrainState(),
                      precision=precision, device=device)
    max_nonfinite = int(config["training"]["max_nonfinite_steps"])
    workers = args.num_workers if args.num_workers is not None else int(config["data"]["num_workers"])
    batches = (real_batches(args.data_dir, mel, batch_size, workers, device) if args.data_dir
               else synthetic_batches(batch_size, mel.clip_samples, device))

    # FLOPs first, on the eager model: the counter's global module hooks would make a model compiled
    # earlier recompile inside the timed steps (why the compiled rows of an earlier suite ran slow).
    model = state.parts["model"].model
    pt, pf = model.patch_size
    tokens = (mel.target_length // pt) * (mel.n_mels // pf)
    flops = count_flops(lambda: train_step(state, task, next(batches), max_nonfinite), model, batch_size, tokens)
    if args.compile or config["training"]["compile"]:
        for part in state.parts.values():
            part.forward_model = torch.compile(part.model)
    for _ in range(args.warmup):
        train_step(state, task, next(batches), max_nonfinite)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timings = Timings()
    all_marks: list[list[tuple[str, Any]]] = []
    start = time.perf_counter()
    for _ in range(args.steps):
        wait = time.perf_counter()
        batch = next(batches)
        timings.data += time.perf_counter() - wait
        state.marks = []
        train_step(state, task, batch, max_nonfinite)
        all_marks.append(state.marks)
    state.marks = None
    _sync(device)
    timings.total = time.perf_counter() - start
    timings.phases = dict.fromkeys(PHASES, 0.0)
    for marks in all_marks:
        for phase, seconds in phase_seconds(marks).items():
            timings.phases[phase] += seconds

    results = summarise(args, config, mel, batch_size, precision, flops, timings, device, workers)
    print_table(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


def count_flops(run_step: Any, model: torch.nn.Module, batch_size: int, tokens: int) -> float:
    """FLOPs of one training step (forward + backward) as counted by PyTorch's FlopCounterMode.

    The counter's formula for the grouped (depthwise) convolution's backward over-counts by orders of
    magnitude, and it cannot see the Triton custom op at all, so convolution counts are replaced by the
    exact depthwise figure: 2 * tokens * C * K per module for the forward, three times that per step.
    """
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            run_step()
    except Exception as err:  # noqa: BLE001 - a custom op may not be countable; report, don't fail
        print(f"warning: FLOP counting failed ({type(err).__name__}: {err}); MFU not reported", file=sys.stderr)
        return float("nan")
    counts = counter.get_flop_counts().get("Global", {})
    conv_counted = sum(n for op, n in counts.items() if "convolution" in str(op))
    depthwise = sum(3 * 2 * batch_size * tokens * module.depthwise_weight.numel()
                    for module in model.modules() if isinstance(module, ConformerConvModule))
    return float(counter.get_total_flops() - conv_counted + depthwise)


def summarise(args: argparse.Namespace, config: dict[str, Any], mel: MelConfig, batch_size: int,
              precision: torch.dtype, flops: float, timings: Timings, device: torch.device,
              workers: int) -> dict[str, Any]:
    audio = config["model"]["params"].get("audioconfig", {})
    step_seconds = timings.total / args.steps
    clip_seconds = mel.clip_samples / mel.sample_rate
    samples_per_second = batch_size / step_seconds
    return {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "config": args.config,
        "batch_size": batch_size,
        "precision": str(precision).replace("torch.", ""),
        "compile": bool(args.compile or config["training"]["compile"]),
        "conv_module": bool(audio.get("use_conv_module", True)),
        "depthwise_backend": depthwise_conv.active_backend(device),
        "grad_checkpointing": bool(config["training"]["grad_checkpointing"] or audio.get("grad_checkpointing")),
        "data": f"{args.data_dir} ({workers} workers)" if args.data_dir else "synthetic (on device)",
        "samples_per_second": samples_per_second,
        "audio_seconds_per_second": samples_per_second * clip_seconds,
        "step_ms": 1000 * step_seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step_seconds / 1e12,
        "mfu": flops / step_seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "share_data_wait": timings.data / timings.total,
        **{f"share_{phase}": seconds / timings.total for phase, seconds in timings.phases.items()},
    }


def print_table(results: dict[str, Any]) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
