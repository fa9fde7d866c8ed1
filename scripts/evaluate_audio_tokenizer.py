"""Evaluate a trained Audio BSQ-ViT checkpoint: spectrogram, codebook and audio metrics.

    python scripts/evaluate_audio_tokenizer.py CKPT.pt --output outputs/eval            # data.val of the checkpoint
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --audio-dir my_audio/test --output outputs/eval
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --data-config configs/tokenizer/x.yaml --max-batches 20

The data are cut into non-overlapping windows of the model's length (eval mode of the datasets, the
last window of a file zero-padded). Per window: mel MSE / MAE in dB and L1 in model space over the
unpadded frames; codebook usage over the token rows covering them. Audio metrics (PESQ-WB, STOI,
SI-SNR) compare Griffin-Lim renderings with the original waveform, for the reconstruction AND for the
input mel itself (the vocoder ceiling: what a perfect tokenizer would score with this vocoder). With
``--vocoder CKPT`` a neural vocoder (scripts/train_vocoder.py, same mel settings) is scored the same way,
side by side with Griffin-Lim.
Window ``i`` of the dataset is rendered alone with phase seed ``--seed + i``, so its scores do not
depend on --batch-size. Griffin-Lim's phase is random, so SI-SNR (phase-sensitive) is reported in
metrics.json but is not a meaningful quality measure here; PESQ and STOI are.

A window that fails to decode (truncated file, NaN samples) is left out of every metric and count
and listed under ``skipped_windows``; files whose header is unreadable are listed in ``skipped_files``.

The logic lives in :func:`transcoder.evaluation.evaluate.evaluate_tokenizer` (usable from Python);
this script parses the flags, loads the checkpoint and the dataset and prints the table.
metrics.json is strict JSON: NaN scores (e.g. PESQ of a silent window) are written as null.

Runs in ONE process (GPU when present); it does not use torchrun/DDP. Writes ``metrics.json``,
spectrogram PNGs and WAVs for the first ``--num-audio`` windows into ``--output``, and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset
from transcoder.evaluation.evaluate import dataset_spec, evaluate_tokenizer, format_table

__all__ = ["evaluate", "format_table", "main", "parse_args"]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Load the checkpoint and the dataset the flags name and run :func:`evaluate_tokenizer`."""
    tok = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema, batch_size=args.batch_size,
                         vocoder_kwargs={"n_iter": args.gl_iters}, vocoder=args.vocoder)
    spec = dataset_spec(tok.checkpoint_config, args.audio_dir, args.data_config, args.split)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    print(f"{tok!r}, weights={tok.weights}, single process; dataset {spec['target']} "
          f"({len(dataset)} windows of {tok.window_samples / tok.sample_rate:.2f} s)", flush=True)
    return evaluate_tokenizer(tok, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                              max_batches=args.max_batches, num_audio=args.num_audio,
                              audio_metrics=args.audio_metrics, seed=args.seed, metric_workers=args.metric_workers,
                              output_dir=args.output, dataset_spec=spec, quiet=args.quiet)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="trainer checkpoint (.pt)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--audio-dir", default=None, help="evaluate every audio file under this folder")
    source.add_argument("--data-config", default=None,
                        help="YAML: a full config (its data.<split> is used) or a {target, params} dataset spec")
    parser.add_argument("--split", default="val", choices=["val", "train"],
                        help="which data.<split> spec of the config to use (default: val)")
    parser.add_argument("--output", required=True, help="output folder (metrics.json, examples/)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    parser.add_argument("--num-audio", type=int, default=4, help="windows saved as PNG + WAV")
    parser.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                        help="use the EMA weights when the checkpoint has them (default: yes)")
    parser.add_argument("--audio-metrics", action=argparse.BooleanOptionalAction, default=True,
                        help="PESQ / STOI / SI-SNR of rendered audio (default: yes; --no-audio-metrics is much "
                             "faster; the --num-audio example windows are still rendered, --num-audio 0 renders none)")
    parser.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--vocoder", default=None, metavar="CKPT",
                        help="also render with this neural vocoder checkpoint (scripts/train_vocoder.py) and report "
                             "it beside Griffin-Lim, each with its true-mel ceiling")
    parser.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase seed")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding audio")
    parser.add_argument("--metric-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes computing PESQ / STOI (1 = in this process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("batch_size", "metric_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    if args.num_audio < 0:
        parser.error("--num-audio must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = evaluate(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # CheckpointError is a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"wrote {Path(args.output) / 'metrics.json'}")
    if args.num_audio:
        print(f"examples (spectrogram PNGs, input / reconstruction WAVs): {Path(args.output) / 'examples'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

