"""Summarise the ablation grid: one line per (variant, seed) from results.jsonl, relative to the baseline row.

    python benchmarks/2026-12-07-cpu-2core/ablations/summarize.py results.jsonl --baseline shipped > summary.md
    python .../summarize.py results.jsonl --baseline gan_ref --variants gan_ref,gan_start --perceptual

``--variants`` keeps only the named variants (in that order); ``--perceptual`` prints DNSMOS OVRL and dWER
(rows of a ``benchmark_quality.py --perceptual`` run) instead of the code and step-rate columns; ``--metric
spectrogram.mae_db_common_floor`` compares the MAE above a common dB floor (``benchmark_quality.py
--common-floor-db``) instead of the MAE at each variant's own floor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def metric(rows: list[dict[str, Any]], variant: str, seed: int, weights: str, eval_set: str, path: str) -> float | None:
    for row in rows:
        if (row["variant"], row.get("seed", 0), row["weights"], row["eval_set"]) == (variant, seed, weights, eval_set):
            value: Any = row
            for key in path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            return value
    return None


def perceptual_table(rows: list[dict[str, Any]], runs: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """MAE, STOI, PESQ, DNSMOS OVRL per set and the English dWER (through Griffin-Lim) per (variant, seed)."""
    print("| variant | seed | steps | weights | unseen MAE dB | English MAE dB | STOI unseen / English | "
          "PESQ-WB unseen / English | DNSMOS OVRL unseen / English | English dWER |")
    print("|---|---:|---:|---|---:|---:|---|---|---|---:|")
    for variant, seed in runs:
        first = next(r for r in rows if (r["variant"], r.get("seed", 0)) == (variant, seed))

        def get(eval_set: str, path: str, variant: str = variant, seed: int = seed) -> float | None:
            return metric(rows, variant, seed, args.weights, eval_set, path)

        def pair(path: str, digits: int = 3, get: Any = get) -> str:
            values = [get(s, path) for s in ("unseen", "english")]
            return " / ".join("-" if v is None else f"{v:.{digits}f}" for v in values)

        dwer = get("english", "perceptual.recon.dwer.wer")
        print(f"| {variant} | {seed} | {first['steps']} | {args.weights} | {get('unseen', 'spectrogram.mae_db'):.3f} | "
              f"{get('english', 'spectrogram.mae_db'):.3f} | {pair('audio.recon.stoi')} | {pair('audio.recon.pesq')} | "
              f"{pair('perceptual.recon.dnsmos.ovrl', 2)} | {'-' if dwer is None else f'{dwer:.3f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--baseline", default="shipped")
    parser.add_argument("--weights", default="raw")
    parser.add_argument("--variants", default=None, help="comma-separated variants to show, in this order")
    parser.add_argument("--perceptual", action="store_true", help="DNSMOS OVRL and dWER columns")
    parser.add_argument("--metric", default="spectrogram.mae_db", help="the MAE compared (dotted path in a row)")
    args = parser.parse_args()
    every_row = load_rows(args.results)
    rows = [r for r in every_row if not r.get("failed")]
    failed = [r for r in every_row if r.get("failed")]
    runs = list(dict.fromkeys((r["variant"], r.get("seed", 0)) for r in rows))
    if args.variants:
        wanted = args.variants.split(",")
        runs = sorted((run for run in runs if run[0] in wanted), key=lambda run: (wanted.index(run[0]), run[1]))
    if args.perceptual:
        perceptual_table(rows, runs, args)
    else:
        mae_table(rows, runs, args)
    for row in failed:
        if not args.variants or row["variant"] in args.variants.split(","):
            print(f"\n{row['variant']} (seed {row.get('seed', 0)}): {row['failed']}")


def mae_table(rows: list[dict[str, Any]], runs: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """MAE per set relative to the baseline, code use, STOI / PESQ and the step rate per (variant, seed)."""
    base = {s: metric(rows, args.baseline, 0, args.weights, s, args.metric) for s in ("unseen", "english")}
    print(f"| variant | seed | steps | samples | params (M) | unseen MAE dB ({args.weights}) | vs {args.baseline} | "
          "unseen MAE (other weights) | English MAE dB | vs base | distinct codes (unseen) | STOI unseen | "
          "PESQ unseen | steps/s (1 thread, shared) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    other = "ema" if args.weights == "raw" else "raw"
    for variant, seed in runs:
        first = next(r for r in rows if (r["variant"], r.get("seed", 0)) == (variant, seed))
        unseen = metric(rows, variant, seed, args.weights, "unseen", args.metric)
        english = metric(rows, variant, seed, args.weights, "english", args.metric)
        other_unseen = metric(rows, variant, seed, other, "unseen", args.metric)
        codes = metric(rows, variant, seed, args.weights, "unseen", "codebook.distinct_codes")
        stoi = metric(rows, variant, seed, args.weights, "unseen", "audio.recon.stoi")
        pesq = metric(rows, variant, seed, args.weights, "unseen", "audio.recon.pesq")

        def rel(value: float | None, reference: float | None) -> str:
            return "-" if value is None or not reference else f"{100 * (value / reference - 1):+.1f} %"

        def num(value: float | None, digits: int = 3) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        print(f"| {variant} | {seed} | {first['steps']} | {first.get('samples_seen', '-')} | "
              f"{first['parameters'] / 1e6:.2f} | {num(unseen)} | {rel(unseen, base['unseen'])} | "
              f"{num(other_unseen)} | "
              f"{num(english)} | {rel(english, base['english'])} | {codes} | {num(stoi)} | {num(pesq)} | "
              f"{num(first['steps_per_second'], 2)} |")


if __name__ == "__main__":
    main()
