"""Write a release folder of a trained tokenizer: ``model.safetensors`` + ``config.json`` + model card (``README.md``).

    python scripts/export_tokenizer.py CKPT OUT_DIR [--weights ema|model] [--vocoder V] [--metrics metrics.json]
                                       [--onnx] [--name org/model] [--license mit] [--dataset ID ...]
                                       [--overwrite]

``--weights``: EMA (default when the checkpoint has them) or raw weights. ``--vocoder``: a vocoder checkpoint
(``scripts/train_vocoder.py``) shipped as ``vocoder.safetensors`` + ``vocoder_config.json``. ``--metrics``: an
evaluation's ``metrics.json`` (``scripts/evaluate_audio_tokenizer.py``), rendered in the model card. ``--onnx``:
also ``encoder.onnx`` and ``decoder.onnx`` (the ``onnx`` extra). Load the folder with
``transcoder.api.load_tokenizer(OUT_DIR)`` (``backend="onnx"`` for the ONNX graphs); upload it as a Hugging Face
model repository to load it by name. The folder is written beside OUT_DIR and renamed into place.

Exit status: 0 on success, 2 for a usage error, a checkpoint that cannot be exported or an existing OUT_DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transcoder.release.export import export_release
from transcoder.utils.checkpoint import CheckpointError
from transcoder.utils.targets import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="trainer checkpoint (best.pt)")
    parser.add_argument("out_dir", help="release folder to write")
    parser.add_argument("--weights", choices=["ema", "model"], default=None,
                        help="EMA or raw weights (default: EMA when the checkpoint has them)")
    parser.add_argument("--vocoder", default=None, help="vocoder checkpoint shipped with the tokenizer")
    parser.add_argument("--metrics", default=None, help="an evaluation's metrics.json, shown in the model card")
    parser.add_argument("--onnx", action="store_true", help="also write encoder.onnx and decoder.onnx")
    parser.add_argument("--name", default=None, help="model name in the card (default: the folder's name)")
    parser.add_argument("--license", default="mit", help="license id in the card's front matter (default: mit)")
    parser.add_argument("--dataset", action="append", default=None, dest="datasets",
                        help="training data named in the card, e.g. a Hub dataset id (repeatable; default: the "
                             "paths of the checkpoint's data.train / data.val)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = export_release(args.checkpoint, args.out_dir, weights=args.weights, vocoder=args.vocoder,
                             metrics=args.metrics, onnx=args.onnx, name=args.name, license_id=args.license,
                             datasets=args.datasets, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, CheckpointError, ConfigError, ValueError) as err:
        print(f"export_tokenizer: {err}", file=sys.stderr)
        return 2
    files = ", ".join(sorted(p.name for p in Path(out).iterdir()))
    print(f"wrote {out}: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
