"""Train an Audio BSQ-ViT tokenizer from a YAML config.

One process (GPU if present, else CPU)::

    python scripts/main_audio_tokenizer.py configs/tokenizer/audio_simple_bsq_b18.yaml --output-dir outputs/run

Several GPUs (or several CPU processes with gloo)::

    torchrun --nproc_per_node=4 scripts/main_audio_tokenizer.py CONFIG --output-dir outputs/run

Running the same command again on the same output folder resumes from ``checkpoints/latest.pt``.
Overrides: ``training.max_steps=1000 optimizer.lr=2e-4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transcoder.training.config import ConfigError, load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.distributed import cleanup_distributed, init_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (model / loss / data / optimizer / training)")
    parser.add_argument("--output-dir", required=True, help="run folder; an existing run there is resumed")
    parser.add_argument("--resume", default=None, help="resume from this checkpoint instead of OUTPUT_DIR's latest")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="save and stop at this step without changing the schedule (resume later)")
    parser.add_argument("--validate-only", action="store_true",
                        help="load the checkpoint (as when resuming), run validation on every rank, write "
                             "OUTPUT_DIR/validation_step_N.json and exit")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY.SUB=VALUE")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = init_distributed(args.device)
    try:
        trainer = Trainer(config, Path(args.output_dir), env, resume=args.resume)
        if args.validate_only:
            trainer.validate_to_file()
        else:
            trainer.fit(stop_at_step=args.stop_at_step)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
