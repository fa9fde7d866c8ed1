"""Training-step speed of configs side by side, interleaved in rounds so a shared machine's load hits every
config alike (e.g. the tokenizer vs MAE pre-training with the encoder's conv module zero-filled or skipped).

    OMP_NUM_THREADS=1 python scripts/bench_mae_speed.py \\
        tok=configs/tokenizer/audio_demo_librivox_mini.yaml \\
        mae_zero=configs/pretrain/mae_demo_librivox_mini.yaml \\
        "mae_skip=configs/pretrain/mae_demo_librivox_mini.yaml|model.params.encoder_conv=skip" \\
        --rounds 5 --steps 10

Each NAME=CONFIG[|override|...] gets the trainer's own step (:func:`transcoder.training.step.train_step`)
on a synthetic batch of the config's shape (noise waveforms; the front end runs as in training). Prints the
median steps/s per config over the rounds and the ratios to the first, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from transcoder.audio import MelConfig
from transcoder.tasks import build_task
from transcoder.training.config import load_config
from transcoder.training.state import TrainState
from transcoder.training.step import StepState, build_parts, train_step


def build(spec: str) -> tuple[StepState, object, dict]:
    """``CONFIG[|override|...]`` → (step state, task, one synthetic batch)."""
    path, *overrides = spec.split("|")
    config = load_config(path, overrides)
    mel = MelConfig.from_dict(config["data"], strict=False)
    device = torch.device("cpu")
    task = build_task(config, mel, device)
    parts = build_parts(task, config, device, torch.float32)
    state = StepState(parts=parts, counters=TrainState(), precision=torch.float32, device=device)
    batch = {"audio": torch.randn(int(config["data"]["batch_size"]), mel.clip_samples) * 0.1}
    return state, task, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="NAME=CONFIG[|override|...]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per config per round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = {}
    for item in args.configs:
        name, _, spec = item.partition("=")
        runs[name] = build(spec)
    for state, task, batch in runs.values():
        for _ in range(args.warmup):
            train_step(state, task, batch, 10)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (state, task, batch) in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(state, task, batch, 10)
            rates[name].append(args.steps / (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    first = next(iter(medians.values()))
    print(json.dumps({"threads": torch.get_num_threads(), "steps_per_round": args.steps, "rounds": args.rounds,
                      "median_steps_per_s": medians, "ratio_to_first": {k: v / first for k, v in medians.items()},
                      "all_steps_per_s": rates}, indent=2))


if __name__ == "__main__":
    main()
