"""Train a neural vocoder (Vocos-style generator, MPD + MRD discriminators) on the tokenizer's log-mel.

    python scripts/train_vocoder.py configs/vocoder/vocoder_demo_librivox_mini.yaml \
        --output-dir outputs/vocoder_demo
    torchrun --nproc_per_node=4 scripts/train_vocoder.py configs/vocoder/vocoder_base_librispeech.yaml \
        --output-dir outputs/vocoder_base

The config's ``task`` must be ``vocoder``; a top-level ``tokenizer_checkpoint: PATH`` fine-tunes on that
tokenizer's reconstructions. Same trainer, flags, resume, overrides and exit codes as
scripts/main_audio_tokenizer.py (see transcoder/training/cli.py): 0 done, 2 bad config / data / argument,
1 the run failed, 128+N stopped by signal N after saving checkpoints/latest.pt.
"""

import sys

from transcoder.training.cli import run


def main(argv: list[str] | None = None) -> int:
    return run(argv, __doc__, task="vocoder")


if __name__ == "__main__":
    sys.exit(main())
