"""Rate–distortion benchmark: train a config for a fixed step count (or wall-clock budget), then score it.

    python scripts/benchmark_quality.py --preset cpu --train /work/corpus/train --val /work/corpus/val \\
        --steps 600 --variant shipped: --variant recipe:optimizer.lr=5e-4,optimizer.warmup_steps=50 \\
        --output outputs/quality

Each ``--variant NAME:KEY=VALUE,KEY=VALUE`` is a list of config overrides (values parsed as YAML, commas
inside brackets kept: ``optimizer.betas=[0.9,0.95]``) applied after the preset's. Every variant is trained
from scratch in one process with the one trainer, then evaluated with the library's
:func:`transcoder.evaluation.evaluate.evaluate_tokenizer` on the ``--val`` folder: log-mel MAE / MSE in dB
(full band, valid frames) and the distinct codes and entropy of the actual indices over every window; the
patch-boundary seam ratios (frequency / time; 1.0 = no seams, :mod:`transcoder.evaluation.seams`); PESQ-WB
and STOI through Griffin-Lim (or ``--vocoder CKPT``) on the first ``--audio-batches`` batches. With EMA
weights in the checkpoint both the raw and the EMA weights are scored (one row each). Prints one table row
per (variant, weights) and writes ``results.json`` and ``results.md`` into ``--output``; each variant's run
folder (config, log, checkpoint, example PNG/WAVs) is ``--output/NAME``.

Presets (model size and batch; the recipe itself comes from ``--config`` and the variants):

* ``cpu``: width 192, 3 + 3 layers, 16x16 patches, batch 8 (about 10 minutes for 600 steps of 256-frame crops
  on 2 cores, training and evaluation).
* ``gpu``: the standard model (width 768, 12 + 12 layers), batch 32, bf16, 8 minutes (480 s) of training time.
* ``tiny``: a smoke test (width 32, 1 + 1 layers).

Use a step budget (``--steps``) to compare variants on a shared machine, and the reported steps/s to derive
equal-wall-time comparisons; ``--budget-seconds`` trains each variant for that many seconds instead (with
``optimizer.schedule=budget`` the cosine ends at the budget; see transcoder/training/optim.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset
from transcoder.evaluation.evaluate import evaluate_tokenizer, write_metrics_json
from transcoder.evaluation.seams import seam_scores
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.distributed import init_distributed
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "tokenizer" / "audio_speech_short_b18.yaml"

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"overrides": ["model.params.audioconfig.width=192", "model.params.audioconfig.layers=3",
                          "model.params.audioconfig.heads=4", "model.params.audioconfig.patch_size=16",
                          "data.batch_size=8", "data.num_workers=1", "training.precision=fp32"],
            "steps": 600, "budget_seconds": None},
    "gpu": {"overrides": ["model.params.audioconfig.width=768", "model.params.audioconfig.layers=12",
                          "model.params.audioconfig.heads=12", "model.params.audioconfig.patch_size=16",
                          "data.batch_size=32", "data.num_workers=8", "training.precision=bf16"],
            "steps": None, "budget_seconds": 480.0},
    "tiny": {"overrides": ["model.params.audioconfig.width=32", "model.params.audioconfig.layers=1",
                           "model.params.audioconfig.heads=2", "model.params.audioconfig.mlp_ratio=2.0",
                           "data.batch_size=4", "data.num_workers=0", "training.precision=fp32"],
             "steps": 4, "budget_seconds": None},
}
#: Training settings the benchmark owns (validation and media happen in the evaluation, not in training).
RUN_OVERRIDES = ["data.val=null", "training.image_every=0", "training.log_every=50", "training.ckpt_every=1000000",
                 "training.latest_every=1000000"]


def split_overrides(text: str) -> list[str]:
    """``a=1,b=[1,2],c=x`` → ``["a=1", "b=[1,2]", "c=x"]`` (commas inside brackets or braces are kept)."""
    items, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE,...`` (or ``NAME`` / ``NAME:``, no overrides) → (name, overrides)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE with NAME made of letters, digits, "
                         "'-', '_' or '.'")
    overrides = split_overrides(rest)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--variant {text!r}: override {override!r} is not KEY=VALUE")
    return name, overrides


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and the core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores visible)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def load_scored_tokenizer(checkpoint: Path, device: str | None, use_ema: bool, vocoder: str | None) -> Any:
    """:func:`load_tokenizer` rendering through the neural vocoder checkpoint ``vocoder`` (Griffin-Lim if None)."""
    return load_tokenizer(checkpoint, device=device, use_ema=use_ema, vocoder=vocoder)


def score(checkpoint: Path, val_root: str, args: argparse.Namespace, use_ema: bool, out_dir: Path) -> dict[str, Any]:
    """Evaluate one set of weights: spectrogram and code metrics on every val window, audio metrics on the
    first ``args.audio_batches`` batches."""
    tok = load_scored_tokenizer(checkpoint, args.device, use_ema, args.vocoder)
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": val_root}}
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    full = evaluate_tokenizer(tok, dataset, batch_size=args.eval_batch_size, max_batches=args.eval_max_batches,
                              audio_metrics=False, dataset_spec=spec)
    result = {"weights": "ema" if use_ema else "raw", "loaded_weights": tok.weights, "windows": full["windows"],
              "spectrogram": full["spectrogram"],
              "codebook": {k: full["codebook"][k] for k in ("distinct_codes", "usage", "entropy_bits", "perplexity")},
              "rates": full["rates"], "seams": seam_scores(tok, dataset, args.eval_batch_size,
                                                                      min(8, args.eval_max_batches or 8))}
    if args.audio_batches > 0:
        audio = evaluate_tokenizer(tok, dataset, batch_size=args.eval_batch_size, max_batches=args.audio_batches,
                                   audio_metrics=True, num_audio=args.num_audio, output_dir=out_dir,
                                   dataset_spec=spec)
        result["audio"] = audio["audio"]
        result["audio_windows"] = audio["windows"]
        result["vocoder"] = audio["vocoder"]
    return result


def run_variant(name: str, overrides: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one variant and score its weights; one result dict per weights (raw, and EMA when kept)."""
    preset = PRESETS[args.preset]
    steps = args.steps if args.steps is not None else preset["steps"]
    budget = args.budget_seconds if args.budget_seconds is not None else preset["budget_seconds"]
    if args.steps is not None:
        budget = None
    if steps is None and budget is None:
        raise ValueError("give --steps or --budget-seconds")
    # A wall-clock budget ends the cosine at the budget (optimizer.schedule=budget; a variant may override it).
    limits = ([f"training.max_steps={steps}"] if budget is None else
              [f"training.max_steps={steps or 10**9}", f"training.budget_seconds={budget}",
               "optimizer.schedule=budget"])
    run_dir = Path(args.output) / name
    all_overrides = [*preset["overrides"], "data.train.target=transcoder.data.AudioFolderDataset",
                     f"data.train.params={{root: {args.train}}}", *RUN_OVERRIDES, *limits, *args.set, *overrides]
    config = load_config(args.config, all_overrides)
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, init_distributed(args.device))
    built = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - built
    steps_done = trainer.state.step
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    common = {"variant": name, "overrides": overrides, "preset": args.preset, "steps": steps_done,
              "train_seconds": train_seconds, "setup_seconds": built - started,
              "steps_per_second": steps_done / max(train_seconds, 1e-9),
              "device": device_name(trainer.device), "threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in trainer.model.parameters())}
    rows = []
    weights = [False, True] if config["training"]["ema_decay"] else [False]
    for use_ema in weights:
        label = "ema" if use_ema else "raw"
        eval_started = time.perf_counter()
        scored = score(checkpoint, args.val, args, use_ema, run_dir / f"eval_{label}")
        rows.append({**common, **scored, "eval_seconds": time.perf_counter() - eval_started})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per (variant, weights)."""
    head = ("| variant | weights | steps | train s | steps/s | MAE dB | MSE dB² | distinct codes | code entropy bits "
            "| bit/s | PESQ-WB | STOI | seams f/t |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        audio = row.get("audio", {}).get("recon", {})
        lines.append(
            f"| {row['variant']} | {row['weights']} | {row['steps']} | {row['train_seconds']:.0f} | "
            f"{row['steps_per_second']:.2f} | {row['spectrogram']['mae_db']:.3f} | "
            f"{row['spectrogram']['mse_db']:.2f} | "
            f"{row['codebook']['distinct_codes']} | {row['codebook']['entropy_bits']:.2f} | "
            f"{row['rates']['bitrate']:g} | {_fmt(audio.get('pesq'))} | {_fmt(audio.get('stoi'))} | "
            f"{row['seams']['freq']:.2f}/{row['seams']['time']:.2f} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="base training config (YAML)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model size and batch")
    parser.add_argument("--train", required=True, help="training audio folder (AudioFolderDataset layout)")
    parser.add_argument("--val", required=True, help="evaluation audio folder")
    parser.add_argument("--output", required=True, help="output folder (run folders, results.json, results.md)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE,KEY=VALUE (repeatable; default: one variant 'base' without overrides)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every variant")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the preset's)")
    limit.add_argument("--budget-seconds", type=float, default=None, help="training seconds per variant instead")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="windows per evaluation batch")
    parser.add_argument("--eval-max-batches", type=int, default=None, help="limit the spectrogram evaluation")
    parser.add_argument("--audio-batches", type=int, default=4, help="batches scored with PESQ / STOI (0: none)")
    parser.add_argument("--num-audio", type=int, default=2, help="example PNG + WAVs saved per weights")
    parser.add_argument("--vocoder", default=None, help="neural vocoder checkpoint for the audio metrics")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        parser.error("--budget-seconds must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        variants = [parse_variant(text) for text in args.variant] or [("base", [])]
        names = [name for name, _ in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        for name, overrides in variants:
            rows += run_variant(name, overrides, args)
            write_metrics_json(output / "results.json", {"command": sys.argv, "rows": rows})
            (output / "results.md").write_text(table(rows) + "\n")
    except (ConfigError, ValueError, FileNotFoundError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(rows))
    print(f"device: {rows[0]['device']}, {rows[0]['threads']} torch threads; wrote {output / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
