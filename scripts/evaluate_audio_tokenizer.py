"""Evaluate a trained Audio BSQ-ViT checkpoint: spectrogram, codebook and audio metrics.

    python scripts/evaluate_audio_tokenizer.py CKPT.pt --output outputs/eval            # data.val of the checkpoint
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --audio-dir my_audio/test --output outputs/eval
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --data-config configs/tokenizer/x.yaml --max-batches 20
    python scripts/evaluate_audio_tokenizer.py CKPT.pt --bits 9,12,15,18 --output outputs/eval  # nested-bits model

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

``--perceptual`` (the ``eval`` extra: ``pip install -e ".[eval]"``) adds DNSMOS (SIG / BAK / OVRL / P.808) of
the original and every rendering and, with ``--language en``, dWER (PocketSphinx on the decoded vs the
original audio) and, for LibriSpeech-layout data with transcripts, WER. ``--language`` may name sources
(``fr_voice=fr,en_voice=en``); a source that is not English, or whose Griffin-Lim ceiling scores a dWER above 0.40
(the recogniser does not understand it), is left out of dWER / WER and marked unreliable, with one warning.
``--anchors`` scores the trivial pooled-mel codec at the same bitrate, Opus and Codec 2 (when installed) on the
same windows, as rows of the same table. ``--report`` writes ``report.html``: a self-contained listening page
(players with the clip's duration and spectrograms with dB colour bars of the original, every rendering and the
anchors for ``--report-examples`` windows spread over sources, and the metrics table).

``--bits K`` scores codes of their first ``K`` bits (a model trained with ``model.params.nested_bits``);
a list ``--bits 9,12,15,18`` scores every width of the one model, each into ``--output/bits-K/`` (its
``metrics.json`` and examples), prints one summary row per width with its bit/s, and writes the rows to
``--output/metrics.json`` (``{"checkpoint", "bits": [...], "rows": [...]}``).

The logic lives in :func:`transcoder.evaluation.evaluate.evaluate_tokenizer` (usable from Python);
this script parses the flags, loads the checkpoint and the dataset and prints the table.
metrics.json is strict JSON: NaN scores (e.g. PESQ of a silent window) are written as null.

Runs in ONE process (GPU when present); it does not use torchrun/DDP. Writes ``metrics.json``,
spectrogram PNGs and WAVs for ``--num-audio`` windows into ``--output``, and prints a table.

``--max-batches N`` scores ``N x --batch-size`` windows spread round-robin over the sources (top-level folders, or
speakers) and their files, seeded by ``--seed``; ``--num-audio`` and ``--report-examples`` windows are spread the
same way. The table's ``sources`` line and ``metrics.json`` (``subset``) name the sources and windows per source.
Every phase (scoring, DNSMOS, recognition, each anchor, the report) shows a progress bar with an ETA.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset
from transcoder.evaluation.asr_guard import parse_languages
from transcoder.evaluation.evaluate import (
    bits_row,
    dataset_spec,
    evaluate_tokenizer,
    example_title,
    format_bits_table,
    format_table,
    parse_bits,
    write_metrics_json,
)
from transcoder.evaluation.perceptual import require_eval_extra
from transcoder.utils.messages import install_console_warnings

__all__ = ["evaluate", "format_table", "main", "parse_args"]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Load the checkpoint and the dataset the flags name and run :func:`evaluate_tokenizer` (and the anchors
    and the report when asked); with several ``--bits``, once per width (see the module doc)."""
    tok = load_tokenizer(args.checkpoint, device=args.device, use_ema=args.use_ema, batch_size=args.batch_size,
                         vocoder_kwargs={"n_iter": args.gl_iters}, vocoder=args.vocoder, trust_config=args.trust_config)
    widths = [tok.check_bits(k) for k in (args.bits or [None])]  # every width refused up front
    spec = dataset_spec(tok.checkpoint_config, args.audio_dir, args.data_config, args.split,
                        trust_config=args.trust_config)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    print(f"{tok!r}, weights={tok.weights}, single process; dataset {spec['target']} "
          f"({len(dataset)} windows of {tok.window_samples / tok.sample_rate:.2f} s)", flush=True)

    def run(bits: int, output: Path) -> dict[str, Any]:
        return evaluate_tokenizer(tok, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                                  max_batches=args.max_batches, num_audio=args.num_audio,
                                  audio_metrics=args.audio_metrics, seed=args.seed,
                                  metric_workers=args.metric_workers, output_dir=output, dataset_spec=spec,
                                  quiet=args.quiet, perceptual=args.perceptual, language=args.language, bits=bits)

    if len(widths) > 1:
        by_bits = {k: run(k, Path(args.output) / f"bits-{k}") for k in widths}
        summary = {"checkpoint": next(iter(by_bits.values()))["checkpoint"], "bits": widths,
                   "rows": [bits_row(r) for r in by_bits.values()], "by_bits": by_bits}
        write_metrics_json(Path(args.output) / "metrics.json", {k: v for k, v in summary.items() if k != "by_bits"})
        return summary
    bits = widths[0]
    results = run(bits, Path(args.output))
    anchors = None
    if args.anchors or args.report:
        from transcoder.evaluation.anchors import evaluate_anchors
        from transcoder.evaluation.perceptual import PerceptualScorer

        scorer = (PerceptualScorer(tok.sample_rate, language=args.language, show_progress=not args.quiet)
                  if args.perceptual else None)
        anchors = evaluate_anchors(dataset, tok.frontend, tok.vocoder, tok.rates_at(bits).bits_per_second,
                                   batch_size=args.batch_size,
                                   max_batches=args.max_batches, seed=args.seed, perceptual=scorer,
                                   examples=args.report_examples if args.report else 0, quiet=args.quiet)
        examples = anchors.pop("examples")
        results["anchors"] = anchors
        write_metrics_json(Path(args.output) / "metrics.json", results)
        if args.report:
            write_listening_page(tok, results, anchors, examples, args, bits, getattr(dataset, "root", None))
    return results


def write_listening_page(tok: Any, results: dict[str, Any], anchors: dict[str, Any],
                         anchor_examples: list[dict[str, Any]], args: argparse.Namespace,
                         bits: int | None = None, root: str | None = None) -> Path:
    """``--output/report.html`` for ``--report-examples`` windows spread over sources (the anchors' examples),
    each titled with its path under ``root`` and its source."""
    import torch

    from transcoder.evaluation.evaluate import reconstruct, render_pair
    from transcoder.evaluation.report_html import QUALITY_COLUMNS, ReportExample, quality_table, write_report
    from transcoder.evaluation.subset import sources_line
    from transcoder.utils.progress import progress

    def mel_db(audio: Any) -> Any:
        with torch.inference_mode():
            wave = torch.as_tensor(audio, dtype=torch.float32, device=tok.device)[None]
            return tok.frontend.model_to_db(tok.frontend(wave))[0].cpu().numpy()

    examples = []
    for example in progress(anchor_examples, desc="report: tokenizer examples", unit="example", disable=args.quiet):
        wave = torch.as_tensor(example["original"], dtype=torch.float32, device=tok.device)[None]
        n_valid = wave.shape[-1]
        padded = torch.nn.functional.pad(wave, (0, tok.window_samples - n_valid))
        with torch.inference_mode():
            mel = tok.frontend(padded)
            recon = reconstruct(tok, mel, bits)[0]
            gl_input, gl_recon = render_pair(tok.griffin_lim, mel, recon, [args.seed + example["index"]],
                                             padded.shape[-1])
        renderings = {"original": example["original"], "tokenizer + Griffin-Lim": gl_recon[0, :n_valid].numpy(),
                      "Griffin-Lim ceiling (true mel)": gl_input[0, :n_valid].numpy()}
        if tok.neural_vocoder is not None:
            with torch.inference_mode():
                vocoded = tok.neural_vocoder(recon, padded.shape[-1])
            renderings["tokenizer + neural vocoder"] = vocoded[0, :n_valid].cpu().numpy()
        renderings.update({k: v for k, v in example["audio"].items() if k != "griffin-lim ceiling"})
        frames = -(-n_valid // tok.hop_length)
        title = example_title(example["path"], root or example.get("root"), example["offset"] / tok.sample_rate)
        examples.append(ReportExample(f"{title} (source {example.get('source', 'all')})",
                                      renderings, {"tokenizer + Griffin-Lim":
                                                   tok.frontend.model_to_db(recon)[0, :frames].cpu().numpy()}))
    notes = list(anchors["notes"])
    if "perceptual" in results:
        notes += sorted({p["note"] for p in results["perceptual"].values() if "note" in p})
    meta = (f"{results['checkpoint']} (step {results['step']}, {results['weights']} weights); "
            f"{sources_line(results['subset'])}; {results['files']} files; spectrogram image of the tokenizer row: "
            "its decoded mel")
    return write_report(Path(args.output) / "report.html", title="Audio tokenizer evaluation",
                        table_columns=QUALITY_COLUMNS, table_rows=quality_table(results, anchors), examples=examples,
                        sample_rate=tok.sample_rate, mel_fn=mel_db, notes=notes, meta=meta, quiet=args.quiet)


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
    parser.add_argument("--max-batches", type=int, default=None,
                        help="score max-batches x batch-size windows, spread over sources (top-level folders or "
                             "speakers) and files, seeded by --seed (default: every window)")
    parser.add_argument("--num-audio", type=int, default=4,
                        help="windows saved as PNG + WAV, spread over sources and files")
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
    parser.add_argument("--trust-config", action="store_true",
                        help="let the checkpoint's config name classes outside this project "
                             "(only for a checkpoint of your own code)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding audio")
    parser.add_argument("--metric-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes computing PESQ / STOI (1 = in this process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--perceptual", action="store_true",
                        help="DNSMOS and (with --language en) dWER / WER of every rendering (needs the 'eval' extra)")
    parser.add_argument("--language", default=None,
                        help="language of the data: 'en' (enables dWER / WER), or per source (top-level folder or "
                             "'speaker N'): 'fr_voice=fr,en_voice=en' ('en,fr_voice=fr': en unless named)")
    parser.add_argument("--anchors", action="store_true",
                        help="also score the trivial codec at the same bitrate, Opus and Codec 2 on the same windows")
    parser.add_argument("--report", action="store_true", help="write report.html (listening page, implies --anchors)")
    parser.add_argument("--report-examples", type=int, default=3,
                        help="example windows on the report page, spread over sources and files")
    parser.add_argument("--bits", type=parse_bits, default=None, metavar="K[,K...]",
                        help="score codes of their first K bits (a model trained with model.params.nested_bits); "
                             "several widths (9,12,15,18) are scored one after the other, one row each "
                             "(default: the model's full width)")
    args = parser.parse_args(argv)
    if args.bits is not None and len(args.bits) > 1 and (args.anchors or args.report):
        parser.error("--anchors / --report score one width: give one --bits value with them")
    for name in ("batch_size", "metric_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    if args.num_audio < 0:
        parser.error("--num-audio must be >= 0")
    if args.perceptual and not args.audio_metrics:
        parser.error("--perceptual scores the rendered audio: drop --no-audio-metrics")
    try:
        parse_languages(args.language)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    install_console_warnings()
    args = parse_args(argv)
    try:
        if args.perceptual:
            require_eval_extra()
        results = evaluate(args)
    except (FileNotFoundError, ValueError, RuntimeError, FloatingPointError) as err:  # CheckpointError: RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "by_bits" in results:
        for bits, one in results["by_bits"].items():
            print(f"\n== {bits} bits per token ({Path(args.output) / f'bits-{bits}'}) ==")
            print(format_table(one))
        print("\n" + format_bits_table(results["rows"]))
        print(f"wrote {Path(args.output) / 'metrics.json'} (one row per width) and bits-K/metrics.json")
        return 0
    print(format_table(results))
    if "anchors" in results:
        from transcoder.evaluation.report_html import markdown_table, quality_table

        print("\n" + markdown_table(quality_table(results, results["anchors"])))
        for note in results["anchors"]["notes"]:
            print(f"note: {note}")
    print(f"wrote {Path(args.output) / 'metrics.json'}")
    if args.report:
        print(f"listening page: {Path(args.output) / 'report.html'}")
    if args.num_audio:
        print(f"examples (spectrogram PNGs, input / reconstruction WAVs): {Path(args.output) / 'examples'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

