"""Evaluate a trained Audio BSQ-ViT checkpoint: spectrogram, codebook and audio metrics.

    python scripts/evaluate_audio_tokenizer.py CKPT.pt --output outputs/eval            # data.val of the checkpoint
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --audio-dir my_audio/test --output outputs/eval
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --data-config configs/tokenizer/x.yaml --max-batches 20

The data are cut into non-overlapping windows of the model's length (eval mode of the datasets, the
last window of a file zero-padded). Per window: mel MSE / MAE in dB and L1 in model space over the
unpadded frames; codebook usage over the token rows covering them. Audio metrics (PESQ-WB, STOI,
SI-SNR) compare Griffin-Lim renderings with the original waveform, for the reconstruction AND for the
input mel itself (the vocoder ceiling: what a perfect tokenizer would score with this vocoder).
Window ``i`` of the dataset is rendered alone with phase seed ``--seed + i``, so its scores do not
depend on --batch-size. Griffin-Lim's phase is random, so SI-SNR (phase-sensitive) is reported in
metrics.json but is not a meaningful quality measure here; PESQ and STOI are.

A window that fails to decode (truncated file, NaN samples) is left out of every metric and count
and listed under ``skipped_windows``; files whose header is unreadable are listed in ``skipped_files``.

Runs in ONE process (GPU when present); it does not use torchrun/DDP. Writes ``metrics.json``,
spectrogram PNGs and WAVs for the first ``--num-audio`` windows into ``--output``, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.data import build_dataset, collate_audio
from transcoder.evaluation.metrics import (
    CodebookUsage,
    mel_l1,
    si_snr,
    spectrogram_mae_db,
    spectrogram_mse_db,
    speech_quality,
)


def _dataset_spec(args: argparse.Namespace, checkpoint_config: dict[str, Any]) -> dict[str, Any]:
    """The eval dataset ``{target, params}``: --audio-dir, --data-config, or the checkpoint's data.val."""
    if args.audio_dir is not None:
        return {"target": "transcoder.data.AudioFolderDataset", "params": {"root": args.audio_dir}}
    if args.data_config is not None:
        path = Path(args.data_config)
        if not path.is_file():
            raise FileNotFoundError(f"--data-config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if isinstance(raw, dict) and "target" in raw:
            return raw  # a bare dataset spec
        spec = (raw.get("data") or {}).get(args.split) if isinstance(raw, dict) else None
        if not spec:
            raise ValueError(f"{path}: no data.{args.split} dataset spec (expected a full config or "
                             f"{{target: ..., params: ...}})")
        return spec
    spec = (checkpoint_config.get("data") or {}).get(args.split)
    if not spec:
        raise ValueError(f"the checkpoint's config has no data.{args.split}; pass --audio-dir or --data-config")
    return spec


class _Mean:
    """Running mean that ignores NaN (PESQ/STOI of silent windows)."""

    def __init__(self) -> None:
        self.total, self.count, self.skipped = 0.0, 0, 0

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.total += value
            self.count += 1
        else:
            self.skipped += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _save_examples(out_dir: Path, index: int, tok: AudioTokenizer, item: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    name = f"{index:03d}_{Path(item['path']).stem}_{item['offset']}"
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True, constrained_layout=True)
    db_min, db_max = tok.mel_config.db_min, tok.mel_config.db_max
    panels = [(item["input_db"], "input (dB)", "magma", db_min, db_max),
              (item["recon_db"], "reconstruction (dB)", "magma", db_min, db_max),
              (item["recon_db"] - item["input_db"], "reconstruction - input (dB)", "coolwarm", -20, 20)]
    for ax, (data, title, cmap, lo, hi) in zip(axes, panels, strict=True):
        image = ax.imshow(data.T, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                          extent=(0, data.shape[0] * tok.hop_length / tok.sample_rate, 0, data.shape[1]))
        ax.set_title(title)
        ax.set_ylabel("mel bin")
        fig.colorbar(image, ax=ax)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{item['path']} @ {item['offset'] / tok.sample_rate:.2f} s")
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    plt.close(fig)
    for suffix in ("original", "gl_input", "gl_reconstruction"):
        sf.write(str(out_dir / f"{name}_{suffix}.wav"), item[suffix], tok.sample_rate, subtype="PCM_16")


def _render(tok: AudioTokenizer, mel: Tensor, recon: Tensor, seeds: list[int], length: int) -> tuple[Tensor, Tensor]:
    """Griffin-Lim of the input and reconstructed model-space mels ``(B, T, F)``, window ``b`` rendered
    on its own with phase seed ``seeds[b]`` (a batched call would draw one random phase for the whole
    batch, making a window's audio depend on the batch size and its position in the batch).

    Returns:
        ``(gl_input, gl_recon)``, each ``(B, length)`` float32 on the CPU.
    """
    power_in, power_recon = tok.frontend.inverse(mel), tok.frontend.inverse(recon)
    gl_input = torch.stack([tok.vocoder(power_in[b:b + 1], length=length, seed=seed)[0].cpu()
                            for b, seed in enumerate(seeds)])
    gl_recon = torch.stack([tok.vocoder(power_recon[b:b + 1], length=length, seed=seed)[0].cpu()
                            for b, seed in enumerate(seeds)])
    return gl_input, gl_recon


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    tok = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema, batch_size=args.batch_size,
                         vocoder_kwargs={"n_iter": args.gl_iters})
    spec = _dataset_spec(args, tok.checkpoint_config)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                        collate_fn=collate_audio)
    out_dir = Path(args.output)
    (out_dir / "examples").mkdir(parents=True, exist_ok=True)
    print(f"{tok!r}, weights={tok.weights}, single process; dataset {spec['target']} "
          f"({len(dataset)} windows of {tok.window_samples / tok.sample_rate:.2f} s)", flush=True)

    pt = tok.patch_size[0]
    usage = CodebookUsage(tok.bits_per_token)
    se = ae = l1 = 0.0
    frames_total = 0
    quant_loss_sum = 0.0
    audio = {key: _Mean() for key in ("recon_pesq", "recon_stoi", "recon_si_snr",
                                      "ceiling_pesq", "ceiling_stoi", "ceiling_si_snr")}
    per_clip: list[dict[str, Any]] = []
    files: set[str] = set()
    skipped: list[str] = []
    skipped_windows: list[dict[str, Any]] = []
    saved = 0
    next_index = 0  # dataset index of the batch's first window (the loader does not shuffle)
    # spawn, not fork: a forked child of a process that has run torch's OpenMP pool can hang.
    pool = (ProcessPoolExecutor(args.metric_workers, mp_context=multiprocessing.get_context("spawn"))
            if args.metric_workers > 1 and args.audio_metrics else None)
    started = time.perf_counter()
    total_batches = len(loader) if args.max_batches is None else min(len(loader), args.max_batches)
    try:
        for batch_index, batch in enumerate(tqdm(loader, total=total_batches, unit="batch", disable=args.quiet)):
            if args.max_batches is not None and batch_index >= args.max_batches:
                break
            skipped.extend(batch["skipped"])
            # Windows that failed to decode (num_valid == 0) are zeros: keep them out of every metric.
            indices = range(next_index, next_index + len(batch["path"]))
            next_index += len(batch["path"])
            keep = [b for b, n in enumerate(batch["num_valid"].tolist()) if n > 0]
            skipped_windows += [{"index": indices[b], "path": batch["path"][b], "offset": int(batch["offset"][b])}
                                for b in sorted(set(range(len(indices))) - set(keep))]
            if not keep:
                continue
            window_index = [indices[b] for b in keep]
            paths = [batch["path"][b] for b in keep]
            offsets = [int(batch["offset"][b]) for b in keep]
            valid_samples = [int(batch["num_valid"][b]) for b in keep]
            ref = batch["audio"][keep]  # (B', S) on the CPU
            wave = ref.to(tok.device)
            with torch.inference_mode():
                mel = tok.frontend(wave)  # (B', T, F) model space
                recon, quant_loss, info = tok.model(mel)
                recon = recon.float()
                input_db, recon_db = tok.frontend.model_to_db(mel), tok.frontend.model_to_db(recon)
            quant_loss_sum += float(quant_loss) * mel.shape[0]
            first_clip = len(per_clip)
            for b, n_valid in enumerate(valid_samples):
                frames = min(mel.shape[1], -(-n_valid // tok.hop_length))
                rows = -(-frames // pt)
                usage.update(info["indices"][b, :rows])
                mse = spectrogram_mse_db(recon_db[b:b + 1, :frames], input_db[b:b + 1, :frames]).item()
                mae = spectrogram_mae_db(recon_db[b:b + 1, :frames], input_db[b:b + 1, :frames]).item()
                err_l1 = mel_l1(recon[b:b + 1, :frames], mel[b:b + 1, :frames]).item()
                se, ae, l1 = se + mse * frames, ae + mae * frames, l1 + err_l1 * frames
                frames_total += frames
                files.add(paths[b])
                per_clip.append({"index": window_index[b], "path": paths[b], "offset": offsets[b],
                                 "seconds": n_valid / tok.sample_rate, "mse_db": mse, "mae_db": mae, "l1": err_l1})
            if not (args.audio_metrics or saved < args.num_audio):
                continue
            with torch.inference_mode():
                gl_input, gl_recon = _render(tok, mel, recon, [args.seed + i for i in window_index], ref.shape[-1])
            jobs = []
            for b, n_valid in enumerate(valid_samples):
                r, c, g = ref[b, :n_valid], gl_input[b, :n_valid], gl_recon[b, :n_valid]
                clip = per_clip[first_clip + b]
                if args.audio_metrics:
                    snr_r, snr_c = si_snr(g, r).item(), si_snr(c, r).item()
                    audio["recon_si_snr"].add(snr_r)
                    audio["ceiling_si_snr"].add(snr_c)
                    clip.update(si_snr=snr_r, ceiling_si_snr=snr_c)
                    jobs += [(r.numpy(), g.numpy()), (r.numpy(), c.numpy())]
                if saved < args.num_audio:
                    _save_examples(out_dir / "examples", saved, tok, {
                        "path": paths[b], "offset": offsets[b],
                        "input_db": input_db[b].cpu().numpy(), "recon_db": recon_db[b].cpu().numpy(),
                        "original": r.numpy(), "gl_input": c.numpy(), "gl_reconstruction": g.numpy()})
                    saved += 1
            refs, ests = [j[0] for j in jobs], [j[1] for j in jobs]
            rates = [tok.sample_rate] * len(jobs)
            flat = list(pool.map(speech_quality, refs, ests, rates) if pool else map(speech_quality, refs, ests, rates))
            scores = [(*flat[i], *flat[i + 1]) for i in range(0, len(flat), 2)]
            for b, (p_r, s_r, p_c, s_c) in enumerate(scores):
                for key, value in (("recon_pesq", p_r), ("recon_stoi", s_r), ("ceiling_pesq", p_c),
                                   ("ceiling_stoi", s_c)):
                    audio[key].add(value)
                per_clip[first_clip + b].update(pesq=p_r, stoi=s_r, ceiling_pesq=p_c, ceiling_stoi=s_c)
    finally:
        if pool is not None:
            pool.shutdown()

    windows = len(per_clip)
    if windows == 0:
        raise RuntimeError(f"no windows were evaluated ({len(skipped_windows)} failed to decode, e.g. "
                           f"{skipped_windows[:3]}; skipped files: {sorted(set(skipped))[:3]})")
    stats = usage.compute()
    results: dict[str, Any] = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_sha256": tok.checkpoint_sha256,
        "step": tok.checkpoint_step,
        "weights": tok.weights,
        "device": str(tok.device),
        "processes": 1,
        "dataset": spec,
        "windows": windows,
        "files": len(files),
        # Header failures are found by the main process while counting windows; decode failures in
        # the workers reach it through the batches.
        "skipped_files": sorted(set(skipped) | set(dataset.skipped_files)),
        "num_skipped_windows": len(skipped_windows),
        "skipped_windows": skipped_windows,
        "audio_seconds": sum(c["seconds"] for c in per_clip),
        "elapsed_seconds": time.perf_counter() - started,
        "rates": {"tokens_per_second": tok.tokens_per_second, "bits_per_token": tok.bits_per_token,
                  "bitrate": tok.bitrate, "patch_size": list(tok.patch_size),
                  "grid_per_window": [tok.tokens_per_window, tok.n_freq_patches]},
        "spectrogram": {"mse_db": se / frames_total, "mae_db": ae / frames_total, "l1_model": l1 / frames_total,
                        "quant_loss": quant_loss_sum / windows},
        "codebook": stats.to_dict(),
        "vocoder": {"type": "griffin-lim", "n_iter": tok.vocoder.n_iter, "nnls_iter": tok.vocoder.nnls_iter,
                    "seed": args.seed, "seed_per_window": "seed + window index"},
        "per_clip": per_clip,
    }
    if args.audio_metrics:
        results["audio"] = {
            side: {metric: audio[f"{side}_{metric}"].value for metric in ("pesq", "stoi", "si_snr")}
            | {f"{metric}_clips": audio[f"{side}_{metric}"].count for metric in ("pesq", "stoi")}
            | {f"{metric}_skipped": audio[f"{side}_{metric}"].skipped for metric in ("pesq", "stoi")}
            for side in ("recon", "ceiling")
        }
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def format_table(results: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate`'s results."""
    s, c, r = results["spectrogram"], results["codebook"], results["rates"]
    lines = [
        f"checkpoint  {results['checkpoint']} (step {results['step']}, {results['weights']} weights)",
        f"data        {results['windows']} windows from {results['files']} files, "
        f"{results['audio_seconds']:.1f} s of audio; skipped: {len(results['skipped_files'])} files, "
        f"{results['num_skipped_windows']} windows that failed to decode",
        f"rate        {r['tokens_per_second']:g} tokens/s x {r['bits_per_token']} bits = {r['bitrate']:g} bit/s",
        "",
        f"{'spectrogram':<28}{'value':>14}",
        f"{'  MSE (dB^2)':<28}{s['mse_db']:>14.3f}",
        f"{'  MAE (dB)':<28}{s['mae_db']:>14.3f}",
        f"{'  L1 (model space)':<28}{s['l1_model']:>14.4f}",
        "",
        f"{'codebook':<28}{'value':>14}",
        f"{'  distinct codes':<28}{c['distinct_codes']:>14d}",
        f"{'  usage (of min(2^bits, N))':<28}{c['usage']:>14.4f}",
        f"{'  entropy (bits/token)':<28}{c['entropy_bits']:>14.3f}",
        f"{'  perplexity':<28}{c['perplexity']:>14.1f}",
        f"{'  bit balance min / max':<28}{min(c['bit_balance']):>7.3f}{max(c['bit_balance']):>7.3f}",
    ]
    if "audio" in results:
        a = results["audio"]
        lines += ["", f"{'audio (Griffin-Lim)':<28}{'reconstruction':>16}{'GL(input) ceiling':>20}"]
        for key, label in (("pesq", "  PESQ-WB"), ("stoi", "  STOI")):
            lines.append(f"{label:<28}{a['recon'][key]:>16.3f}{a['ceiling'][key]:>20.3f}")
        lines += ["  Griffin-Lim phase is random, so SI-SNR (phase-sensitive) is not meaningful here:",
                  f"{'  SI-SNR (dB, not meaningful)':<28}{a['recon']['si_snr']:>16.3f}{a['ceiling']['si_snr']:>20.3f}"]
    return "\n".join(lines)


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
                        help="Griffin-Lim + PESQ / STOI / SI-SNR (default: yes; --no-audio-metrics is much faster)")
    parser.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
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
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"wrote {Path(args.output) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

