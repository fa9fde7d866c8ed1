#!/usr/bin/env python
"""Benchmark the data pipeline: decode+crop throughput per worker, shards vs folders, listing, the log-mel front end.

Decoding: clips/s that one DataLoader worker (one process, one core) delivers from an
``AudioFolderDataset`` in train mode (random crops), per format and source sample rate, and from
the same files written into tar shards and read by ``ShardStreamDataset`` (sequential reads).
Listing: seconds to list a tree of ``--list-files`` files (``AudioFolderDataset``'s scan) against
loading a shard manifest of as many records (what every rank does at start-up).
Front end: ms per clip of ``LogMelFrontend`` on CPU (and CUDA when available) against
``librosa.feature.melspectrogram`` + dB on the same clips (and torchaudio's MelSpectrogram).

By default test files are written to a temporary folder from the bundled LibriSpeech speech
(data/librivox-mini), tiled to ``--file-seconds``; ``--folder`` benchmarks your own files instead.

    python scripts/benchmark_data.py                 # prints each figure as it is measured
    python scripts/benchmark_data.py --folder my_audio/train --clip-seconds 10.24
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from transcoder.data import (
    AudioFolderDataset,
    AudioSkipWarning,
    LogMelFrontend,
    MelConfig,
    ShardStreamDataset,
    collate_audio,
    resample,
    write_dataset_shards,
)
from transcoder.data.shard_format import MANIFEST_FORMAT, MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]
DEFAULT_THREADS = torch.get_num_threads()
BUNDLED = REPO / "data" / "librivox-mini" / "LibriSpeech" / "dev-clean"


def bundled_speech(seconds: float, sr: int = 16000) -> np.ndarray:
    """The bundled utterances concatenated and tiled to ``seconds`` (a synthetic signal if absent)."""
    files = sorted(glob.glob(str(BUNDLED / "**" / "*.flac"), recursive=True))
    if files:
        speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in files])
    else:
        warnings.warn(f"no bundled speech under {BUNDLED}; using a synthetic signal", stacklevel=2)
        t = np.arange(sr * 5) / sr
        speech = (0.1 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return np.resize(speech, int(seconds * sr))


def write_test_files(folder: str, n_files: int, seconds: float) -> dict[str, str]:
    """Write ``n_files`` files per case (format, rate) into subfolders; returns case -> folder."""
    speech = bundled_speech(seconds)
    cases = {"FLAC 16 kHz": ("flac", 16000, {}), "MP3 16 kHz": ("mp3", 16000, {"format": "MP3"}),
             "FLAC 44.1 kHz": ("flac", 44100, {}), "MP3 44.1 kHz": ("mp3", 44100, {"format": "MP3"}),
             "WAV 16 kHz": ("wav", 16000, {})}
    out = {}
    for name, (ext, sr, kwargs) in cases.items():
        sub = os.path.join(folder, name.replace(" ", "_").replace(".", ""))
        os.makedirs(sub)
        audio = speech if sr == 16000 else resample(speech, 16000, sr)
        for i in range(n_files):
            sf.write(os.path.join(sub, f"{i:03d}.{ext}"), np.roll(audio, i * 997), sr, **kwargs)
        out[name] = sub
    return out


def time_loop(fn: Callable[[int], object], budget_s: float, min_iters: int = 3) -> tuple[float, int]:
    """Call ``fn(i)`` for ``i = 0, 1, ...`` until ``budget_s`` passed (at least ``min_iters``); s/call."""
    fn(0)  # warm-up
    start, i = time.perf_counter(), 0
    while i < min_iters or time.perf_counter() - start < budget_s:
        fn(i)
        i += 1
    return (time.perf_counter() - start) / i, i


@contextlib.contextmanager
def quiet_decoder_stderr() -> Iterator[None]:
    """Silence C-level stderr (libmpg123 prints "part2_3_length ... too large" for every MP3 frame whose bit
    reservoir lies before a seek point; the samples are still right) while decoding."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def bench_decode(folders: dict[str, str], clip_samples: int, budget_s: float,
                 shard_root: str | None = None) -> list[tuple[str, str, str]]:
    """Rows per source: folder reading (random file + seek + crop) and, with ``shard_root``, the same files read
    from shards (sequential, one consumer with a small shuffle buffer)."""
    rows = []
    clip_seconds = clip_samples / 16000
    for name, folder in folders.items():
        ds = AudioFolderDataset(folder, sample_rate=16000, clip_samples=clip_samples)
        with quiet_decoder_stderr():
            per_clip, n = time_loop(lambda i, ds=ds: ds[(i % len(ds), i)], budget_s)
        rows.append((f"{name}, folder", f"{1 / per_clip:8.1f}", f"{clip_seconds / per_clip:8.0f}x ({n} clips)"))
        if ds.num_skipped:
            rows[-1] = (name, "n/a", f"{ds.num_skipped} files failed: {ds.skipped_files[:2]}")
        if shard_root is None:
            continue
        out = os.path.join(shard_root, os.path.basename(folder))
        write_dataset_shards(ds, out, max_records=max(1, ds.num_files // 2))
        stream = ShardStreamDataset(out, sample_rate=16000, clip_samples=clip_samples, shuffle_buffer=2,
                                    rank=0, world_size=1).stream()
        with quiet_decoder_stderr():
            per_clip, n = time_loop(lambda i, stream=stream: next(stream), budget_s)
        rows.append((f"{name}, shards", f"{1 / per_clip:8.1f}", f"{clip_seconds / per_clip:8.0f}x ({n} clips)"))
    return rows


def bench_listing(folder: str, n_files: int) -> list[tuple[str, str, str]]:
    """Seconds to list ``n_files`` files in 100 folders against loading a manifest of as many records."""
    per_dir = max(1, n_files // 100)
    for i in range(n_files):
        sub = os.path.join(folder, "tree", f"spk{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(sub, exist_ok=True)
        open(os.path.join(sub, f"utt{i:07d}.flac"), "wb").close()  # listing never opens files
    start = time.perf_counter()
    listed = AudioFolderDataset(os.path.join(folder, "tree")).num_files
    scan = time.perf_counter() - start
    shards = [{"name": f"shard-{i:06d}.tar", "records": 1000, "seconds": 1e4, "bytes": 1 << 28}
              for i in range(-(-n_files // 1000))]
    manifest = os.path.join(folder, "manifest")
    os.makedirs(manifest)
    with open(os.path.join(manifest, MANIFEST_NAME), "w") as handle:
        json.dump({"format": MANIFEST_FORMAT, "shards": shards}, handle)
    start = time.perf_counter()
    records = ShardStreamDataset(manifest, rank=0, world_size=1).num_files
    load = time.perf_counter() - start
    return [(f"AudioFolderDataset scan, {listed} files in 100 folders", f"{scan * 1e3:9.1f}", "per rank, at start"),
            (f"shard manifest, {records} records in {len(shards)} shards", f"{load * 1e3:9.1f}",
             f"{scan / max(load, 1e-9):.0f}x faster")]


def bench_frontend(waves: torch.Tensor, cfg: MelConfig, budget_s: float) -> list[tuple[str, str, str]]:
    import librosa
    import torchaudio

    rows = []
    batch = waves.shape[0]
    frontend = LogMelFrontend(cfg)
    for threads in sorted({1, DEFAULT_THREADS}):
        torch.set_num_threads(threads)
        per_batch, n = time_loop(lambda i: frontend(waves), budget_s)
        rows.append((f"LogMelFrontend CPU, {threads} thread(s), batch {batch}", f"{per_batch / batch * 1e3:8.2f}",
                     f"{n} batches"))
    torch.set_num_threads(1)
    ta = torchaudio.transforms.MelSpectrogram(cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                              n_mels=cfg.n_mels, power=2.0)
    per_batch, n = time_loop(lambda i: ta(waves), budget_s)
    rows.append((f"torchaudio MelSpectrogram CPU, 1 thread, batch {batch}", f"{per_batch / batch * 1e3:8.2f}",
                 f"{n} batches (power mel only, no dB)"))
    np_waves = waves.numpy()

    def librosa_clip(i: int) -> np.ndarray:
        mel = librosa.feature.melspectrogram(y=np_waves[i % batch], sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                             hop_length=cfg.hop_length, n_mels=cfg.n_mels, norm=None,
                                             pad_mode="constant")
        return librosa.power_to_db(mel, ref=frontend.ref_power, top_db=None)

    per_clip, n = time_loop(librosa_clip, budget_s)
    rows.append(("librosa melspectrogram + power_to_db, 1 thread", f"{per_clip * 1e3:8.2f}", f"{n} clips"))
    torch.set_num_threads(DEFAULT_THREADS)
    if torch.cuda.is_available():
        gpu = frontend.to("cuda")
        for gpu_batch in (batch, 256):
            w = waves.repeat((gpu_batch + batch - 1) // batch, 1)[:gpu_batch].cuda()

            def run(i: int, w: torch.Tensor = w) -> None:
                gpu(w)
                torch.cuda.synchronize()

            per_batch, n = time_loop(run, budget_s, min_iters=10)
            rows.append((f"LogMelFrontend {torch.cuda.get_device_name()}, batch {gpu_batch}",
                         f"{per_batch / gpu_batch * 1e3:8.4f}", f"{per_batch * 1e3:.2f} ms per batch"))
    else:
        rows.append(("LogMelFrontend CUDA", "n/a", "no CUDA device"))
    return rows


def print_table(title: str, header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(3)]
    print(f"\n{title}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="benchmark decoding of the audio files in this folder instead")
    parser.add_argument("--clip-seconds", type=float, default=10.24, help="crop length (default 10.24 s)")
    parser.add_argument("--file-seconds", type=float, default=30.0, help="length of generated files")
    parser.add_argument("--files", type=int, default=4, help="generated files per format")
    parser.add_argument("--batch", type=int, default=16, help="clips per front-end batch on CPU")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--list-files", type=int, default=20000, help="files in the listing benchmark's tree")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.file_seconds, args.files, args.batch, args.budget, args.clip_seconds = 6.0, 2, 2, 0.05, 2.56
        args.list_files = 1000

    cfg = MelConfig()
    clip_samples = cfg.num_samples(cfg.num_frames(round(args.clip_seconds * cfg.sample_rate)))
    torch.set_num_threads(1)  # one DataLoader worker = one core
    warnings.simplefilter("ignore", AudioSkipWarning)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {args.folder: args.folder} if args.folder else write_test_files(tmp, args.files, args.file_seconds)
        decode_rows = bench_decode(folders, clip_samples, args.budget, shard_root=os.path.join(tmp, "shards"))
        listing_rows = bench_listing(os.path.join(tmp, "listing"), args.list_files)
        first = AudioFolderDataset(next(iter(folders.values())), clip_samples=clip_samples)
        waves = collate_audio([first[(i % len(first), i)] for i in range(args.batch)])["audio"]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU core(s), clips of {clip_samples} samples "
          f"({clip_samples / cfg.sample_rate:.2f} s at 16 kHz) -> {cfg.num_frames(clip_samples)} x {cfg.n_mels} mel")
    print_table("Decode + random crop + resample to 16 kHz, one worker process",
                ("source", "clips/s", "x real time"), decode_rows)
    print_table("Listing the training data", ("what", "ms", "notes"), listing_rows)
    print_table(f"Log-mel front end (n_fft {cfg.n_fft}, hop {cfg.hop_length}, {cfg.n_mels} mels)",
                ("implementation", "ms/clip", "notes"), bench_frontend(waves, cfg, args.budget))


if __name__ == "__main__":
    main()
