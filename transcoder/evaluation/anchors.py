"""Reference codecs ("anchors") scored on the same windows with the same metrics as a tokenizer.

A tokenizer's numbers mean little without what simple methods get on the same material:

* :class:`PooledMelCodec` — the trivial codec at the tokenizer's bitrate: the dB log-mel average-pooled to
  a coarse grid (``time_pool`` frames x ``n_bands`` mel bands), each cell uniformly quantised to ``bits``
  bits over the mel's dB range, decoded by repeating the cell's level. Its rate is exact:
  ``frames_per_second / time_pool * n_bands * bits`` bit/s. :meth:`PooledMelCodec.exact_rate_grids` lists
  every grid with exactly the tokenizer's rate; the evaluation scores all of them on the mel and renders
  the best (the strongest trivial codec at that rate). A learned tokenizer that does not beat it has
  learnt nothing beyond averaging.
* ``griffin-lim ceiling`` — the true mel rendered with Griffin-Lim: what a perfect mel tokenizer would
  score with this renderer.
* :class:`ExternalCodec` — Opus (``opusenc`` / ``opusdec``, Debian ``opus-tools``; hard CBR at 6 and
  12 kbit/s) and Codec 2 (``c2enc`` / ``c2dec``, Debian ``codec2``; 1200 and 3200 bit/s, 8 kHz
  narrow-band, resampled) when their tools are on PATH; otherwise skipped with a one-line note.

:func:`evaluate_anchors` cuts the data into the same windows as
:func:`~transcoder.evaluation.evaluate.evaluate_tokenizer` (same dataset, batch size and ``max_batches``)
and scores each anchor with the same functions: spectrogram MAE in dB of the codec's mel (for waveform
codecs, of the decoded audio's log-mel), PESQ-WB / STOI of the rendered audio (Griffin-Lim with the same
phase seed per window for mel codecs), the rendered audio's mel MAE, and optionally DNSMOS / dWER
(:class:`~transcoder.evaluation.perceptual.PerceptualScorer`).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from transcoder.audio.griffin_lim import GriffinLimVocoder
from transcoder.audio.mel import LogMelFrontend
from transcoder.data import collate_audio
from transcoder.evaluation.metrics import spectrogram_mae_db, spectrogram_mse_db, speech_quality
from transcoder.evaluation.perceptual import transcript_of
from transcoder.evaluation.subset import file_sources, incomplete_files, representative_windows, window_files
from transcoder.utils.progress import progress

__all__ = ["PooledMelCodec", "ExternalCodec", "default_external_codecs", "evaluate_anchors"]


@dataclass(frozen=True)
class PooledMelCodec:
    """The trivial mel codec: average-pool the dB mel to ``time_pool x band`` cells, quantise uniformly.

    Args:
        time_pool: frames per cell.
        n_bands: mel bands (the ``n_mels`` bins split into ``n_bands`` near-equal contiguous groups).
        bits: bits per cell (``2 ** bits`` uniform levels over ``[db_min, db_max]``, mid-point decoding).
        db_min, db_max: the dB range of the mel (the frontend's clamp range).
        frames_per_second: mel frames per second (sample rate / hop).
    """

    time_pool: int
    n_bands: int
    bits: int
    db_min: float
    db_max: float
    frames_per_second: float

    def __post_init__(self) -> None:
        if self.time_pool < 1 or self.n_bands < 1 or self.bits < 1:
            raise ValueError(f"PooledMelCodec: time_pool, n_bands and bits must be >= 1, got "
                             f"{self.time_pool}, {self.n_bands}, {self.bits}")
        if not self.db_max > self.db_min:
            raise ValueError(f"PooledMelCodec: db_max ({self.db_max}) must exceed db_min ({self.db_min})")

    @property
    def bitrate(self) -> float:
        """Bits per second: cells per second x bits per cell."""
        return round(self.frames_per_second / self.time_pool * self.n_bands * self.bits, 6)

    @property
    def name(self) -> str:
        return f"pooled-mel {self.time_pool}f x {self.n_bands}b x {self.bits}bit"

    def _band_edges(self, n_mels: int) -> list[int]:
        if self.n_bands > n_mels:
            raise ValueError(f"PooledMelCodec: {self.n_bands} bands > {n_mels} mel bins")
        return [round(i * n_mels / self.n_bands) for i in range(self.n_bands + 1)]

    def encode(self, mel_db: Tensor) -> Tensor:
        """``(B, T, F)`` dB mel → ``(B, ceil(T / time_pool), n_bands)`` int64 codes in ``[0, 2**bits)``.

        The last, partial time cell averages the frames it has.
        """
        batch, frames, n_mels = mel_db.shape
        cells = -(-frames // self.time_pool)
        pad = cells * self.time_pool - frames
        x = mel_db.float()
        if pad:  # repeat the last frame: the mean over the partial cell's own frames is unchanged
            x = torch.cat([x, x[:, -1:].expand(batch, pad, n_mels)], dim=1)
        x = x.reshape(batch, cells, self.time_pool, n_mels).mean(2)
        edges = self._band_edges(n_mels)
        bands = torch.stack([x[..., lo:hi].mean(-1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)], -1)
        levels = 2 ** self.bits
        step = (self.db_max - self.db_min) / levels
        return ((bands - self.db_min) / step).floor().clamp(0, levels - 1).long()

    def decode(self, codes: Tensor, frames: int, n_mels: int) -> Tensor:
        """Codes ``(B, cells, n_bands)`` → ``(B, frames, n_mels)`` dB mel (each cell's mid-level, repeated)."""
        step = (self.db_max - self.db_min) / 2 ** self.bits
        levels = self.db_min + (codes.float() + 0.5) * step
        widths = torch.tensor(np.diff(self._band_edges(n_mels)), device=codes.device)
        mel = levels.repeat_interleave(widths, dim=-1).repeat_interleave(self.time_pool, dim=1)
        return mel[:, :frames]

    def __call__(self, mel_db: Tensor) -> Tensor:
        """Encode and decode ``(B, T, F)`` dB mel."""
        return self.decode(self.encode(mel_db), mel_db.shape[1], mel_db.shape[2])

    @classmethod
    def exact_rate_grids(cls, bitrate: float, frames_per_second: float, n_mels: int, db_min: float, db_max: float,
                         max_time_pool: int = 16, max_bits: int = 8) -> list[PooledMelCodec]:
        """Every grid (``time_pool <= max_time_pool``, ``bits <= max_bits``, ``n_bands <= n_mels``) whose
        rate equals ``bitrate`` exactly (to 1e-6 bit/s)."""
        grids = []
        for time_pool in range(1, max_time_pool + 1):
            for bits in range(1, max_bits + 1):
                n_bands = bitrate * time_pool / (frames_per_second * bits)
                if abs(n_bands - round(n_bands)) < 1e-9 and 1 <= round(n_bands) <= n_mels:
                    grids.append(cls(time_pool, round(n_bands), bits, db_min, db_max, frames_per_second))
        if not grids:
            raise ValueError(f"no pooled-mel grid has exactly {bitrate:g} bit/s at {frames_per_second:g} frames/s "
                             f"(time_pool <= {max_time_pool}, bits <= {max_bits}, bands <= {n_mels})")
        return grids


@dataclass(frozen=True)
class ExternalCodec:
    """A waveform codec run through its command-line tools (one encode + decode per window).

    Args:
        kind: ``"opus"`` (``opusenc`` / ``opusdec``) or ``"codec2"`` (``c2enc`` / ``c2dec``).
        bitrate: bit/s (Opus: hard CBR; Codec 2: one of its modes, e.g. 1200 or 3200).
    """

    kind: str
    bitrate: int

    @property
    def name(self) -> str:
        return f"opus {self.bitrate / 1000:g} kbit/s" if self.kind == "opus" else f"codec2 {self.bitrate} bit/s"

    @property
    def tools(self) -> tuple[str, str]:
        if self.kind == "opus":
            return ("opusenc", "opusdec")
        if self.kind == "codec2":
            return ("c2enc", "c2dec")
        raise ValueError(f"ExternalCodec: unknown kind {self.kind!r} (expected 'opus' or 'codec2')")

    def missing_tools(self) -> list[str]:
        return [tool for tool in self.tools if shutil.which(tool) is None]

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``audio (S,)`` float → decoded ``(S,)`` float at ``sample_rate`` (trimmed / zero-padded to S)."""
        import soxr

        with tempfile.TemporaryDirectory(prefix="anchor_") as tmp:
            d = Path(tmp)
            if self.kind == "opus":
                sf.write(d / "in.wav", audio, sample_rate, subtype="PCM_16")
                _run(["opusenc", "--quiet", "--hard-cbr", "--bitrate", f"{self.bitrate / 1000:g}", str(d / "in.wav"),
                      str(d / "x.opus")])
                _run(["opusdec", "--quiet", "--rate", str(sample_rate), str(d / "x.opus"), str(d / "out.wav")])
                decoded, _ = sf.read(d / "out.wav", dtype="float32")
            else:
                narrow = soxr.resample(audio.astype(np.float32), sample_rate, 8000)
                pcm = (np.clip(narrow, -1, 1) * 32767).round().astype("<i2")
                (d / "in.raw").write_bytes(pcm.tobytes())
                _run(["c2enc", str(self.bitrate), str(d / "in.raw"), str(d / "x.c2")])
                _run(["c2dec", str(self.bitrate), str(d / "x.c2"), str(d / "out.raw")])
                out = np.frombuffer((d / "out.raw").read_bytes(), dtype="<i2").astype(np.float32) / 32768.0
                decoded = soxr.resample(out, 8000, sample_rate).astype(np.float32)
        if decoded.ndim > 1:
            decoded = decoded.mean(-1)
        fitted = np.zeros(audio.shape[-1], dtype=np.float32)
        fitted[: min(decoded.size, fitted.size)] = decoded[: fitted.size]
        return fitted


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-300:]}")


def default_external_codecs() -> tuple[list[ExternalCodec], list[str]]:
    """Opus 6 / 12 kbit/s and Codec 2 1200 / 3200 bit/s whose tools are on PATH, and one note per missing one."""
    codecs, notes = [], []
    for codec in (ExternalCodec("opus", 6000), ExternalCodec("opus", 12000), ExternalCodec("codec2", 1200),
                  ExternalCodec("codec2", 3200)):
        missing = codec.missing_tools()
        if missing:
            package = "opus-tools" if codec.kind == "opus" else "codec2"
            notes.append(f"{codec.name} skipped: {', '.join(missing)} not on PATH (Debian/Ubuntu: apt-get install "
                         f"{package})")
        else:
            codecs.append(codec)
    return codecs, notes


class _Mean:
    """Weighted running mean ignoring NaN (spectrogram errors are weighted by valid frames, as in
    :class:`~transcoder.evaluation.reconstruction.ReconstructionMetrics`; audio scores by window)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.weights: list[float] = []

    def add(self, value: float, weight: float = 1.0) -> None:
        if math.isfinite(value):
            self.values.append(value)
            self.weights.append(weight)

    @property
    def value(self) -> float:
        return float(np.average(self.values, weights=self.weights)) if self.values else float("nan")


def evaluate_anchors(
    dataset: Any,
    frontend: LogMelFrontend,
    vocoder: GriffinLimVocoder,
    bitrate: float,
    *,
    external: list[ExternalCodec] | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    audio_batches: int | None = None,
    seed: int = 0,
    perceptual: Any = None,
    examples: int = 0,
    quiet: bool = True,
) -> dict[str, Any]:
    """Score the anchors on the dataset's windows (see the module docstring).

    Args:
        dataset: an eval-mode dataset of ``frontend``-length windows (as for ``evaluate_tokenizer``).
        frontend, vocoder: the tokenizer's mel frontend and Griffin-Lim renderer.
        bitrate: the tokenizer's bit/s; the trivial codec matches it exactly.
        external: waveform codecs to run (default: :func:`default_external_codecs`).
        batch_size, max_batches: as in ``evaluate_tokenizer``: ``max_batches * batch_size`` windows spread over
            sources and files with ``seed`` (the same windows).
        audio_batches: ``audio_batches * batch_size`` of them (spread the same way) are rendered and scored
            (PESQ / STOI / perceptual); default all.
        seed: Griffin-Lim phase seed of window 0 (window ``i`` uses ``seed + i``, as the tokenizer's).
        perceptual: a :class:`~transcoder.evaluation.perceptual.PerceptualScorer` fed every rendering
            (its ``"original"`` windows too) and computed at the end (scores under each row's
            ``"perceptual"`` and ``"original"``), or ``None``.
        examples: this many rendered windows, spread over sources and files
            (:func:`~transcoder.evaluation.subset.representative_windows`), are returned under ``"examples"``.
        quiet: no progress bars (one per phase: the trivial codec's grids, then each anchor).

    Returns:
        ``{"rows": {name: metrics}, "notes": [...], "original": {...} | None, "trivial": [every exact-rate
        grid's spectrogram MAE / MSE], "trivial_choice": name, "windows": N, "examples": [...]}``.
    """
    notes: list[str] = []
    if external is None:
        external, notes = default_external_codecs()
    n_mels = frontend.config.n_mels
    fps = frontend.config.sample_rate / frontend.hop_length
    db_min, db_max = frontend.config.db_min, frontend.config.db_max
    grids = PooledMelCodec.exact_rate_grids(bitrate, fps, n_mels, db_min, db_max)
    subset = representative_windows(dataset, None if max_batches is None else max_batches * batch_size, seed)
    rendered = set(subset.indices if audio_batches is None else
                   representative_windows(dataset, audio_batches * batch_size, seed, among=subset.indices).indices)
    shown = set(representative_windows(dataset, examples, seed, among=sorted(rendered)).indices) if examples else set()
    sources = file_sources(dataset)[0] if window_files(dataset) is not None else []
    loader = DataLoader(Subset(dataset, subset.indices), batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=collate_audio)
    device = next(iter(frontend.buffers())).device
    # Pass 1 (cheap, spectrogram only): every exact-rate grid on every window; the best one is rendered.
    grid_err = {g.name: (_Mean(), _Mean()) for g in grids}
    windows: list[_Window] = []
    position = 0
    for batch in progress(loader, desc="anchors: trivial-codec grids", unit="batch", disable=quiet):
        indices = subset.indices[position:position + len(batch["path"])]
        position += len(batch["path"])
        keep = [b for b, n in enumerate(batch["num_valid"].tolist()) if n > 0]
        if not keep:
            continue
        with torch.inference_mode():
            mel_db = frontend.model_to_db(frontend(batch["audio"][keep].to(device))).cpu()
        for b, k in enumerate(keep):
            n_valid = int(batch["num_valid"][k])
            frames = min(mel_db.shape[1], -(-n_valid // frontend.hop_length))
            file_index = int(batch["file_index"][k])
            windows.append(_Window(indices[k], batch["path"][k], int(batch["offset"][k]), n_valid, frames,
                                   batch["audio"][k], mel_db[b:b + 1],
                                   sources[file_index] if file_index < len(sources) else "all",
                                   transcript_of(dataset, file_index)))
            ref = mel_db[b:b + 1, :frames]
            for grid in grids:
                rec = grid(ref)
                grid_err[grid.name][0].add(spectrogram_mae_db(rec, ref).item(), frames)
                grid_err[grid.name][1].add(spectrogram_mse_db(rec, ref).item(), frames)
    trivial = min(grids, key=lambda g: grid_err[g.name][0].value)
    trivial_grids = [{"name": g.name, "time_pool": g.time_pool, "n_bands": g.n_bands, "bits": g.bits,
                      "bitrate": g.bitrate, "mae_db": grid_err[g.name][0].value, "mse_db": grid_err[g.name][1].value}
                     for g in grids]

    names = [f"trivial {trivial.name}", "griffin-lim ceiling", *[c.name for c in external]]
    rates = [trivial.bitrate, None, *[float(c.bitrate) for c in external]]
    metrics = ("pesq", "stoi", "mel_mae_db", "mae_db", "mse_db")
    acc = {name: {m: _Mean() for m in metrics} for name in names}
    example_audio: dict[int, dict[str, np.ndarray]] = {w.index: {} for w in windows if w.index in shown}
    started = time.perf_counter()
    for w in windows:  # the mel anchors' own spectrogram error, on every window
        ref_db = w.mel_db[:, :w.frames]
        for name, rec_db in ((names[0], trivial(ref_db)), (names[1], ref_db)):
            acc[name]["mae_db"].add(spectrogram_mae_db(rec_db, ref_db).item(), w.frames)
            acc[name]["mse_db"].add(spectrogram_mse_db(rec_db, ref_db).item(), w.frames)
    audio_windows = [w for w in windows if w.index in rendered]
    if perceptual is not None:
        if getattr(perceptual, "ceiling", None) is None:
            perceptual.ceiling = names[1]
        for w in audio_windows:
            perceptual.add("original", w.path, w.offset, w.audio[:w.n_valid].numpy(), w.transcript, source=w.source)
    for name in names:  # one anchor at a time, each with its own progress bar
        codec = next((c for c in external if c.name == name), None)
        for w in progress(audio_windows, desc=f"anchor {name}", disable=quiet):
            wave = _anchor_audio(w, name, codec, trivial if name == names[0] else None, frontend, vocoder, seed)
            _score_rendering(acc[name], w, wave, frontend, device, waveform_codec=codec is not None)
            if perceptual is not None:
                perceptual.add(name, w.path, w.offset, wave[:w.n_valid], source=w.source)
            if w.index in example_audio:
                example_audio[w.index][name] = wave[:w.n_valid]
    rows = {name: {"bitrate": rate, **{m: acc[name][m].value for m in metrics},
                   "audio_windows": len(acc[name]["pesq"].values)}
            for name, rate in zip(names, rates, strict=True)}
    original = None
    if perceptual is not None and audio_windows:
        scored = perceptual.compute(incomplete_files(dataset, sorted(rendered)))
        for name, scores in scored.items():
            if name in rows:
                rows[name]["perceptual"] = scores
        original = {"perceptual": scored.get("original")}
    kept_examples = [{"index": w.index, "path": w.path, "offset": w.offset, "source": w.source,
                      "original": w.audio[:w.n_valid].numpy(), "audio": example_audio[w.index]}
                     for w in windows if w.index in example_audio]
    return {"rows": rows, "notes": notes, "original": original, "trivial": trivial_grids,
            "trivial_choice": trivial.name, "windows": len(windows), "audio_windows": len(audio_windows),
            "subset": subset.to_dict(), "asr_reliability": getattr(perceptual, "reliability", None) or None,
            "elapsed_seconds": time.perf_counter() - started, "examples": kept_examples}


@dataclass
class _Window:
    """One evaluated window: dataset index, file, offset, valid samples / frames, audio ``(S,)``, dB mel
    ``(1, T, F)``, source and the file's reference transcript."""

    index: int
    path: str
    offset: int
    n_valid: int
    frames: int
    audio: Tensor
    mel_db: Tensor
    source: str
    transcript: str | None


def _anchor_audio(w: _Window, name: str, codec: ExternalCodec | None, trivial: PooledMelCodec | None,
                  frontend: LogMelFrontend, vocoder: GriffinLimVocoder, seed: int) -> np.ndarray:
    """The anchor's decoded audio ``(S,)`` of window ``w`` (mel anchors rendered with phase seed ``seed + index``)."""
    if codec is not None:
        return codec(w.audio.numpy(), frontend.config.sample_rate)
    mel_db = trivial(w.mel_db) if trivial is not None else w.mel_db
    device = next(iter(frontend.buffers())).device
    with torch.inference_mode():
        power = frontend.db_to_power(mel_db.to(device))
        return vocoder(power, length=w.audio.shape[-1], seed=seed + w.index)[0].cpu().numpy()


def _score_rendering(acc: dict[str, _Mean], w: _Window, wave: np.ndarray, frontend: LogMelFrontend,
                     device: torch.device, waveform_codec: bool) -> None:
    """PESQ / STOI of ``wave`` against the window's audio and its re-analysed mel's MAE (a waveform codec's
    own spectrogram error too)."""
    ref = w.audio[:w.n_valid].numpy()
    est = np.ascontiguousarray(wave[:w.n_valid])
    pesq_value, stoi_value = speech_quality(ref, est, frontend.config.sample_rate)
    acc["pesq"].add(pesq_value)
    acc["stoi"].add(stoi_value)
    whole = w.n_valid // frontend.hop_length  # frames of the rendering's own analysis
    if whole <= 0:
        return
    with torch.inference_mode():
        clip = torch.from_numpy(est[: whole * frontend.hop_length]).to(device)[None]
        rendered_db = frontend.model_to_db(frontend(clip)).cpu()
    ref_db = w.mel_db[:, : rendered_db.shape[1]]
    mae = spectrogram_mae_db(rendered_db, ref_db).item()
    acc["mel_mae_db"].add(mae)
    if waveform_codec:  # a waveform codec's own mel is its decoded audio's
        acc["mae_db"].add(mae, rendered_db.shape[1])
        acc["mse_db"].add(spectrogram_mse_db(rendered_db, ref_db).item(), rendered_db.shape[1])
