"""Training-step benchmarks: the trainer's own step (:func:`transcoder.training.step.train_step`) on a config's
task, with the config's optimizers, clipping, schedules, precision and EMA. The config's ``task`` picks the
report; ``--compare`` compares several configs.

**Throughput** (tokenizer, tokenizer_gan and pretrain configs): samples/s, seconds of audio per second, model
FLOP utilisation (FLOPs counted by ``torch.utils.flop_counter`` for one step, against ``--peak-tflops``), peak
memory, and the time split between data wait, the log-mel front end, forward (with the loss), backward and
the optimizer step. FLOPs are counted on the eager model before ``--compile`` compiles it (the counter's
global module hooks would make a compiled model recompile inside the timed steps)::

    python scripts/benchmark_train.py configs/tokenizer/audio_simple_bsq_b18.yaml --batch-size 64 --precision bf16
    python scripts/benchmark_train.py CONFIG --data-dir my_audio/train --num-workers 8   # real data, loader workers
    python scripts/benchmark_train.py configs/tokenizer/audio_demo_librivox_mini.yaml --steps 3 --warmup 1

**Vocoder** (task ``vocoder``): step time and segments/s in both phases (the mel-only warm-up and the
adversarial phase, discriminators on), and the inference real-time factor of the generator (batch 1, fp32,
``--infer-seconds`` of audio; compute seconds per second of audio, below 1 is faster than real time)::

    OMP_NUM_THREADS=1 python scripts/benchmark_train.py configs/vocoder/vocoder_demo_librivox_mini.yaml --threads 1
    python scripts/benchmark_train.py configs/vocoder/vocoder_base_librispeech.yaml --device cuda --batch-size 16

**Compare** (``--compare NAME=CONFIG[|override|...] ...``): steps/s of several configs side by side,
interleaved in ``--rounds`` rounds so a shared machine's load hits every config alike; prints the median
steps/s per config and the ratios to the first, as JSON::

    OMP_NUM_THREADS=1 python scripts/benchmark_train.py --device cpu --compare \\
        tok=configs/tokenizer/audio_demo_librivox_mini.yaml \\
        mae_zero=configs/pretrain/mae_demo_librivox_mini.yaml \\
        "mae_skip=configs/pretrain/mae_demo_librivox_mini.yaml|model.params.encoder_conv=skip"

Batches are synthetic (noise waveforms of the config's clip length, already on the device: no data cost) unless
``--data-dir`` is given; the front end runs as in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from transcoder.audio import MelConfig
from transcoder.data import AudioFolderDataset
from transcoder.models import depthwise_conv
from transcoder.models.conformer_conv import ConformerConvModule
from transcoder.tasks import build_task
from transcoder.tasks.base import Task
from transcoder.training.config import load_config
from transcoder.training.loader import build_loader
from transcoder.training.sampler import ResumableTrainSampler
from transcoder.training.state import TrainState
from transcoder.training.step import StepState, build_parts, train_step
from transcoder.training.trainer import resolve_precision
from transcoder.utils.targets import instantiate

PHASES = ("frontend", "forward", "backward", "optimizer")
#: (timed steps, untimed warm-up steps) per report when --steps / --warmup are not given.
DEFAULT_STEPS = {"throughput": (20, 5), "vocoder": (5, 1), "compare": (10, 3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None, help="the config to benchmark (not with --compare)")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY.SUB=VALUE")
    parser.add_argument("--compare", nargs="+", default=None, metavar="NAME=CONFIG[|override|...]",
                        help="compare the step rates of these configs (interleaved rounds)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (per phase for a vocoder, per config and round with --compare); "
                             "default 20 / 5 / 10")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (compilation, autotuning); default 5 / 1 / 3")
    parser.add_argument("--rounds", type=int, default=5, help="--compare: rounds over the configs")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="default: the config's training.precision (bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--conv-module", choices=["config", "on", "off"], default="config",
                        help="override audioconfig.use_conv_module")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--reference-conv", action="store_true",
                        help="use the library depthwise conv instead of the Triton kernel")
    parser.add_argument("--data-dir", default=None,
                        help="throughput: read real audio from this folder instead of a synthetic batch")
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="peak dense bf16 TFLOP/s of the device for MFU (H100 SXM: 989)")
    parser.add_argument("--infer-seconds", type=float, default=10.0,
                        help="vocoder: audio rendered per inference call")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_intermixed_args(argv)
    if (args.config is None) == (args.compare is None):
        parser.error("give one CONFIG, or --compare NAME=CONFIG ... (not both)")
    if args.compare is not None and args.overrides:
        parser.error("with --compare, give overrides per config: NAME=CONFIG|KEY=VALUE|...")
    return args


# -- the one step harness ------------------------------------------------------------------------------
class Harness:
    """A config's task and trainable parts, ready to run the trainer's step."""

    def __init__(self, config: dict[str, Any], mel: MelConfig, task: Task, state: StepState, batch_size: int,
                 max_nonfinite: int) -> None:
        self.config, self.mel, self.task, self.state = config, mel, task, state
        self.batch_size, self.max_nonfinite = batch_size, max_nonfinite

    @classmethod
    def build(cls, config: dict[str, Any], device: torch.device) -> Harness:
        mel = MelConfig.from_dict(config["data"], strict=False)
        precision = resolve_precision(config["training"]["precision"], device)
        task = build_task(config, mel, device)
        state = StepState(parts=build_parts(task, config, device, precision), counters=TrainState(),
                          precision=precision, device=device)
        return cls(config, mel, task, state, int(config["data"]["batch_size"]),
                   int(config["training"]["max_nonfinite_steps"]))

    def step(self, batch: dict[str, Any]) -> None:
        train_step(self.state, self.task, batch, self.max_nonfinite)

    def synthetic_batch(self) -> dict[str, Any]:
        """A batch of noise waveforms of the config's clip length, on the device."""
        generator = torch.Generator().manual_seed(0)
        wave = (torch.rand(self.batch_size, self.mel.clip_samples, generator=generator) * 2 - 1) * 0.3
        return {"audio": wave.to(self.state.device)}

    def compile(self) -> None:
        for part in self.state.parts.values():
            part.forward_model = torch.compile(part.model)

    def timed(self, batch: dict[str, Any], steps: int, warmup: int) -> float:
        """Seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.step(batch)
        _sync(self.state.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(batch)
        _sync(self.state.device)
        return (time.perf_counter() - start) / max(steps, 1)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The command-line switches as config overrides."""
    overrides = []
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.conv_module != "config":
        overrides.append(f"model.params.audioconfig.use_conv_module={args.conv_module == 'on'}")
    if args.grad_checkpointing:
        overrides.append("training.grad_checkpointing=true")
    if args.precision:
        overrides.append(f"training.precision={args.precision}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference_conv:
        depthwise_conv.set_backend("reference")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    if args.compare is not None:
        results = compare(args, device)
        print(json.dumps(results, indent=2))
    else:
        config = load_config(args.config, [*args.overrides, *config_overrides(args)])
        if config["task"] == "vocoder":
            if args.data_dir:
                print("error: --data-dir is for the throughput report (tokenizer and pretrain configs)",
                      file=sys.stderr)
                return 2
            results = vocoder_report(args, config, device)
        else:
            results = throughput_report(args, config, device)
        print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


def _steps(args: argparse.Namespace, report: str) -> tuple[int, int]:
    steps, warmup = DEFAULT_STEPS[report]
    return (steps if args.steps is None else args.steps), (warmup if args.warmup is None else args.warmup)


# -- throughput ----------------------------------------------------------------------------------------
def real_batches(folder: str, mel: MelConfig, batch_size: int, workers: int,
                 device: torch.device) -> Iterator[dict[str, Any]]:
    dataset = AudioFolderDataset(folder, sample_rate=mel.sample_rate, clip_samples=mel.clip_samples, mode="train")
    loader = build_loader(dataset, ResumableTrainSampler(len(dataset)), batch_size, workers=workers, device=device,
                          seed=0, persistent=True, prefetch_factor=4)
    yield from loader


def repeat(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    while True:
        yield batch


def phase_seconds(marks: list[tuple[str, Any]]) -> dict[str, float]:
    """Sum the intervals between consecutive marks by the name of the mark that ends them."""
    totals = dict.fromkeys(PHASES, 0.0)
    for (_, start), (phase, end) in zip(marks, marks[1:], strict=False):
        if phase in totals:
            totals[phase] += end - start if isinstance(start, float) else start.elapsed_time(end) / 1000.0
    return totals


def throughput_report(args: argparse.Namespace, config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    harness = Harness.build(config, device)
    mel, state = harness.mel, harness.state
    steps, warmup = _steps(args, "throughput")
    workers = args.num_workers if args.num_workers is not None else int(config["data"]["num_workers"])
    batches = (real_batches(args.data_dir, mel, harness.batch_size, workers, device) if args.data_dir
               else repeat(harness.synthetic_batch()))

    # FLOPs first, on the eager model: the counter's global module hooks would make a model compiled
    # earlier recompile inside the timed steps.
    model = state.parts["model"].model
    pt, pf = model.patch_size
    tokens = (mel.target_length // pt) * (mel.n_mels // pf)
    flops = count_flops(lambda: harness.step(next(batches)), model, harness.batch_size, tokens)
    compiled = bool(args.compile or config["training"]["compile"])
    if compiled:
        harness.compile()
    for _ in range(warmup):
        harness.step(next(batches))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    data_wait = 0.0
    phases = dict.fromkeys(PHASES, 0.0)
    start = time.perf_counter()
    for _ in range(steps):
        wait = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - wait
        state.marks = []
        harness.step(batch)
        for phase, seconds in phase_seconds(state.marks).items():
            phases[phase] += seconds
    state.marks = None
    _sync(device)
    total = time.perf_counter() - start

    audio = config["model"]["params"].get("audioconfig", {})
    step_seconds = total / steps
    samples_per_second = harness.batch_size / step_seconds
    return {
        "device": _device_name(device),
        "config": args.config,
        "batch_size": harness.batch_size,
        "precision": str(state.precision).replace("torch.", ""),
        "compile": compiled,
        "conv_module": bool(audio.get("use_conv_module", True)),
        "depthwise_backend": depthwise_conv.active_backend(device),
        "grad_checkpointing": bool(config["training"]["grad_checkpointing"] or audio.get("grad_checkpointing")),
        "data": f"{args.data_dir} ({workers} workers)" if args.data_dir else "synthetic (on device)",
        "samples_per_second": samples_per_second,
        "audio_seconds_per_second": samples_per_second * mel.clip_samples / mel.sample_rate,
        "step_ms": 1000 * step_seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step_seconds / 1e12,
        "mfu": flops / step_seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "share_data_wait": data_wait / total,
        **{f"share_{phase}": seconds / total for phase, seconds in phases.items()},
    }


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


# -- vocoder -------------------------------------------------------------------------------------------
def vocoder_report(args: argparse.Namespace, config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    steps, warmup = _steps(args, "vocoder")
    mel = MelConfig.from_dict(config["data"], strict=False)
    batch_size = int(config["data"]["batch_size"])
    results: dict[str, Any] = {"config": args.config, "device": str(device), "threads": torch.get_num_threads(),
                               "batch_size": batch_size, "segment_seconds": mel.clip_samples / mel.sample_rate}
    for phase, adversarial in (("warmup", False), ("adversarial", True)):
        loss = config["loss"]
        phase_config = {**config, "loss": {**loss, "params": {**loss["params"],
                                                              "disc_start_step": 0 if adversarial else 10**9}}}
        harness = Harness.build(phase_config, device)
        seconds = harness.timed(harness.synthetic_batch(), steps, warmup)
        results[f"{phase}_step_ms"] = 1000 * seconds
        results[f"{phase}_segments_per_second"] = batch_size / seconds
    results["inference_rtf"] = real_time_factor(config, mel, device, args.infer_seconds)
    return results


@torch.no_grad()
def real_time_factor(config: dict[str, Any], mel: MelConfig, device: torch.device, seconds: float,
                     repeats: int = 3) -> float:
    """Compute seconds per second of rendered audio (generator only, batch 1, fp32)."""
    generator = instantiate(config["model"]).to(device).eval()
    frames = max(1, round(seconds * mel.sample_rate / mel.hop_length))
    x = torch.rand(1, frames, mel.n_mels, device=device) * 2 - 1
    generator(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        generator(x)
    _sync(device)
    return (time.perf_counter() - start) / repeats / (frames * mel.hop_length / mel.sample_rate)


# -- compare -------------------------------------------------------------------------------------------
def compare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median steps/s of each ``NAME=CONFIG[|override|...]`` over interleaved rounds."""
    steps, warmup = _steps(args, "compare")
    torch.manual_seed(0)
    runs: dict[str, tuple[Harness, dict[str, Any]]] = {}
    for item in args.compare:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise SystemExit(f"error: --compare {item!r}: expected NAME=CONFIG[|override|...]")
        path, *overrides = spec.split("|")
        harness = Harness.build(load_config(path, [*overrides, *config_overrides(args)]), device)
        runs[name] = (harness, harness.synthetic_batch())
    for harness, batch in runs.values():
        harness.timed(batch, 0, warmup)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (harness, batch) in runs.items():
            rates[name].append(1.0 / harness.timed(batch, steps, 0))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    first = next(iter(medians.values()))
    return {"device": _device_name(device), "threads": torch.get_num_threads(), "steps_per_round": steps,
            "rounds": args.rounds, "median_steps_per_s": medians,
            "ratio_to_first": {k: v / first for k, v in medians.items()}, "all_steps_per_s": rates}


# -- helpers -------------------------------------------------------------------------------------------
def print_table(results: dict[str, Any]) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
