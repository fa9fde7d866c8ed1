"""Evaluate an audio tokenizer: spectrogram, codebook and audio metrics, usable from Python.

    from transcoder.api import load_tokenizer
    from transcoder.data import build_dataset
    from transcoder.evaluation.evaluate import evaluate_tokenizer

    tok = load_tokenizer("best.pt")
    data = build_dataset(spec, sample_rate=tok.sample_rate, clip_samples=tok.window_samples, mode="eval")
    results = evaluate_tokenizer(tok, data, output_dir="outputs/eval")

The data are cut into non-overlapping windows of the model's length (eval mode of the datasets, the
last window of a file zero-padded). Spectrogram errors and code usage follow
:class:`~transcoder.evaluation.reconstruction.ReconstructionMetrics` (valid frames and the token rows
covering them only; the same class computes the trainer's validation). Audio metrics (PESQ-WB, STOI,
SI-SNR) compare Griffin-Lim renderings (``tok.griffin_lim``) with the original waveform, for the
reconstruction AND for the input mel itself (the vocoder ceiling), with the dB MAE between each
rendering's log-mel and the input mel (``mel_mae_db``: how faithfully the renderer reproduces the
spectrogram); any other renderer (``renderer=``, by default ``tok.renderer``: the neural vocoder of
``load_tokenizer(ckpt, vocoder=...)``) is also scored, side by side, with its own ceiling.
Window ``i`` is rendered alone with phase seed ``seed + i``, so its scores do not depend on the batch
size. The tokenizer is anything with the attributes of
:class:`~transcoder.evaluation.protocol.EvaluatedTokenizer` (``transcoder.api.AudioTokenizer`` has them).
Griffin-Lim's phase is random, so its SI-SNR is reported but is not a meaningful quality measure
here; PESQ and STOI are.

With ``perceptual=True`` (the ``eval`` extra) every rendering and the original are also scored with
DNSMOS and, for English material (``language="en"``), dWER / WER, per file
(:mod:`transcoder.evaluation.perceptual`).

A window that fails to decode is left out of every metric and count and listed under
``skipped_windows``; files whose header is unreadable are listed in ``skipped_files``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from transcoder.audio.render import Renderer
from transcoder.data import collate_audio
from transcoder.evaluation.metrics import mel_l1, si_snr, spectrogram_mae_db, spectrogram_mse_db, speech_quality
from transcoder.evaluation.protocol import EvaluatedTokenizer
from transcoder.evaluation.reconstruction import ReconstructionMetrics
from transcoder.evaluation.subset import (
    file_sources,
    incomplete_files,
    representative_windows,
    sources_line,
    window_files,
)
from transcoder.utils.config_files import read_config_file
from transcoder.utils.names import display_name, fit_name
from transcoder.utils.progress import progress
from transcoder.utils.rates import token_rates
from transcoder.utils.targets import check_trusted_spec

__all__ = ["MeanAccumulator", "dataset_spec", "evaluate_tokenizer", "format_table", "render_pair",
           "example_name", "example_title", "example_windows", "reconstruct", "save_examples", "scored_bits",
           "write_metrics_json", "bits_row", "format_bits_table", "parse_bits"]


def dataset_spec(checkpoint_config: dict[str, Any], audio_dir: str | None = None, data_config: str | None = None,
                 split: str = "val", trust_config: bool = False) -> dict[str, Any]:
    """The eval dataset ``{target, params}``: ``audio_dir``, a YAML ``data_config`` (a full config, whose
    ``data.<split>`` is used, or a bare spec), or the checkpoint config's ``data.<split>``.

    A spec taken from the checkpoint must name one of the project's datasets unless ``trust_config``
    (:func:`~transcoder.utils.targets.check_trusted_spec`; a bare name means one of ``transcoder.data``).
    """
    if audio_dir is not None:
        return {"target": "transcoder.data.AudioFolderDataset", "params": {"root": audio_dir}}
    if data_config is not None:
        path = Path(data_config)
        if not path.is_file():
            raise FileNotFoundError(f"--data-config {path} does not exist")
        raw = read_config_file(path).values  # a full config's base: chain merged
        if "target" in raw:
            return raw  # a bare dataset spec
        spec = (raw.get("data") or {}).get(split) if isinstance(raw, dict) else None
        if not spec:
            raise ValueError(f"{path}: no data.{split} dataset spec (expected a full config or "
                             f"{{target: ..., params: ...}})")
        return spec
    spec = (checkpoint_config.get("data") or {}).get(split)
    if not spec:
        raise ValueError(f"the checkpoint's config has no data.{split}; pass --audio-dir or --data-config")
    target = spec.get("target") if isinstance(spec, dict) else None
    if isinstance(target, str) and "." not in target:
        spec = {**spec, "target": f"transcoder.data.{target}"}
    check_trusted_spec(spec, f"checkpoint config data.{split}", trust_config)
    return spec


def finite_or_none(value: Any) -> Any:
    """Non-finite floats (anywhere in nested dicts / lists) -> ``None``."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_metrics_json(path: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` as strict JSON, NaN / Inf written as ``null``.

    Python's ``json`` writes NaN as the bare token ``NaN`` by default, which is not JSON: strict
    parsers (``jq``, JavaScript's ``JSON.parse``, most non-Python readers) reject the whole file.
    Scores can be NaN legitimately (PESQ / STOI of a silent window, a mean over no clips), so they are
    converted to ``null`` and ``allow_nan=False`` guarantees nothing non-standard slips through.
    """
    path = Path(path)
    path.write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False, default=float))
    return path


class MeanAccumulator:
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


#: The longest ending :func:`save_examples` adds to an example's name.
EXAMPLE_SUFFIX = "_vocoder_reconstruction.wav"


def _relative(path: str, root: str | None) -> Path:
    relative = Path(path)
    if root is not None:
        with contextlib.suppress(ValueError):
            relative = Path(path).resolve().relative_to(Path(root).resolve())
    return relative


def example_name(path: str, root: str | None) -> str:
    """A file's name for example outputs: its path under ``root`` with the folders kept (``/`` → ``__``) and
    the suffix dropped, so files of the same base name in different folders (speakers) stay apart."""
    parts = [part for part in _relative(path, root).with_suffix("").parts if part not in ("/", "..")]
    return "__".join(parts).replace(" ", "_")


def example_title(path: str, root: str | None, seconds: float) -> str:
    """A page title of an example window: its file's path under ``root`` (the folders tell files of the same
    name apart) with control and bidirectional characters escaped (:func:`~transcoder.utils.names.display_name`),
    and the window's start."""
    return f"{display_name(_relative(path, root).as_posix())} @ {seconds:.2f} s"


def example_windows(dataset: Any, num_audio: int, evaluated: int) -> set[int]:
    """Dataset indices of the ``num_audio`` windows saved as examples, among the first ``evaluated``:
    the middle window of files spread evenly over the (sorted) file list, so the examples cover many files
    (speakers) rather than the first windows of the first file; deterministic. Datasets without a
    per-file window count (:meth:`transcoder.data.AudioClipDataset.eval_window_ends`) get evenly spaced
    windows."""
    if num_audio <= 0 or evaluated <= 0:
        return set()
    ends_of = getattr(dataset, "eval_window_ends", None)
    chosen: list[int] = []
    if callable(ends_of):
        ends = [int(end) for end in ends_of()]
        starts = [0, *ends[:-1]]
        files = [(start, end) for start, end in zip(starts, ends, strict=True) if start < min(end, evaluated)]
        count = min(num_audio, len(files))
        for i in range(count):
            start, end = files[(2 * i + 1) * len(files) // (2 * count)]
            chosen.append((start + min(end, evaluated)) // 2 if min(end, evaluated) > start else start)
    spread = [(2 * i + 1) * evaluated // (2 * num_audio) for i in range(min(num_audio, evaluated))]
    for index in spread:  # fewer files than examples: fill with evenly spaced windows
        if len(set(chosen)) >= min(num_audio, evaluated):
            break
        if index not in chosen:
            chosen.append(index)
    return set(chosen)


def save_examples(out_dir: Path, index: int, tok: EvaluatedTokenizer, item: dict[str, Any]) -> None:
    """Spectrogram PNG (input / reconstruction / difference) and three WAVs of one window into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    name = fit_name(f"{index:03d}_{example_name(item['path'], item.get('root'))}_{item['offset']}", EXAMPLE_SUFFIX)
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
    fig.suptitle(display_name(f"{item['path']} @ {item['offset'] / tok.sample_rate:.2f} s"))
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    plt.close(fig)
    for suffix in ("original", "gl_input", "gl_reconstruction", "vocoder_input", "vocoder_reconstruction"):
        if suffix not in item:
            continue
        sf.write(str(out_dir / f"{name}_{suffix}.wav"), item[suffix], tok.sample_rate, subtype="PCM_16")


def render_pair(renderer: Renderer, mel: Tensor, recon: Tensor, seeds: list[int],
                length: int) -> tuple[Tensor, Tensor]:
    """``renderer``'s audio of the input and reconstructed model-space mels ``(B, T, F)``, window ``b``
    rendered on its own with phase seed ``seeds[b]`` (a batched Griffin-Lim call would draw one random
    phase for the whole batch, making a window's audio depend on the batch size and its position in it).

    Returns:
        ``(of_input, of_recon)``, each ``(B, length)`` float32 on the CPU.
    """
    def each(x: Tensor) -> Tensor:
        return torch.stack([renderer.render(x[b:b + 1], length, seed)[0].float().cpu() for b, seed in enumerate(seeds)])

    return each(mel), each(recon)


def scored_bits(tok: EvaluatedTokenizer, bits: int | None) -> int:
    """The width to score at: ``bits`` (checked) or the model's ``bits_per_token``.

    ``ValueError`` for a width outside ``1..bits_per_token``, or fewer bits on a model trained without
    ``model.params.nested_bits``.
    """
    full = tok.bits_per_token
    if bits is None:
        return full
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= full:
        raise ValueError(f"bits={bits!r}: expected an integer in 1..{full} (the checkpoint makes {full}-bit codes)")
    if bits < full and getattr(tok.model, "nested_bits", None) is None:
        raise ValueError(f"bits={bits}: this checkpoint was trained for {full}-bit codes only; fewer bits need a "
                         "model trained with model.params.nested_bits")
    return bits


@torch.inference_mode()
def reconstruct(tok: EvaluatedTokenizer, mel: Tensor, bits: int | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Model-space mel ``(B, T, F)`` -> ``(reconstruction (B, T, F) float32, quant_loss, info)`` through codes of
    ``bits`` bits (default: the model's full width; ``info["indices"]`` are ``bits``-bit)."""
    if bits is None or bits == tok.bits_per_token:
        recon, quant_loss, info = tok.model(mel)
        return recon.float(), quant_loss, info
    codes, quant_loss, info = tok.model.encode(mel, bits=bits)
    return tok.model.decode(codes, info["grid"]).float(), quant_loss, info


def _clip_key(side: str, metric: str) -> str:
    """Per-clip key of a side's metric: ``pesq`` / ``ceiling_pesq`` / ``vocoder_pesq`` / ``vocoder_ceiling_pesq``."""
    return metric if side == "recon" else f"{side.removesuffix('_recon')}_{metric}"


def evaluate_tokenizer(
    tok: EvaluatedTokenizer,
    dataset: Any,
    *,
    renderer: Renderer | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    max_batches: int | None = None,
    num_audio: int = 4,
    audio_metrics: bool = True,
    seed: int = 0,
    metric_workers: int = 1,
    output_dir: str | Path | None = None,
    dataset_spec: dict[str, Any] | None = None,
    quiet: bool = True,
    perceptual: bool = False,
    language: str | None = None,
    bits: int | None = None,
    common_floor_db: float | None = None,
) -> dict[str, Any]:
    """Evaluate a tokenizer on an eval-mode dataset of model windows (see the module docstring).

    Args:
        tok: the tokenizer (:class:`~transcoder.evaluation.protocol.EvaluatedTokenizer`; its ``griffin_lim``
            renders the Griffin-Lim scores, so its ``n_iter`` sets the iterations).
        dataset: a dataset built with ``mode="eval"`` and ``clip_samples=tok.window_samples`` whose items
            :func:`transcoder.data.collate_audio` batches (``audio (B, S)``, ``num_valid``, ``path``, ``offset``).
        renderer: scored beside Griffin-Lim (sides ``vocoder_recon`` / ``vocoder_ceiling``) unless it is
            ``tok.griffin_lim``; default ``tok.renderer``.
        batch_size, num_workers: DataLoader settings.
        max_batches: score ``max_batches * batch_size`` windows spread over sources and files, seeded by ``seed``
            (:func:`~transcoder.evaluation.subset.representative_windows`; ``results["subset"]`` names them);
            ``None``: every window.
        num_audio: windows (spread the same way among the scored ones) saved as PNG + WAV under
            ``output_dir/examples`` (needs ``output_dir``).
        audio_metrics: Griffin-Lim renderings and PESQ / STOI / SI-SNR.
        seed: Griffin-Lim phase seed of window 0 (window ``i`` uses ``seed + i``).
        metric_workers: processes computing PESQ / STOI (1 = in this process).
        output_dir: where ``metrics.json`` and ``examples/`` go; ``None`` writes nothing.
        dataset_spec: recorded under ``"dataset"`` in the results.
        quiet: no progress bars (the scoring pass, and with ``perceptual`` DNSMOS and recognition).
        perceptual: also DNSMOS and (English only) dWER / WER of every rendering, per file (needs the
            ``eval`` extra and ``audio_metrics``; :class:`~transcoder.evaluation.perceptual.MissingExtraError`
            without the extra).
        language: the material's language: ``"en"`` enables dWER / WER; per source ``"fr_voice=fr,en_voice=en"``
            (:mod:`transcoder.evaluation.asr_guard`: sources the recogniser does not understand are left out of
            dWER / WER and listed in ``results["asr_reliability"]``).
        bits: score codes of their first ``bits`` bits (a model trained with ``model.params.nested_bits``;
            default: the model's full width). The rates, code usage and entropy are those of ``bits``-bit
            codes (``quant_loss`` is the quantizer's, at full width).
        common_floor_db: also score the log-mel MAE with both mels clamped below at this dB level
            (``results["spectrogram"]["mae_db_common_floor"]``), to compare models trained with different
            ``data.db_min``: use the highest of their floors (``ValueError`` below this model's own floor, where
            the clamp would change nothing).

    Returns:
        The results dict (also written to ``output_dir/metrics.json`` with NaN as ``null``).
    """
    width = scored_bits(tok, bits)
    if common_floor_db is not None:
        own_floor = tok.frontend.config.db_min
        if not math.isfinite(common_floor_db) or common_floor_db < own_floor:
            raise ValueError(f"common_floor_db={common_floor_db!r}: expected a finite level at or above this model's "
                             f"own floor data.db_min={own_floor:g} dB (give the highest floor among the models "
                             "compared)")
    scorer = None
    if perceptual:
        if not audio_metrics:
            raise ValueError("evaluate_tokenizer: perceptual=True needs audio_metrics=True (it scores the renderings)")
        from transcoder.evaluation.perceptual import PerceptualScorer, transcript_of

        scorer = PerceptualScorer(tok.sample_rate, language=language, ceiling="ceiling", show_progress=not quiet)
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is None:
        num_audio = 0
    else:
        (out_dir / "examples").mkdir(parents=True, exist_ok=True)
    subset = representative_windows(dataset, None if max_batches is None else max_batches * batch_size, seed)
    sources = file_sources(dataset)[0] if window_files(dataset) is not None else []
    loader = DataLoader(Subset(dataset, subset.indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_audio)
    pt = tok.patch_size[0]
    totals = ReconstructionMetrics(tok.frontend, width, pt, "cpu", common_floor_db=common_floor_db)
    # Sides: Griffin-Lim of the reconstruction / of the input mel (its ceiling); with another renderer also
    # its two renderings.
    other = tok.renderer if renderer is None else renderer
    other = None if other is tok.griffin_lim else other
    sides = ["recon", "ceiling"] + (["vocoder_recon", "vocoder_ceiling"] if other is not None else [])
    metrics = ("pesq", "stoi", "si_snr", "mel_mae_db")
    audio = {f"{side}_{metric}": MeanAccumulator() for side in sides for metric in metrics}
    per_clip: list[dict[str, Any]] = []
    files: set[str] = set()
    skipped: list[str] = []
    skipped_windows: list[dict[str, Any]] = []
    saved = 0
    next_position = 0  # position in subset.indices of the batch's first window (the loader does not shuffle)
    # spawn, not fork: a forked child of a process that has run torch's OpenMP pool can hang.
    pool = (ProcessPoolExecutor(metric_workers, mp_context=multiprocessing.get_context("spawn"))
            if metric_workers > 1 and audio_metrics else None)
    started = time.perf_counter()
    examples = (set(representative_windows(dataset, num_audio, seed, among=subset.indices).indices)
                if num_audio else set())
    bar = progress(desc="tokenizer" + (" + renderings" if audio_metrics else ""), total=len(subset.indices),
                   disable=quiet)
    done = 0  # windows of the batches before this one (the bar advances once a batch is scored)
    try:
        for batch in loader:
            bar.update(done)
            done = len(batch["path"])
            skipped.extend(batch["skipped"])
            # Windows that failed to decode (num_valid == 0) are zeros: keep them out of every metric.
            indices = subset.indices[next_position:next_position + len(batch["path"])]
            next_position += len(batch["path"])
            keep = [b for b, n in enumerate(batch["num_valid"].tolist()) if n > 0]
            skipped_windows += [{"index": indices[b], "path": batch["path"][b], "offset": int(batch["offset"][b])}
                                for b in sorted(set(range(len(indices))) - set(keep))]
            if not keep:
                continue
            file_index = [int(batch["file_index"][b]) for b in keep]
            source = [sources[f] if f < len(sources) else "all" for f in file_index]
            window_index = [indices[b] for b in keep]
            paths = [batch["path"][b] for b in keep]
            offsets = [int(batch["offset"][b]) for b in keep]
            valid_samples = [int(batch["num_valid"][b]) for b in keep]
            ref = batch["audio"][keep]  # (B', S) on the CPU
            wave = ref.to(tok.device)
            with torch.inference_mode():
                mel = tok.frontend(wave)  # (B', T, F) model space
                recon, quant_loss, info = reconstruct(tok, mel, width)
                input_db, recon_db = tok.frontend.model_to_db(mel), tok.frontend.model_to_db(recon)
            totals.update(recon, mel, float(quant_loss), info["indices"], torch.tensor(valid_samples))
            first_clip = len(per_clip)
            for b, n_valid in enumerate(valid_samples):
                frames = min(mel.shape[1], -(-n_valid // tok.hop_length))
                mse = spectrogram_mse_db(recon_db[b:b + 1, :frames], input_db[b:b + 1, :frames]).item()
                mae = spectrogram_mae_db(recon_db[b:b + 1, :frames], input_db[b:b + 1, :frames]).item()
                err_l1 = mel_l1(recon[b:b + 1, :frames], mel[b:b + 1, :frames]).item()
                files.add(paths[b])
                per_clip.append({"index": window_index[b], "path": paths[b], "offset": offsets[b],
                                 "seconds": n_valid / tok.sample_rate, "mse_db": mse, "mae_db": mae, "l1": err_l1})
            if not (audio_metrics or examples.intersection(window_index)):
                continue
            with torch.inference_mode():
                seeds = [seed + i for i in window_index]
                gl_input, gl_recon = render_pair(tok.griffin_lim, mel, recon, seeds, ref.shape[-1])
                renders = {"recon": gl_recon, "ceiling": gl_input}
                if other is not None:
                    renders["vocoder_ceiling"], renders["vocoder_recon"] = render_pair(other, mel, recon, seeds,
                                                                                       ref.shape[-1])
            jobs = []
            for b, n_valid in enumerate(valid_samples):
                r = ref[b, :n_valid]
                clip = per_clip[first_clip + b]
                if audio_metrics:
                    for side in sides:
                        estimate = renders[side][b, :n_valid]
                        snr = si_snr(estimate, r).item()
                        audio[f"{side}_si_snr"].add(snr)
                        clip[_clip_key(side, "si_snr")] = snr
                        # How far the rendering's own log-mel is from the input mel (dB, valid frames).
                        frames = n_valid // tok.hop_length
                        if frames > 0:
                            with torch.inference_mode():
                                rendered = tok.frontend(estimate[: frames * tok.hop_length])
                                rendered_db = tok.frontend.model_to_db(rendered)
                            mae = spectrogram_mae_db(rendered_db, input_db[b, :frames].cpu()).item()
                            audio[f"{side}_mel_mae_db"].add(mae)
                            clip[_clip_key(side, "mel_mae_db")] = mae
                        jobs.append((r.numpy(), estimate.numpy()))
                        if scorer is not None:
                            scorer.add(side, paths[b], offsets[b], estimate.numpy(), source=source[b])
                    if scorer is not None:
                        scorer.add("original", paths[b], offsets[b], r.numpy(),
                                   transcript_of(dataset, file_index[b]), source=source[b])
                if window_index[b] in examples and out_dir is not None:
                    save_examples(out_dir / "examples", saved, tok, {
                        "path": paths[b], "offset": offsets[b], "root": getattr(dataset, "root", None),
                        "input_db": input_db[b].cpu().numpy(), "recon_db": recon_db[b].cpu().numpy(),
                        "original": r.numpy(), "gl_input": gl_input[b, :n_valid].numpy(),
                        "gl_reconstruction": gl_recon[b, :n_valid].numpy(),
                        **({"vocoder_input": renders["vocoder_ceiling"][b, :n_valid].numpy(),
                            "vocoder_reconstruction": renders["vocoder_recon"][b, :n_valid].numpy()}
                           if other is not None else {})})
                    saved += 1
            refs, ests = [j[0] for j in jobs], [j[1] for j in jobs]
            rates = [tok.sample_rate] * len(jobs)
            flat = list(pool.map(speech_quality, refs, ests, rates) if pool else map(speech_quality, refs, ests, rates))
            for job, (pesq_value, stoi_value) in enumerate(flat):
                b, side = divmod(job, len(sides))
                clip = per_clip[first_clip + b]
                for metric, value in (("pesq", pesq_value), ("stoi", stoi_value)):
                    audio[f"{sides[side]}_{metric}"].add(value)
                    clip[_clip_key(sides[side], metric)] = value
        bar.update(done)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()

    windows = len(per_clip)
    if windows == 0:
        raise RuntimeError(f"no windows were evaluated ({len(skipped_windows)} failed to decode, e.g. "
                           f"{skipped_windows[:3]}; skipped files: {sorted(set(skipped))[:3]})")
    summary = totals.compute()
    rates = token_rates(tok.patch_size, tok.mel_config.n_mels, tok.hop_length, tok.sample_rate, width)
    results: dict[str, Any] = {
        "checkpoint": str(tok.checkpoint_path.resolve()) if tok.checkpoint_path is not None else None,
        "checkpoint_sha256": tok.checkpoint_sha256,
        "step": tok.checkpoint_step,
        "weights": tok.weights,
        "device": str(tok.device),
        "processes": 1,
        "dataset": dataset_spec,
        "windows": windows,
        "files": len(files),
        # Header failures are found by the main process while counting windows; decode failures in
        # the workers reach it through the batches.
        "skipped_files": sorted(set(skipped) | set(dataset.skipped_files)),
        "num_skipped_windows": len(skipped_windows),
        "skipped_windows": skipped_windows,
        "audio_seconds": sum(c["seconds"] for c in per_clip),
        "subset": subset.to_dict(),
        "elapsed_seconds": time.perf_counter() - started,
        "rates": {"tokens_per_second": rates.tokens_per_second, "bits_per_token": width,
                  "bitrate": rates.bits_per_second, "model_bits": tok.bits_per_token,
                  "patch_size": list(tok.patch_size),
                  "grid_per_window": [tok.time_rows_per_window, tok.n_freq_patches]},
        "spectrogram": {"mse_db": summary.mse_db, "mae_db": summary.mae_db, "l1_model": summary.l1,
                        "quant_loss": summary.quant_loss,
                        **({} if common_floor_db is None else {"common_floor_db": float(common_floor_db),
                                                               "mae_db_common_floor": summary.mae_db_common_floor})},
        "codebook": summary.codebook.to_dict(),
        "vocoder": {**tok.griffin_lim.describe(), "seed": seed, "seed_per_window": "seed + window index"},
        "neural_vocoder": None if other is None else other.describe().get("checkpoint", other.kind),
        "per_clip": per_clip,
    }
    if audio_metrics:
        results["audio"] = {
            side: {metric: audio[f"{side}_{metric}"].value for metric in metrics}
            | {f"{metric}_clips": audio[f"{side}_{metric}"].count for metric in ("pesq", "stoi")}
            | {f"{metric}_skipped": audio[f"{side}_{metric}"].skipped for metric in ("pesq", "stoi")}
            for side in sides
        }
    if scorer is not None:
        # A limited subset may score only some windows of a file: kept out of the reference WER.
        results["perceptual"] = scorer.compute(incomplete_files(dataset, subset.indices))
        results["asr_reliability"] = scorer.reliability
        results["elapsed_seconds"] = time.perf_counter() - started  # the perceptual scoring included
    if out_dir is not None:
        write_metrics_json(out_dir / "metrics.json", results)
    return results


def parse_bits(text: str) -> list[int]:
    """``"9,12,15,18"`` -> ``[9, 12, 15, 18]``: the widths a ``--bits`` flag names (an argparse ``type``)."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        widths = []
    if not widths or len(set(widths)) != len(widths) or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct positive integers separated by commas, "
                                         "e.g. 9,12,15,18")
    return widths


def bits_row(results: dict[str, Any]) -> dict[str, Any]:
    """One summary row of :func:`evaluate_tokenizer`'s results: width, bit/s, spectrogram errors, code use,
    Griffin-Lim PESQ / STOI (``None`` without audio metrics)."""
    audio = (results.get("audio") or {}).get("recon") or {}
    return {"bits": results["rates"]["bits_per_token"], "bitrate": results["rates"]["bitrate"],
            "mae_db": results["spectrogram"]["mae_db"], "mse_db": results["spectrogram"]["mse_db"],
            "distinct_codes": results["codebook"]["distinct_codes"],
            "entropy_bits": results["codebook"]["entropy_bits"], "pesq": audio.get("pesq"), "stoi": audio.get("stoi")}


def format_bits_table(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`bits_row` (one per width of a nested-bits model) as a markdown table."""
    def fmt(value: Any) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    lines = ["| bits | bit/s | mel MAE (dB) | mel MSE (dB^2) | distinct codes | entropy (bits) | PESQ-WB | STOI |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['bits']} | {r['bitrate']:g} | {fmt(r['mae_db'])} | {fmt(r['mse_db'])} | {r['distinct_codes']} | "
              f"{fmt(r['entropy_bits'])} | {fmt(r['pesq'])} | {fmt(r['stoi'])} |" for r in rows]
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate_tokenizer`'s results."""
    s, c, r = results["spectrogram"], results["codebook"], results["rates"]
    lines = [
        f"checkpoint  {results['checkpoint']} (step {results['step']}, {results['weights']} weights)",
        f"data        {results['windows']} windows from {results['files']} files, "
        f"{results['audio_seconds']:.1f} s of audio; skipped: {len(results['skipped_files'])} files, "
        f"{results['num_skipped_windows']} windows that failed to decode",
        *([f"sources     {sources_line(results['subset'])}"] if "subset" in results else []),
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
            lines.append(f"{label:<28}{a['recon'][key]:>16.3f}{a['ceiling'][key]:>20.3f}"
                         f"{_scored(a['recon'], key, results['windows'])}")
        lines += ["  Griffin-Lim phase is random, so SI-SNR (phase-sensitive) is not meaningful here:",
                  f"{'  SI-SNR (dB, not meaningful)':<28}{a['recon']['si_snr']:>16.3f}{a['ceiling']['si_snr']:>20.3f}",
                  f"{'  mel MAE vs input (dB)':<28}{a['recon']['mel_mae_db']:>16.3f}"
                  f"{a['ceiling']['mel_mae_db']:>20.3f}"]
        if "vocoder_recon" in a:
            lines += ["", f"{'audio (neural vocoder)':<28}{'reconstruction':>16}{'voc(input) ceiling':>20}"]
            for key, label in (("pesq", "  PESQ-WB"), ("stoi", "  STOI"), ("si_snr", "  SI-SNR (dB)"),
                               ("mel_mae_db", "  mel MAE vs input (dB)")):
                lines.append(f"{label:<28}{a['vocoder_recon'][key]:>16.3f}{a['vocoder_ceiling'][key]:>20.3f}"
                             f"{_scored(a['vocoder_recon'], key, results['windows'])}")
    return "\n".join(lines)


def _scored(side: dict[str, Any], metric: str, windows: int) -> str:
    """``  (scored on 14 of 16 windows)`` for PESQ / STOI (they skip silent or too short windows)."""
    count = side.get(f"{metric}_clips")
    return f"  (scored on {count:,} of {windows:,} windows)" if count is not None else ""
