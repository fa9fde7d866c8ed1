"""Encode throughput of the tokenize CLI's corpus path vs a whole-file-per-call path, on CPU.

For each tokenizer config (random weights: speed does not depend on them) and each CPU thread count,
encodes the same synthetic speech-like corpus two ways, each in a fresh process (so peak RSS is that
path's own):

* ``corpus``: :func:`transcoder.encode_corpus.encode_corpus`, what ``scripts/tokenize_audio.py encode``
  runs (files streamed window by window, windows of many files batched, packed output written);
* ``per_file``: the earlier CLI's path, each file decoded whole (``load_audio``) and encoded by
  ``AudioTokenizer.encode_waves``, one file per call.

Reports the real-time factor (wall seconds per audio second; below 1 is faster than real time), the
speed-up over real time and the peak resident memory, as a table and as JSON::

    python scripts/benchmark_tokenize.py --configs configs/tokenizer/audio_demo_librivox_mini.yaml \\
        configs/tokenizer/audio_librispeech_bsq_b18.yaml --threads 1 2 --output results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _speechlike(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 50 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 1.7 * t))
    return (0.3 * voiced * envelope + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


def make_checkpoint(config_path: str, out: Path) -> Path:
    """A checkpoint of ``config_path``'s model with random weights."""
    import torch

    from transcoder.audio.mel import MelConfig
    from transcoder.models.build import build_model
    from transcoder.training.config import load_config

    config = load_config(config_path)
    mel = MelConfig.from_dict(config["data"], strict=False)
    torch.manual_seed(0)
    model = build_model(config["model"], mel)
    torch.save({"model": model.state_dict(), "config": config, "mel": mel.to_dict(), "step": 0}, out)
    return out


def make_corpus(folder: Path, files: int, seconds: float, sample_rate: int) -> float:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for i in range(files):
        length = seconds * (0.5 + i / max(1, files - 1))  # mixed lengths around `seconds`
        sf.write(folder / f"utt{i:03d}.flac", _speechlike(length, sample_rate, i), sample_rate)
        total += length
    return total


def run_one(mode: str, checkpoint: str, corpus: str, threads: int, batch_size: int) -> dict[str, Any]:
    """One measurement in this process (called in a child process by :func:`main`)."""
    import torch

    torch.set_num_threads(threads)
    from transcoder.api import load_tokenizer
    from transcoder.data.audio_io import load_audio
    from transcoder.data.corpus import open_corpus
    from transcoder.encode_corpus import encode_corpus

    tok = load_tokenizer(checkpoint, device="cpu", batch_size=batch_size)
    tok.encode_wave(np.zeros(tok.window_samples, dtype=np.float32))  # warm-up
    files = sorted(Path(corpus).glob("*.flac"))
    start = time.perf_counter()
    if mode == "corpus":
        with tempfile.TemporaryDirectory() as out:
            summary = encode_corpus(tok, open_corpus(corpus), out, layout="packed", num_workers=0, progress=False)
        seconds = summary.seconds
    else:
        seconds = 0.0
        for path in files:
            encoded = tok.encode_waves([load_audio(str(path), tok.sample_rate)])[0]
            seconds += encoded.num_samples / tok.sample_rate
    elapsed = time.perf_counter() - start
    return {"mode": mode, "threads": threads, "audio_seconds": round(seconds, 3), "elapsed": round(elapsed, 3),
            "rtf": round(elapsed / seconds, 5), "x_real_time": round(seconds / elapsed, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/tokenizer/audio_demo_librivox_mini.yaml",
                                                         "configs/tokenizer/audio_librispeech_bsq_b18.yaml"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["corpus", "per_file"], choices=["corpus", "per_file"])
    parser.add_argument("--files", type=int, default=6, help="files in the synthetic corpus")
    parser.add_argument("--seconds", type=float, default=20.0, help="mean file length")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--one", nargs=4, metavar=("MODE", "CKPT", "CORPUS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        mode, ckpt, corpus, threads = args.one
        print(json.dumps(run_one(mode, ckpt, corpus, int(threads), args.batch_size)))
        return 0
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                               "files": args.files, "mean_seconds": args.seconds, "batch_size": args.batch_size,
                               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            ckpt = make_checkpoint(config, Path(tmp) / f"{Path(config).stem}.pt")
            import torch

            sample_rate = int(torch.load(ckpt, weights_only=True)["mel"]["sample_rate"])
            corpus = Path(tmp) / f"corpus-{sample_rate}"
            if not corpus.exists():
                results["audio_seconds"] = round(make_corpus(corpus, args.files, args.seconds, sample_rate), 3)
            for threads in args.threads:
                for mode in args.modes:
                    child = subprocess.run([sys.executable, __file__, "--one", mode, str(ckpt), str(corpus),
                                            str(threads), "--batch-size", str(args.batch_size)],
                                           capture_output=True, text=True, check=False)
                    if child.returncode != 0:
                        print(child.stderr, file=sys.stderr)
                        return 1
                    run = {"config": config, **json.loads(child.stdout.strip().splitlines()[-1])}
                    results["runs"].append(run)
                    print(f"{Path(config).stem:36s} threads={threads} {mode:8s} RTF {run['rtf']:.4f} "
                          f"({run['x_real_time']:.1f}x real time)  peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
