"""Vocoder throughput: training segments/s through the trainer's own step, and inference real-time factor.

Training runs :func:`transcoder.training.step.train_step` of the config's vocoder task (its optimizers,
schedules, precision and EMA) on synthetic segments of ``data.target_length`` frames, in both phases: the
mel-only warm-up and the adversarial phase (discriminators on). Inference renders ``--infer-seconds`` of
model-space log-mel with the generator (batch 1) and reports the real-time factor (compute seconds per
second of audio; below 1 is faster than real time).

    OMP_NUM_THREADS=1 python scripts/benchmark_vocoder.py configs/vocoder/vocoder_demo_librivox_mini.yaml --threads 1
    python scripts/benchmark_vocoder.py configs/vocoder/vocoder_base_librispeech.yaml --device cuda --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from transcoder.audio import MelConfig
from transcoder.tasks import build_task
from transcoder.training.config import load_config
from transcoder.training.state import TrainState
from transcoder.training.step import StepState, build_parts, train_step
from transcoder.training.trainer import resolve_precision


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a vocoder config (task: vocoder)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per phase")
    parser.add_argument("--infer-seconds", type=float, default=10.0, help="audio rendered per inference call")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY.SUB=VALUE")
    return parser.parse_intermixed_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(config: dict[str, Any], device: torch.device, batch_size: int, steps: int, warmup: int,
                  adversarial: bool) -> float:
    """Seconds per training step of one phase (synthetic speech-level noise segments)."""
    config = {**config, "loss": {**config["loss"], "params": {**config["loss"]["params"],
                                                              "disc_start_step": 0 if adversarial else 10**9}}}
    mel = MelConfig.from_dict(config["data"], strict=False)
    precision = resolve_precision(config["training"]["precision"], device)
    task = build_task(config, mel, device)
    state = StepState(parts=build_parts(task, config, device, precision), counters=TrainState(),
                      precision=precision, device=device)
    generator = torch.Generator().manual_seed(0)
    batch = {"audio": 0.05 * torch.randn(batch_size, mel.clip_samples, generator=generator)}
    for _ in range(warmup):
        train_step(state, task, batch, max_nonfinite_steps=10)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, task, batch, max_nonfinite_steps=10)
    _sync(device)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def real_time_factor(config: dict[str, Any], device: torch.device, seconds: float, repeats: int = 3) -> float:
    """Compute seconds per second of rendered audio (generator only, batch 1, fp32)."""
    from transcoder.utils.targets import instantiate

    mel = MelConfig.from_dict(config["data"], strict=False)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    if config["task"] != "vocoder":
        print(f"error: {args.config}: task={config['task']!r}, expected 'vocoder'", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = int(args.batch_size or config["data"]["batch_size"])
    mel = MelConfig.from_dict(config["data"], strict=False)
    segment_seconds = mel.clip_samples / mel.sample_rate
    results: dict[str, Any] = {"config": args.config, "device": str(device), "threads": torch.get_num_threads(),
                               "batch_size": batch_size, "segment_seconds": segment_seconds}
    for phase, adversarial in (("warmup", False), ("adversarial", True)):
        seconds = time_training(config, device, batch_size, args.steps, args.warmup, adversarial)
        results[f"{phase}_step_ms"] = 1000 * seconds
        results[f"{phase}_segments_per_second"] = batch_size / seconds
    results["inference_rtf"] = real_time_factor(config, device, args.infer_seconds)
    for key, value in results.items():
        print(f"{key:<34}{value:.4g}" if isinstance(value, float) else f"{key:<34}{value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
