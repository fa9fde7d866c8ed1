"""Size and speed of the tokenizer beside the codecs people use: EnCodec, DAC and Mimi from ``transformers``.

    python scripts/benchmark_peers.py --output DIR [--threads 1] [--repeats 3] [--min-seconds 5]
                                      [--rows standard,cpu-preset,...] [--no-cuda]

Every row runs in its own process (``--threads`` intra-op threads, one inter-op thread) on the same 10.24 s of
speech (the bundled ``data/librivox-mini`` files, concatenated, resampled with soxr for 24 kHz codecs) and
reports: parameters, bit/s (from the codes it produced), encode and decode real-time factor (seconds of audio
per second of compute: 2.0 = twice as fast as real time; median of ``--repeats`` rounds after one warm-up, more
rounds for fast models until ``--min-seconds`` of timed work, default 5), and peak
resident memory: the process's (``ru_maxrss``, imports included) and the run's above the process after its
imports (the peak is reset after importing, through ``/proc/self/clear_refs``). The tokenizer's encode starts
from the waveform (log-mel front end included).

Rows: ``standard`` (``configs/base/tokenizer.yaml``: width 768, 12 + 12 layers, 900 bit/s), ``cpu-preset`` (the
quality benchmark's ``--preset cpu``: width 192, 3 + 3 layers), ``cpu-preset-onnx`` (the same weights through
``load_tokenizer(folder, backend="onnx")``), ``encodec`` (``EncodecConfig()``: 24 kHz, at 1.5 kbit/s),
``dac`` (``DacConfig`` with the published 16 kHz model's geometry: hop 320, 12 codebooks) and ``mimi``
(``MimiConfig()``, 8 codebooks). The tokenizer decodes to a mel spectrogram (audio rendering is not counted);
the peers decode to audio. Every model has random weights: speed and size do not depend on the weights'
values, so only those are compared here, never quality. With CUDA, the same rows run again on the GPU in
bf16 autocast (``--no-cuda`` to skip); without it the script says why they are missing.

Writes ``DIR/results.json`` (machine, load average before / after, versions, rows) and ``DIR/results.md``.
Needs the ``peers`` extra (``transformers``) for the peer rows and the ``onnx`` extra for the ONNX row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcoder.utils.files import write_atomic
from transcoder.utils.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "data" / "librivox-mini" / "LibriSpeech"
SECONDS = 10.24
ROWS = ["standard", "cpu-preset", "cpu-preset-onnx", "encodec", "dac", "mimi"]
STANDARD_CONFIG = REPO / "configs" / "tokenizer" / "audio_simple_bsq_b18.yaml"  # the base model, nothing changed
#: descript/dac_16khz: 16 kHz, 50 frames/s, 12 codebooks of 1024 (6 kbit/s); DacConfig() itself has hop 512.
DAC_16KHZ = {"sampling_rate": 16000, "hop_length": 320, "downsampling_ratios": [2, 4, 5, 8],
             "upsampling_ratios": [8, 5, 4, 2], "n_codebooks": 12, "codebook_size": 1024}
ENCODEC_KBPS = 1.5
MIN_SECONDS = 5.0  # default of --min-seconds
MAX_ROUNDS = 100
MIMI_CODEBOOKS = 8


@dataclass
class Runner:
    """One model under test: ``encode(wave (1, S) at sample_rate) -> codes``, ``decode(codes) -> output``."""

    name: str
    sample_rate: int
    params: int
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    bits_per_second: Callable[[Any, float], float]  # (codes, seconds) -> bit/s
    decodes_to: str
    note: str = ""


def speech(sample_rate: int, seconds: float = SECONDS) -> Any:
    """``seconds`` of the bundled speech at ``sample_rate``: float32 ``(S,)`` (files concatenated in name order)."""
    import numpy as np

    from transcoder.data.audio_io import load_audio, resample

    parts, total, need = [], 0, int(round(seconds * 16000))
    for path in sorted(SPEECH.rglob("*.flac")):
        parts.append(load_audio(str(path), 16000).numpy())
        total += parts[-1].shape[0]
        if total >= need:
            break
    wave = np.concatenate(parts)[:need]
    if wave.shape[0] < need:
        raise RuntimeError(f"{SPEECH} holds {wave.shape[0] / 16000:.2f} s of speech, {seconds} s needed")
    wave = wave if sample_rate == 16000 else resample(wave, 16000, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _ours(name: str, tok: Any, note: str) -> Runner:
    import torch

    model = tok.model
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0
    return Runner(name, tok.sample_rate, params, lambda w: tok.encode_wave(w[0]),
                  lambda codes: tok.decode_to_mel(codes), lambda codes, s: codes.numel() * tok.bits_per_token / s,
                  "mel", note)


def _standard(device: str) -> Runner:
    from transcoder.api import AudioTokenizer
    from transcoder.audio.mel import MelConfig
    from transcoder.models.build import build_model
    from transcoder.training.config import load_config

    config = load_config(STANDARD_CONFIG)
    mel = MelConfig.from_dict(config["data"], strict=False)
    tok = AudioTokenizer(build_model(config["model"], mel), mel, device=device, batch_size=1)
    return _ours("audio-bsq-vit standard", tok, "width 768, 12 + 12 layers, conv module")


def _release(folder: str, backend: str, device: str) -> Runner:
    from transcoder.api import load_tokenizer

    tok = load_tokenizer(folder, device=device, backend=backend, batch_size=1)
    name = "audio-bsq-vit CPU preset" + (" (ONNX Runtime)" if backend == "onnx" else "")
    runner = _ours(name, tok, "width 192, 3 + 3 layers")
    if backend == "onnx":  # the graphs hold the folder's weights: count the parameters of its model
        from transcoder.release.folder import load_release_model

        runner.params = sum(p.numel() for p in load_release_model(folder)[0].parameters())
    return runner


def _codes_rate(bits_per_code: float) -> Callable[[Any, float], float]:
    return lambda codes, seconds: codes.numel() * bits_per_code / seconds


def _encodec(device: str) -> Runner:
    from transformers import EncodecConfig, EncodecModel

    model = EncodecModel(EncodecConfig()).to(device).eval()
    config = model.config

    def encode(wave: Any) -> Any:
        out = model.encode(wave[:, None], bandwidth=ENCODEC_KBPS)
        return out.audio_codes, out.audio_scales

    return Runner("EnCodec 24 kHz, 1.5 kbit/s", config.sampling_rate, sum(p.numel() for p in model.parameters()),
                  encode, lambda codes: model.decode(codes[0], codes[1]).audio_values,
                  lambda codes, s: codes[0].numel() * math.log2(config.codebook_size) / s, "audio",
                  "EncodecConfig() defaults")


def _dac(device: str) -> Runner:
    from transformers import DacConfig, DacModel

    model = DacModel(DacConfig(**DAC_16KHZ)).to(device).eval()
    return Runner("DAC 16 kHz", model.config.sampling_rate, sum(p.numel() for p in model.parameters()),
                  lambda wave: model.encode(wave[:, None]).audio_codes,
                  lambda codes: model.decode(audio_codes=codes).audio_values,
                  _codes_rate(math.log2(model.config.codebook_size)), "audio",
                  "DacConfig with the 16 kHz model's hop 320 and 12 codebooks")


def _mimi(device: str) -> Runner:
    from transformers import MimiConfig, MimiModel

    model = MimiModel(MimiConfig()).to(device).eval()
    return Runner(f"Mimi, {MIMI_CODEBOOKS} codebooks", model.config.sampling_rate,
                  sum(p.numel() for p in model.parameters()),
                  lambda wave: model.encode(wave[:, None], num_quantizers=MIMI_CODEBOOKS).audio_codes,
                  lambda codes: model.decode(codes).audio_values,
                  _codes_rate(math.log2(model.config.codebook_size)), "audio", "MimiConfig() defaults")


def _status_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB from ``/proc/self/status`` (``None`` where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset this process's peak RSS to its current RSS (Linux: ``5`` to ``/proc/self/clear_refs``) and return
    the current RSS in KiB, or ``None`` where the peak cannot be reset (the "above imports" column is then empty)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def run_row(row: str, threads: int, repeats: int, device: str, folder: str | None,
            min_seconds: float = MIN_SECONDS) -> dict[str, Any]:
    """Build one row's model in this process and measure it (see the module doc); returns the row's results."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    if row in ("encodec", "dac", "mimi"):
        import transformers  # noqa: F401 - imported before the memory baseline, like transcoder for our rows
    import transcoder.api  # noqa: F401
    baseline_kib = reset_peak_rss()
    builders: dict[str, Callable[[], Runner]] = {
        "standard": lambda: _standard(device), "cpu-preset": lambda: _release(str(folder), "torch", device),
        "cpu-preset-onnx": lambda: _release(str(folder), "onnx", device), "encodec": lambda: _encodec(device),
        "dac": lambda: _dac(device), "mimi": lambda: _mimi(device)}
    torch.manual_seed(0)
    runner = builders[row]()
    wave = torch.from_numpy(speech(runner.sample_rate))[None].to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext())
    encode_times, decode_times = [], []
    with torch.inference_mode(), autocast:
        # the first round warms up; fast models run more rounds, until min_seconds of timed work
        while len(encode_times) <= repeats or (sum(encode_times[1:]) + sum(decode_times[1:]) < min_seconds
                                               and len(encode_times) <= MAX_ROUNDS):
            seconds, codes = _timed(lambda: runner.encode(wave), device)
            encode_times.append(seconds)
            seconds, _ = _timed(lambda c=codes: runner.decode(c), device)
            decode_times.append(seconds)
    audio_seconds = wave.shape[-1] / runner.sample_rate
    run_peak_kib = _status_kib("VmHWM") if baseline_kib is not None else None
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"row": row, "model": runner.name, "device": device, "precision": "bf16" if device == "cuda" else "fp32",
              "threads": threads, "sample_rate": runner.sample_rate, "audio_seconds": audio_seconds,
              "params": runner.params, "bits_per_second": runner.bits_per_second(codes, audio_seconds),
              "encode_seconds": statistics.median(encode_times[1:]),
              "decode_seconds": statistics.median(decode_times[1:]), "rounds": len(encode_times) - 1,
              "decodes_to": runner.decodes_to,
              "peak_rss_mib": peak_kib / 1024,
              "rss_above_imports_mib": None if run_peak_kib is None else (run_peak_kib - baseline_kib) / 1024,
              "note": runner.note}
    result["encode_rtf"] = audio_seconds / result["encode_seconds"]
    result["decode_rtf"] = audio_seconds / result["decode_seconds"]
    if device == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def export_cpu_preset(folder: Path) -> Path:
    """The quality benchmark's CPU-preset model (random weights, seed 0) as a release folder with ONNX graphs."""
    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    from benchmark_quality import DEFAULT_CONFIG, PRESETS

    from transcoder.audio.mel import MelConfig
    from transcoder.models.build import build_model
    from transcoder.release.export import export_release
    from transcoder.training.config import load_config

    config = load_config(DEFAULT_CONFIG, PRESETS["cpu"]["overrides"])
    mel = MelConfig.from_dict(config["data"], strict=False)
    torch.manual_seed(0)
    model = build_model(config["model"], mel)
    checkpoint = folder / "cpu-preset.pt"
    torch.save({"format": 2, "task": "tokenizer", "models": {"model": model.state_dict()}, "ema": {},
                "config": config, "mel": mel.to_dict(), "step": 0}, checkpoint)
    return export_release(checkpoint, folder / "cpu-preset", onnx=True)


def machine() -> dict[str, Any]:
    """CPU model, cores, load average, versions."""
    cpu = cpu_model()
    versions = {}
    for package in ("torch", "transformers", "onnxruntime", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | device | params (M) | bit/s | encode (x real time) | decode (x real time) | decodes to | "
             "peak RSS (MiB) | above imports (MiB) |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        above = r["rss_above_imports_mib"]
        lines.append(f"| {r['model']} | {r['device']} {r['precision']}, {r['threads']} thread(s) | "
                     f"{r['params'] / 1e6:.1f} | {r['bits_per_second']:,.0f} | {r['encode_rtf']:.2f} | "
                     f"{r['decode_rtf']:.2f} | {r['decodes_to']} | {r['peak_rss_mib']:,.0f} | "
                     f"{'n/a' if above is None else f'{above:,.0f}'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="folder for results.json and results.md")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every row (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (median; default 3)")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                        help=f"timed work per row at least: fast rows run more rounds (default {MIN_SECONDS:g})")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {ROWS}")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA bf16 rows even when a GPU is present")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one row, in this process
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows.split(",")) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; expected some of {ROWS}")
    if args.child is None and not args.output:
        parser.error("--output is required")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    return args


def _child_run(row: str, args: argparse.Namespace, device: str, folder: Path) -> dict[str, Any]:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, "--child", row, "--threads", threads, "--repeats", str(args.repeats),
               "--min-seconds", str(args.min_seconds), "--device", device, "--folder", str(folder)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"row": row, "device": device, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_row(args.child, args.threads, args.repeats, args.device, args.folder, args.min_seconds)))
        return 0
    import torch

    rows = args.rows.split(",")
    devices = ["cpu"]
    skipped = []
    if args.no_cuda:
        skipped.append("CUDA bf16 rows: skipped (--no-cuda)")
    elif not torch.cuda.is_available():
        skipped.append("CUDA bf16 rows: skipped (no CUDA device on this machine)")
    else:
        devices.append("cuda")
    for reason in skipped:
        print(reason, flush=True)
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_cpu_preset(Path(tmp)) if {"cpu-preset", "cpu-preset-onnx"} & set(rows) else Path(tmp)
        for device in devices:
            for row in rows:
                if row == "cpu-preset-onnx" and device == "cuda":
                    continue  # ONNX Runtime runs on the CPU here
                result = _child_run(row, args, device, folder)
                results.append(result)
                print(json.dumps(result), flush=True)
    load_after = os.getloadavg()
    measured = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "threads": args.threads,
              "repeats": args.repeats, "min_seconds": args.min_seconds, "audio_seconds": SECONDS,
              "load_average_before": list(load_before),
              "load_average_after": list(load_after), "skipped": skipped, "failed": failed, "rows": measured,
              "weights": "random for every model: size and speed only, never quality"}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(measured)
    write_atomic(out / "results.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    write_atomic(out / "results.md", lambda f: f.write((table + "\n").encode()))
    print(table)
    for row in failed:
        print(f"{row['row']} ({row['device']}) failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
