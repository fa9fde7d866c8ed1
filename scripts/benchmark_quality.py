"""Rate–distortion benchmark: train a config for a fixed step count (or wall-clock budget), then score it.

    python scripts/benchmark_quality.py --preset cpu --train /work/corpus/train --val /work/corpus/val \\
        --steps 600 --variant shipped: --variant recipe:optimizer.lr=5e-4,optimizer.warmup_steps=50 \\
        --output outputs/quality

Each ``--variant NAME:KEY=VALUE,KEY=VALUE`` is a list of config overrides (values parsed as YAML, commas
inside brackets kept: ``optimizer.betas=[0.9,0.95]``) applied after the preset's. Every variant is trained
from scratch in one process with the one trainer, then evaluated with the library's
:func:`transcoder.evaluation.evaluate.evaluate_tokenizer` on the ``--val`` folder: log-mel MAE / MSE in dB
(full band, valid frames) and the distinct codes and entropy of the actual indices over every window; the
patch-boundary seam ratios (frequency / time; 1.0 = no seams, :mod:`transcoder.evaluation.seams`); PESQ-WB
and STOI through Griffin-Lim (or ``--vocoder CKPT``) on ``--audio-batches`` x ``--eval-batch-size`` windows spread
over the sources (top-level folders or speakers) and files (:mod:`transcoder.evaluation.subset`; the console and
each row's ``audio_subset`` name the sources and windows per source). With EMA
weights in the checkpoint both the raw and the EMA weights are scored (one row each). Prints one table row
per (variant, weights) and writes ``results.json`` and ``results.md`` into ``--output``; each variant's run
folder (config, log, checkpoint, example PNG/WAVs) is ``--output/NAME``.

Unseen voices: when ``--train`` holds one folder per source (voice), ``--holdout-source NAME`` (default:
``asterisk_it_IT_m_Carlo`` when present, else the last source in sorted order; ``none``: train on all) is left
out of training, and every variant is scored separately on the seen voices (``--val``'s other sources) and on
the unseen one (``--val/NAME``); ``--english DIR`` adds English speech no source shares (e.g. the bundled
``data/librivox-mini``), where dWER is computed. Each row names its evaluation set and the seen voices.

Anchors (``--anchors``, default on): the trivial pooled-mel codec at the tokenizer's exact bitrate, the
Griffin-Lim ceiling and Opus 6 / 12 kbit/s and Codec 2 1200 / 3200 bit/s (when ``opusenc`` / ``c2enc`` are
on PATH) are rows of the same table, on the same windows (:mod:`transcoder.evaluation.anchors`).
``--perceptual`` (the ``eval`` extra) adds DNSMOS and, on English sets, dWER to every row; ``--report``
writes ``report.html`` per evaluation set (listening page: original, every rendering and anchor).

Nested bits: ``--bits 9,12,15,18`` scores every (variant, weights, evaluation set) at each width, one row per
width with its bit/s (a variant trained with ``model.params.nested_bits``; fixed-width variants are scored at
their own width, e.g. ``--bits 18`` for an 18-bit one). The anchors stay at the full width's bitrate.

Presets (model size and batch; the recipe itself comes from ``--config`` and the variants):

* ``cpu``: width 192, 3 + 3 layers, 16x16 patches, batch 8 (about 10 minutes for 600 steps of 256-frame crops
  on 2 cores, training and evaluation).
* ``gpu``: the standard model (width 768, 12 + 12 layers), batch 32, bf16, 8 minutes (480 s) of training time.
* ``tiny``: a smoke test (width 32, 1 + 1 layers).

Resumable grids: ``--grid FILE`` reads one ``NAME:KEY=VALUE,...`` variant per line (``#`` comments) and ``--seeds
0,1`` trains each variant once per seed (``training.seed``; run folder ``NAME`` for the first seed, ``NAME_s<seed>``
for others). Every finished (variant, seed) appends its rows to ``--results`` (JSON lines, default
``--output/results.jsonl``) at once, and a rerun skips the (variant, seed) pairs already there, so a stopped grid
loses at most the variant in flight; a name reused with other overrides is refused. The anchors are computed once
and kept in ``--output/anchors.json``. ``--eval-sets unseen,english`` scores only those sets.

Use a step budget (``--steps``) to compare variants on a shared machine, and the reported steps/s to derive
equal-wall-time comparisons; ``--budget-seconds`` trains each variant for that many seconds instead (with
``optimizer.schedule=budget`` the cosine ends at the budget; see transcoder/training/optim.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from transcoder.api import load_tokenizer
from transcoder.data import build_dataset
from transcoder.evaluation.anchors import evaluate_anchors
from transcoder.evaluation.evaluate import (
    evaluate_tokenizer,
    example_title,
    parse_bits,
    write_metrics_json,
)
from transcoder.evaluation.grid import (
    append_results,
    parse_seeds,
    parse_variant,
    pending_runs,
    read_grid_file,
    read_results,
    run_folder_name,
)
from transcoder.evaluation.perceptual import MissingExtraError, PerceptualScorer, require_eval_extra
from transcoder.evaluation.seams import seam_scores
from transcoder.evaluation.subset import representative_windows, sources_line
from transcoder.models.audiobsq import bits_per_token
from transcoder.training.config import load_config
from transcoder.training.step import NonFiniteLossError
from transcoder.training.trainer import Trainer
from transcoder.utils.distributed import init_distributed
from transcoder.utils.machine import cpu_model
from transcoder.utils.messages import install_console_warnings
from transcoder.utils.progress import progress
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "tokenizer" / "audio_speech_short_b18.yaml"

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"overrides": ["model.params.audioconfig.width=192", "model.params.audioconfig.layers=3",
                          "model.params.audioconfig.heads=4", "model.params.audioconfig.patch_size=16",
                          "data.batch_size=8", "data.num_workers=1", "training.precision=fp32"],
            "steps": 600, "budget_seconds": None},
    "gpu": {"overrides": ["model.params.audioconfig.width=768", "model.params.audioconfig.layers=12",
                          "model.params.audioconfig.heads=12", "model.params.audioconfig.patch_size=16",
                          "data.batch_size=32", "data.num_workers=8", "training.precision=bf16"],
            "steps": None, "budget_seconds": 480.0},
    "tiny": {"overrides": ["model.params.audioconfig.width=32", "model.params.audioconfig.layers=1",
                           "model.params.audioconfig.heads=2", "model.params.audioconfig.mlp_ratio=2.0",
                           "data.batch_size=4", "data.num_workers=0", "training.precision=fp32"],
             "steps": 4, "budget_seconds": None},
}
#: Held out by default when ``--train`` has it (a male Italian voice; the other shipped voices are female or
#: the multi-speaker letters set, so the unseen voice also differs in sex and language).
DEFAULT_HOLDOUT = "asterisk_it_IT_m_Carlo"
#: Training settings the benchmark owns (validation and media happen in the evaluation, not in training).
RUN_OVERRIDES = ["data.val=null", "training.image_every=0", "training.log_every=50", "training.ckpt_every=1000000",
                 "training.latest_every=1000000"]


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and the core count."""
    return f"{cpu_model()} ({os.cpu_count()} cores visible)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def load_scored_tokenizer(checkpoint: Path, device: str | None, use_ema: bool, vocoder: str | None,
                          trust_config: bool = False) -> Any:
    """:func:`load_tokenizer` rendering through the neural vocoder checkpoint ``vocoder`` (Griffin-Lim if None);
    ``trust_config``: the runs' config names classes outside the project (``--trust-config``)."""
    return load_tokenizer(checkpoint, device=device, use_ema=use_ema, vocoder=vocoder, trust_config=trust_config)


def source_folders(root: str) -> list[str]:
    """Sorted names of ``root``'s subfolders (one per source / voice in the corpus layout)."""
    path = Path(root)
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def plan_holdout(args: argparse.Namespace) -> dict[str, Any]:
    """Training root and evaluation sets for ``--holdout-source``.

    Returns ``{"train": root, "seen": [...], "unseen": [...], "sets": {name: (root, language)}, "note": str}``;
    the training root is a folder of symlinks to the seen sources (under ``--output``) when one is held out.
    """
    sources = source_folders(args.train)
    choice = args.holdout_source
    sets: dict[str, tuple[str, str | None]] = {}
    if choice == "none" or (choice == "auto" and len(sources) < 2):
        note = ("every voice is seen (--holdout-source none)" if choice == "none" else
                f"{args.train} has no per-source subfolders: every voice is seen, nothing is held out")
        sets["seen"] = (args.val, args.language)
        plan = {"train": args.train, "seen": sources, "unseen": [], "note": note}
    else:
        held = choice if choice != "auto" else (DEFAULT_HOLDOUT if DEFAULT_HOLDOUT in sources else sources[-1])
        if held not in sources:
            raise ValueError(f"--holdout-source {held!r}: not a source folder of {args.train} (found {sources})")
        seen = [s for s in sources if s != held]
        link_root = Path(args.output) / "_train_seen_sources"
        link_root.mkdir(parents=True, exist_ok=True)
        for name in seen:
            link = link_root / name
            if not link.is_symlink():
                link.symlink_to(Path(args.train, name).resolve(), target_is_directory=True)
        for stale in link_root.iterdir():
            if stale.name not in seen:
                stale.unlink()
        val_sources = source_folders(args.val)
        seen_val = Path(args.output) / "_val_seen_sources"
        seen_val.mkdir(parents=True, exist_ok=True)
        for name in seen:
            if name in val_sources and not (seen_val / name).is_symlink():
                (seen_val / name).symlink_to(Path(args.val, name).resolve(), target_is_directory=True)
        unseen_val = Path(args.val, held)
        if not unseen_val.is_dir():
            raise ValueError(f"--holdout-source {held!r}: {unseen_val} does not exist (the val split needs the "
                             "held-out source's folder)")
        sets["seen"] = (str(seen_val), args.language)
        sets["unseen"] = (str(unseen_val), args.language)
        plan = {"train": str(link_root), "seen": seen, "unseen": [held],
                "note": f"trained on {', '.join(seen)}; held out: {held}"}
    if args.english:
        sets["english"] = (args.english, "en")
    plan["sets"] = sets
    return plan


def dataset_spec_for(root: str) -> dict[str, Any]:
    """LibriSpeech layout (with transcripts) for a root holding ``LibriSpeech/`` or split folders, else a folder."""
    path = Path(root)
    base = path / "LibriSpeech" if (path / "LibriSpeech").is_dir() else path
    splits = [p.name for p in sorted(base.iterdir()) if p.is_dir() and p.name.startswith(("dev-", "test-", "train-"))]
    if splits:
        return {"target": "transcoder.data.LibriSpeechDataset", "params": {"root": root, "splits": splits}}
    return {"target": "transcoder.data.AudioFolderDataset", "params": {"root": root}}


def score(checkpoint: Path, val_root: str, args: argparse.Namespace, use_ema: bool, out_dir: Path,
          language: str | None = None, bits: int | None = None) -> dict[str, Any]:
    """Evaluate one set of weights: spectrogram and code metrics on every val window, audio metrics (and with
    ``--perceptual`` DNSMOS / dWER) on ``args.audio_batches`` batches' worth of windows spread over sources;
    ``bits``: at that width (a
    nested-bits model; default: full width)."""
    tok = load_scored_tokenizer(checkpoint, args.device, use_ema, args.vocoder, args.trust_config)
    spec = dataset_spec_for(val_root)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    full = evaluate_tokenizer(tok, dataset, batch_size=args.eval_batch_size, max_batches=args.eval_max_batches,
                              audio_metrics=False, dataset_spec=spec, bits=bits, quiet=False,
                              common_floor_db=args.common_floor_db)
    result = {"weights": "ema" if use_ema else "raw", "loaded_weights": tok.weights, "windows": full["windows"],
              "bits": full["rates"]["bits_per_token"], "spectrogram": full["spectrogram"],
              "codebook": {k: full["codebook"][k] for k in ("distinct_codes", "usage", "entropy_bits", "perplexity")},
              "rates": full["rates"], "seams": seam_scores(tok, dataset, args.eval_batch_size,
                                                           min(8, args.eval_max_batches or 8), bits)}
    if args.audio_batches > 0:
        audio = evaluate_tokenizer(tok, dataset, batch_size=args.eval_batch_size, max_batches=args.audio_batches,
                                   audio_metrics=True, num_audio=args.num_audio, output_dir=out_dir,
                                   dataset_spec=spec, perceptual=args.perceptual, language=language, bits=bits,
                                   quiet=False)
        print(f"audio metrics on {sources_line(audio['subset'])}", flush=True)
        result["audio"] = audio["audio"]
        result["audio_windows"] = audio["windows"]
        result["audio_subset"] = audio["subset"]
        if "asr_reliability" in audio:
            result["asr_reliability"] = audio["asr_reliability"]
        result["vocoder"] = audio["vocoder"]
        if "perceptual" in audio:
            result["perceptual"] = {k: {m: v for m, v in p.items() if m != "transcripts"}
                                    for k, p in audio["perceptual"].items()}
    return result


def score_anchors(checkpoint: Path, val_root: str, args: argparse.Namespace, language: str | None,
                  examples: int = 0) -> dict[str, Any]:
    """The anchors on the windows :func:`score` scores: spectrogram MAE on every window (as the rows' MAE, up to
    ``--eval-max-batches``), audio metrics on the first ``--audio-batches`` batches (as the rows' audio metrics)."""
    tok = load_scored_tokenizer(checkpoint, args.device, False, None, args.trust_config)
    spec = dataset_spec_for(val_root)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    scorer = PerceptualScorer(tok.sample_rate, language=language, show_progress=True) if args.perceptual else None
    anchors = evaluate_anchors(dataset, tok.frontend, tok.vocoder, tok.bitrate, batch_size=args.eval_batch_size,
                               max_batches=args.eval_max_batches, audio_batches=args.audio_batches or 1,
                               perceptual=scorer, examples=examples, quiet=False)
    for row in [*anchors["rows"].values(), anchors["original"] or {}]:
        (row.get("perceptual") or {}).pop("transcripts", None)
    return anchors


def run_variant(name: str, overrides: list[str], args: argparse.Namespace, seed: int | None = None
                ) -> list[dict[str, Any]]:
    """Train one variant (with ``training.seed=seed`` when given) and score its weights; one result dict per
    weights (raw, and EMA when kept)."""
    preset = PRESETS[args.preset]
    steps = args.steps if args.steps is not None else preset["steps"]
    budget = args.budget_seconds if args.budget_seconds is not None else preset["budget_seconds"]
    if args.steps is not None:
        budget = None
    if args.budget_seconds is not None:
        steps = None  # the budget alone ends the run (not the preset's step count)
    if steps is None and budget is None:
        raise ValueError("give --steps or --budget-seconds")
    # A wall-clock budget ends the cosine at the budget (optimizer.schedule=budget; a variant may override it).
    limits = ([f"training.max_steps={steps}"] if budget is None else
              [f"training.max_steps={steps or 10**9}", f"training.budget_seconds={budget}",
               "optimizer.schedule=budget"])
    run_dir = Path(args.output) / run_folder_name(name, seed, args.seeds)
    plan = args.holdout_plan
    seeding = [] if seed is None else [f"training.seed={seed}"]
    all_overrides = [*preset["overrides"], "data.train.target=transcoder.data.AudioFolderDataset",
                     f"data.train.params={{root: {plan['train']}}}", *RUN_OVERRIDES, *limits, *args.set, *seeding,
                     *overrides]
    config = load_config(args.config, all_overrides)
    check_widths(config, args.bits, name)
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, init_distributed(args.device))
    built = time.perf_counter()
    # A run folder left by a stopped grid resumes from its latest checkpoint: only this call's steps are timed.
    start_step = trainer.state.step
    trainer.fit()
    train_seconds = time.perf_counter() - built
    steps_done = trainer.state.step
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    common = {"variant": name, "overrides": overrides, "seed": int(config["training"].get("seed") or 0),
              "preset": args.preset, "steps": steps_done,
              "samples_seen": steps_done * int(config["data"]["batch_size"]),
              "train_seconds": train_seconds, "setup_seconds": built - started,
              "resumed_at_step": start_step,
              "steps_per_second": ((steps_done - start_step) / max(train_seconds, 1e-9)
                                   if steps_done > start_step else None),
              "device": device_name(trainer.device), "threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in trainer.model.parameters()),
              "seen_voices": plan["seen"], "unseen_voices": plan["unseen"]}
    rows = []
    weights = [False, True] if config["training"]["ema_decay"] else [False]
    for use_ema in weights:
        label = "ema" if use_ema else "raw"
        for set_name, (root, language) in plan["sets"].items():
            if args.eval_sets and set_name not in args.eval_sets:
                continue
            eval_started = time.perf_counter()
            suffix = "" if set_name == "seen" else f"_{set_name}"
            for bits in args.bits or [None]:
                width = "" if bits is None else f"_b{bits}"
                scored = score(checkpoint, root, args, use_ema, run_dir / f"eval_{label}{suffix}{width}", language,
                               bits)
                rows.append({**common, "eval_set": set_name, "eval_root": root, **scored,
                             "eval_seconds": time.perf_counter() - eval_started})
                eval_started = time.perf_counter()
    return rows


def check_widths(config: dict[str, Any], widths: list[int] | None, variant: str) -> None:
    """Refuse ``--bits`` a variant's model cannot score, before training it: a width above its bits per token
    (``embed_dim`` for BSQ, ``sum(log2(levels))`` for FSQ), or fewer bits without ``model.params.nested_bits``."""
    if not widths:
        return
    params = config["model"].get("params") or {}
    full = bits_per_token(params)
    for bits in widths:
        if not 1 <= bits <= full:
            raise ValueError(f"--bits {bits}: variant {variant!r} makes {full}-bit codes "
                             f"(expected 1..{full})")
        if bits < full and not params.get("nested_bits"):
            raise ValueError(f"--bits {bits}: variant {variant!r} is trained without model.params.nested_bits, so it "
                             f"decodes {full}-bit codes only")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per (variant, weights, evaluation set)."""
    head = ("| variant | weights | eval set | bits | steps | train s | steps/s | MAE dB | MSE dB² | distinct codes "
            "| code entropy bits | bit/s | PESQ-WB | STOI | DNSMOS OVRL | dWER | seams f/t |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if row.get("failed"):
            lines.append(f"| {row['variant']} | - | - | - | {_fmt(row.get('steps'))} | - | - | failed: "
                         f"{row['failed']} |" + " - |" * (head.count("|") - 9))
            continue
        audio = row.get("audio", {}).get("recon", {})
        perceptual = row.get("perceptual", {}).get("recon", {})
        lines.append(
            f"| {row['variant']} | {row['weights']} | {row.get('eval_set', 'seen')} | "
            f"{row.get('bits', row['rates']['bits_per_token'])} | {row['steps']} | "
            f"{row['train_seconds']:.0f} | "
            f"{_fmt(row['steps_per_second'])} | {row['spectrogram']['mae_db']:.3f} | "
            f"{row['spectrogram']['mse_db']:.2f} | "
            f"{row['codebook']['distinct_codes']} | {row['codebook']['entropy_bits']:.2f} | "
            f"{row['rates']['bitrate']:g} | {_fmt(audio.get('pesq'))} | {_fmt(audio.get('stoi'))} | "
            f"{_fmt((perceptual.get('dnsmos') or {}).get('ovrl'))} | "
            f"{_fmt((perceptual.get('dwer') or {}).get('wer'))} | "
            f"{_ratio(row['seams']['freq'])}/{_ratio(row['seams']['time'])} |")
    return "\n".join(lines)


def anchor_table(anchors: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the anchors per evaluation set (same windows as the rows' audio metrics)."""
    head = "| anchor | eval set | bit/s | MAE dB | PESQ-WB | STOI | DNSMOS OVRL | dWER |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for set_name, result in anchors.items():
        rows = dict(result["rows"])
        if result.get("original"):
            rows = {"original": {"bitrate": None, "mae_db": 0.0, **result["original"]}, **rows}
        for name, row in rows.items():
            perceptual = row.get("perceptual") or {}
            lines.append(f"| {name} | {set_name} | {_fmt(row.get('bitrate'))} | {_fmt(row.get('mae_db'))} | "
                         f"{_fmt(row.get('pesq'))} | {_fmt(row.get('stoi'))} | "
                         f"{_fmt((perceptual.get('dnsmos') or {}).get('ovrl'))} | "
                         f"{_fmt((perceptual.get('dwer') or {}).get('wer'))} |")
    notes = sorted({note for result in anchors.values() for note in result["notes"]})
    return "\n".join(lines + [f"- {note}" for note in notes])


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value == value:
        return f"{value:.3f}" if abs(value) < 100 else f"{value:g}"
    return "-"


def _ratio(value: float | None) -> str:
    """A seam ratio, "-" where the axis has no patch boundary."""
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="base training config (YAML)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model size and batch")
    parser.add_argument("--train", required=True, help="training audio folder (AudioFolderDataset layout)")
    parser.add_argument("--val", required=True, help="evaluation audio folder")
    parser.add_argument("--output", required=True, help="output folder (run folders, results.json, results.md)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE,KEY=VALUE (repeatable; default: one variant 'base' without overrides)")
    parser.add_argument("--grid", default=None, metavar="FILE",
                        help="variants, one NAME:KEY=VALUE,... per line ('#' comments), run before any --variant")
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="S[,S...]",
                        help="train every variant once per seed (training.seed); default: the config's seed")
    parser.add_argument("--results", default=None, metavar="FILE",
                        help="results file (JSON lines) rows are appended to as each variant finishes, and "
                             "read to skip finished (variant, seed) runs (default: --output/results.jsonl)")
    parser.add_argument("--eval-sets", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                        metavar="SET[,SET...]", help="score only these evaluation sets (seen, unseen, english)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every variant")
    parser.add_argument("--trust-config", action="store_true",
                        help="the --config names classes outside this project: let its checkpoints load them")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the preset's)")
    limit.add_argument("--budget-seconds", type=float, default=None, help="training seconds per variant instead")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="windows per evaluation batch")
    parser.add_argument("--eval-max-batches", type=int, default=None, help="limit the spectrogram evaluation")
    parser.add_argument("--audio-batches", type=int, default=4,
                        help="batches' worth of windows (spread over sources and files) scored with PESQ / STOI "
                             "(0: none)")
    parser.add_argument("--num-audio", type=int, default=2, help="example PNG + WAVs saved per weights")
    parser.add_argument("--vocoder", default=None, help="neural vocoder checkpoint for the audio metrics")
    parser.add_argument("--holdout-source", default="auto", metavar="NAME",
                        help=f"source folder of --train left out of training and scored as the unseen voice "
                             f"(default 'auto': {DEFAULT_HOLDOUT} when present, else the last source; 'none': "
                             "train on every source)")
    parser.add_argument("--english", default=None, metavar="DIR",
                        help="also score English speech no training source shares (audio folder or LibriSpeech "
                             "layout, e.g. data/librivox-mini); dWER is computed there")
    parser.add_argument("--language", default=None,
                        help="language of --val: 'en' enables dWER on it; per source 'fr_voice=fr,en_voice=en'")
    parser.add_argument("--bits", type=parse_bits, default=None, metavar="K[,K...]",
                        help="score every variant at each of these widths (9,12,15,18), one row each with its "
                             "bit/s; widths below a variant's embed_dim need model.params.nested_bits")
    parser.add_argument("--common-floor-db", type=float, default=None, metavar="DB",
                        help="also score the log-mel MAE with both mels clamped below at DB "
                             "(spectrogram.mae_db_common_floor), to compare variants of different data.db_min: "
                             "give the highest floor among them, e.g. -60")
    parser.add_argument("--anchors", action=argparse.BooleanOptionalAction, default=True,
                        help="score the trivial codec, Griffin-Lim ceiling, Opus and Codec 2 on the same windows")
    parser.add_argument("--perceptual", action="store_true",
                        help="DNSMOS and (English sets) dWER for every row (needs the 'eval' extra)")
    parser.add_argument("--report", action="store_true",
                        help="write report.html per evaluation set (listening page of the last variant)")
    parser.add_argument("--report-examples", type=int, default=3, help="example windows on each report page")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        parser.error("--budget-seconds must be > 0")
    return args


def write_reports(rows: list[dict[str, Any]], anchors: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """``--output/report_<set>.html`` for the last variant's last weights on each evaluation set."""
    from transcoder.evaluation.report_html import QUALITY_COLUMNS, quality_table, write_report

    scored = [row for row in rows if not row.get("failed")]
    if not scored:
        print("warning: --report: every variant failed, no report written", file=sys.stderr)
        return
    last = scored[-1]
    run_dir = Path(args.output) / last["variant"]
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    tok = load_scored_tokenizer(checkpoint, args.device, last["weights"] == "ema", args.vocoder, args.trust_config)
    for set_name, (root, language) in args.holdout_plan["sets"].items():
        row = next(r for r in rows if r["variant"] == last["variant"] and r["weights"] == last["weights"]
                   and r["eval_set"] == set_name)
        examples = report_examples(tok, root, args, language, anchors.get(set_name) is not None)
        results = {"rates": row["rates"], "spectrogram": row["spectrogram"], "audio": row.get("audio"),
                   "perceptual": row.get("perceptual")}
        table_rows = quality_table(results, anchors.get(set_name))
        notes = [args.holdout_plan["note"], *(anchors.get(set_name) or {}).get("notes", [])]
        write_report(Path(args.output) / f"report_{set_name}.html", title=f"{last['variant']} ({last['weights']} "
                     f"weights), {set_name} voices: {root}", table_columns=QUALITY_COLUMNS, table_rows=table_rows,
                     examples=examples, sample_rate=tok.sample_rate, mel_fn=_mel_db_fn(tok), notes=notes,
                     meta=f"step {row['steps']}, {row['device']}; audio metrics on {row.get('audio_windows', 0)} "
                          "windows")


def _mel_db_fn(tok: Any) -> Any:
    def mel_db(audio: Any) -> Any:
        with torch.inference_mode():
            wave = torch.as_tensor(audio, dtype=torch.float32, device=tok.device)[None]
            return tok.frontend.model_to_db(tok.frontend(wave))[0].cpu().numpy()
    return mel_db


def report_examples(tok: Any, root: str, args: argparse.Namespace, language: str | None,
                    with_anchors: bool) -> list[Any]:
    """``--report-examples`` windows spread over sources and files (seed 0): original, tokenizer renderings and
    (optionally) anchors, each titled with its path under ``root`` and its source."""
    from transcoder.evaluation.evaluate import render_pair
    from transcoder.evaluation.report_html import ReportExample

    spec = dataset_spec_for(root)
    dataset = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    anchor_audio: list[dict[str, Any]] = []
    if with_anchors:
        anchor_audio = evaluate_anchors(dataset, tok.frontend, tok.vocoder, tok.bitrate, batch_size=1,
                                        max_batches=args.report_examples, examples=args.report_examples,
                                        quiet=False)["examples"]
    chosen = representative_windows(dataset, args.report_examples, seed=0)
    sources = {e["index"]: e.get("source", "all") for e in anchor_audio}
    examples = []
    for index in progress(chosen.indices, desc="report: tokenizer examples", unit="example"):
        item = dataset[index]
        n_valid = int(item["num_valid"])
        if n_valid == 0:
            continue
        wave = item["audio"][None].to(tok.device)
        with torch.inference_mode():
            mel = tok.frontend(wave)
            recon = tok.model(mel)[0].float()
            gl_input, gl_recon = render_pair(tok.griffin_lim, mel, recon, [index], wave.shape[-1])
        renderings = {"original": item["audio"][:n_valid].numpy(),
                      "tokenizer + Griffin-Lim": gl_recon[0, :n_valid].numpy(),
                      "Griffin-Lim ceiling (true mel)": gl_input[0, :n_valid].numpy()}
        if tok.neural_vocoder is not None:
            with torch.inference_mode():
                vocoded = tok.neural_vocoder(recon, wave.shape[-1])
            renderings["tokenizer + neural vocoder"] = vocoded[0, :n_valid].cpu().numpy()
        for example in anchor_audio:
            if example["path"] == item["path"] and example["offset"] == int(item["offset"]):
                renderings.update({k: v for k, v in example["audio"].items() if k != "griffin-lim ceiling"})
        title = example_title(item["path"], root, int(item["offset"]) / tok.sample_rate)
        examples.append(ReportExample(title + (f" (source {sources[index]})" if index in sources else ""),
                                      renderings, {"tokenizer (decoded mel)": tok.frontend.model_to_db(recon)[0]
                                                   .cpu().numpy()[: -(-n_valid // tok.hop_length)]}))
    return examples


def main(argv: list[str] | None = None) -> int:
    install_console_warnings()
    args = parse_args(argv)
    try:
        if args.perceptual:
            require_eval_extra()
        texts = [*(read_grid_file(args.grid) if args.grid else []), *args.variant]
        variants = [parse_variant(text) for text in texts] or [("base", [])]
        names = [name for name, _ in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        results_path = Path(args.results) if args.results else output / "results.jsonl"
        results_path.parent.mkdir(parents=True, exist_ok=True)
        args.holdout_plan = plan_holdout(args)
        print(f"voices: {args.holdout_plan['note']}", flush=True)
        rows = read_results(results_path)
        runs = pending_runs(variants, args.seeds, rows)
        other_floor = sorted({row["variant"] for row in rows if row["variant"] in names and not row.get("failed")
                              and (row.get("spectrogram") or {}).get("common_floor_db") != args.common_floor_db})
        if other_floor:
            raise ValueError(f"{results_path}: the rows of {other_floor} were scored with another --common-floor-db "
                             f"than {args.common_floor_db}; keep the value or write to another --results file")
        skipped = len(variants) * len(args.seeds or [None]) - len(runs)
        if skipped:
            print(f"{skipped} (variant, seed) run(s) already in {results_path}: skipped", flush=True)
        anchors_path = output / "anchors.json"
        anchors: dict[str, dict[str, Any]] = json.loads(anchors_path.read_text()) if anchors_path.exists() else {}
        for index, (name, overrides, seed) in enumerate(runs, 1):
            print(f"[{index}/{len(runs)}] variant {name}" + ("" if seed is None else f" seed {seed}"), flush=True)
            try:
                new_rows = run_variant(name, overrides, args, seed)
            except NonFiniteLossError as err:  # a diverging variant is a result: record it, go on with the grid
                print(f"warning: variant {name}" + ("" if seed is None else f" seed {seed}") + f" failed: {err}; "
                      "recorded in the results file (remove its line to run it again)", file=sys.stderr, flush=True)
                new_rows = [{"variant": name, "overrides": overrides, "seed": 0 if seed is None else seed,
                             "preset": args.preset, "failed": f"diverged: {err}"}]
            append_results(results_path, new_rows)
            rows += new_rows
            if args.anchors and not anchors and args.audio_batches > 0 and not new_rows[0].get("failed"):
                checkpoint = output / run_folder_name(name, seed, args.seeds) / "checkpoints" / "latest.pt"
                anchors = {set_name: score_anchors(checkpoint, root, args, language)
                           for set_name, (root, language) in args.holdout_plan["sets"].items()
                           if not args.eval_sets or set_name in args.eval_sets}
                for result in anchors.values():
                    result.pop("examples", None)
                write_metrics_json(anchors_path, anchors)
            summary = {"command": sys.argv, "voices": {k: v for k, v in args.holdout_plan.items() if k != "sets"},
                       "eval_sets": args.holdout_plan["sets"], "rows": rows, "anchors": anchors}
            write_metrics_json(output / "results.json", summary)
            (output / "results.md").write_text(table(rows) + "\n\n" + (anchor_table(anchors) + "\n" if anchors else ""))
        if not rows:
            raise ValueError("no variant was run and the results file holds none")
        if all(row.get("failed") for row in rows):
            raise ValueError(f"every variant failed (see {results_path})")
        if args.report:
            write_reports(rows, anchors, args)
    except (ConfigError, ValueError, FileNotFoundError, NotImplementedError, MissingExtraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(rows))
    if anchors:
        print(anchor_table(anchors))
    print(f"voices: {args.holdout_plan['note']}")
    scored = next(row for row in rows if not row.get("failed"))
    print(f"device: {scored['device']}, {scored['threads']} torch threads; wrote {output / 'results.json'} and "
          f"{results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
