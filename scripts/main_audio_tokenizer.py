"""Train an Audio BSQ-ViT tokenizer from a YAML config.

Your own audio folders, on a CPU (2.9 M parameters, minutes per few hundred steps) or one GPU (214 M)::

    python scripts/main_audio_tokenizer.py configs/tokenizer/audio_simple_cpu_b18.yaml --output-dir outputs/run \
        --train-dir my_audio/train --val-dir my_audio/val
    python scripts/main_audio_tokenizer.py configs/tokenizer/audio_simple_bsq_b18.yaml --output-dir outputs/run \
        --train-dir my_audio/train --val-dir my_audio/val

At start-up the run's memory (weights, optimizer, activations of a batch, loader workers) is estimated:
a run that cannot fit is refused naming a smaller config, one that would be very slow on a CPU is warned
about (``training.skip_resource_check=true`` skips the check).

Several GPUs (or several CPU processes with gloo)::

    torchrun --nproc_per_node=4 scripts/main_audio_tokenizer.py CONFIG --output-dir outputs/run

Running the same command again on the same output folder resumes from ``checkpoints/latest.pt``.
Overrides: ``training.max_steps=1000 optimizer.lr=2e-4``.

Exit codes: 0 done; 2 a bad config, data location or argument (one ``error:`` line on stderr, no run
folder is created for a bad data root or model config); 1 the run failed (the ``error:`` line is last
on stderr, after a traceback for unexpected errors); 128+N stopped by signal N after saving
``checkpoints/latest.pt`` (Ctrl-C once: stop after the current step; twice: abort at once, the last
checkpoint kept). On every exit the DataLoader workers are stopped and the process group is
destroyed, so a failing rank never lingers. Under torchrun a rank whose peer died stops waiting in a
collective after ``$TRANSCODER_DIST_TIMEOUT_S`` seconds (default 1800).
"""

import sys

from transcoder.training.cli import one_line, report, run  # noqa: F401 - one_line / report: the script's API


def main(argv: list[str] | None = None) -> int:
    return run(argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
