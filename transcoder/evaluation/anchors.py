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
from torch.utils.data import DataLoader

from transcoder.audio.griffin_lim import GriffinLimVocoder
from transcoder.audio.mel import LogMelFrontend
from transcoder.data import collate_audio
from transcoder.evaluation.metrics import spectrogram_mae_db, spectrogram_mse_db, speech_quality
from transcoder.evaluation.perceptual import transcript_of

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
) -> dict[str, Any]:
    """Score the anchors on the dataset's windows (see the module docstring).

    Args:
        dataset: an eval-mode dataset of ``frontend``-length windows (as for ``evaluate_tokenizer``).
        frontend, vocoder: the tokenizer's mel frontend and Griffin-Lim renderer.
        bitrate: the tokenizer's bit/s; the trivial codec matches it exactly.
        external: waveform codecs to run (default: :func:`default_external_codecs`).
        batch_size, max_batches: as in ``evaluate_tokenizer`` (same windows).
        audio_batches: batches whose audio is rendered and scored (PESQ / STOI / perceptual); default all.
        seed: Griffin-Lim phase seed of window 0 (window ``i`` uses ``seed + i``, as the tokenizer's).
        perceptual: a :class:`~transcoder.evaluation.perceptual.PerceptualScorer` fed every rendering
            (its ``"original"`` windows too) and computed at the end (scores under each row's
            ``"perceptual"`` and ``"original"``), or ``None``.
        examples: the first this-many windows' renderings are returned under ``"examples"``.

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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_audio)
    device = next(iter(frontend.buffers())).device
    # Pass 1 (cheap, spectrogram only): every exact-rate grid on every window; the best one is rendered.
    grid_err = {g.name: (_Mean(), _Mean()) for g in grids}
    batches = []
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        keep = [b for b, n in enumerate(batch["num_valid"].tolist()) if n > 0]
        if not keep:
            batches.append(None)
            continue
        batches.append(batch)
        with torch.inference_mode():
            mel_db = frontend.model_to_db(frontend(batch["audio"][keep].to(device))).cpu()
        for b, n_valid in zip(range(len(keep)), [int(batch["num_valid"][k]) for k in keep], strict=True):
            frames = min(mel_db.shape[1], -(-n_valid // frontend.hop_length))
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
    kept_examples: list[dict[str, Any]] = []
    window = 0
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        if batch is None:
            continue
        keep = [b for b, n in enumerate(batch["num_valid"].tolist()) if n > 0]
        ref_audio = batch["audio"][keep]
        valid = [int(batch["num_valid"][k]) for k in keep]
        paths = [batch["path"][k] for k in keep]
        offsets = [int(batch["offset"][k]) for k in keep]
        with torch.inference_mode():
            mel = frontend(ref_audio.to(device))
            mel_db = frontend.model_to_db(mel)
            trivial_db = trivial(mel_db)
        render = audio_batches is None or index < audio_batches
        for b, n_valid in enumerate(valid):
            frames = min(mel.shape[1], -(-n_valid // frontend.hop_length))
            ref_db = mel_db[b:b + 1, :frames]
            # The window's dataset index: windows are numbered in loader order, failed ones included.
            window_index = index * batch_size + keep[b]
            for name, rec_db in ((names[0], trivial_db[b:b + 1, :frames]), (names[1], ref_db)):
                acc[name]["mae_db"].add(spectrogram_mae_db(rec_db, ref_db).item(), frames)
                acc[name]["mse_db"].add(spectrogram_mse_db(rec_db, ref_db).item(), frames)
            if not render:
                continue
            ref = ref_audio[b, :n_valid]
            outputs: dict[str, np.ndarray] = {}
            with torch.inference_mode():
                for name, rec_db in ((names[0], trivial_db[b:b + 1]), (names[1], mel_db[b:b + 1])):
                    power = frontend.db_to_power(rec_db)
                    rendered = vocoder(power, length=ref_audio.shape[-1], seed=seed + window_index)
                    outputs[name] = rendered[0].cpu().numpy()
            for codec in external:
                outputs[codec.name] = codec(ref_audio[b].numpy(), frontend.config.sample_rate)
            for name, wave in outputs.items():
                est = torch.from_numpy(np.ascontiguousarray(wave[:n_valid]))
                pesq_value, stoi_value = speech_quality(ref.numpy(), est.numpy(), frontend.config.sample_rate)
                acc[name]["pesq"].add(pesq_value)
                acc[name]["stoi"].add(stoi_value)
                whole = n_valid // frontend.hop_length  # frames of the rendering's own analysis
                if whole > 0:
                    with torch.inference_mode():
                        clip = est[: whole * frontend.hop_length].to(device)[None]
                        rendered_db = frontend.model_to_db(frontend(clip))
                    mae = spectrogram_mae_db(rendered_db.cpu(), ref_db[:, : rendered_db.shape[1]].cpu()).item()
                    acc[name]["mel_mae_db"].add(mae)
                    if name not in names[:2]:  # a waveform codec's own mel is its decoded audio's
                        acc[name]["mae_db"].add(mae, rendered_db.shape[1])
                        mse = spectrogram_mse_db(rendered_db.cpu(), ref_db[:, : rendered_db.shape[1]].cpu()).item()
                        acc[name]["mse_db"].add(mse, rendered_db.shape[1])
                if perceptual is not None:
                    perceptual.add(name, paths[b], offsets[b], wave[:n_valid])
            if perceptual is not None:
                perceptual.add("original", paths[b], offsets[b], ref.numpy(),
                               transcript_of(dataset, int(batch["file_index"][keep[b]])))
            if window < examples:
                kept_examples.append({"index": window_index, "path": paths[b], "offset": offsets[b],
                                      "original": ref.numpy(),
                                      "audio": {name: wave[:n_valid] for name, wave in outputs.items()}})
            window += 1
    rows = {name: {"bitrate": rate, **{m: acc[name][m].value for m in metrics},
                   "audio_windows": len(acc[name]["pesq"].values)}
            for name, rate in zip(names, rates, strict=True)}
    original = None
    if perceptual is not None and window:
        scored = perceptual.compute()
        for name, scores in scored.items():
            if name in rows:
                rows[name]["perceptual"] = scores
        original = {"perceptual": scored.get("original")}
    return {"rows": rows, "notes": notes, "original": original, "trivial": trivial_grids,
            "trivial_choice": trivial.name, "windows": len(acc[names[0]]["mae_db"].values), "audio_windows": window,
            "elapsed_seconds": time.perf_counter() - started, "examples": kept_examples}
