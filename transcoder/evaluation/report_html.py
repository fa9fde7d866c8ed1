"""One self-contained listening page (``report.html``): examples as audio players beside spectrograms, and a
metrics table.

Every audio clip is embedded as a ``data:audio/wav;base64`` URI and every spectrogram as a
``data:image/png;base64`` URI, so the file can be mailed or attached to a paper review as is. Layout: the
metrics table (one row per rendering: tokenizer, ceilings, anchors), then per example window one row per
rendering (original first) with its player and its log-mel image on the original's colour scale.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transcoder.utils.files import write_atomic
from transcoder.utils.progress import progress

__all__ = ["ReportExample", "write_report", "wav_data_uri", "png_data_uri"]


@dataclass
class ReportExample:
    """One example window.

    Attributes:
        title: e.g. ``"file.flac @ 2.56 s"``.
        renderings: name → waveform ``(S,)`` float in [-1, 1]; ``"original"`` first by convention.
        mels_db: name → dB log-mel ``(T, F)`` for the image (computed from the waveform when missing).
    """

    title: str
    renderings: dict[str, np.ndarray]
    mels_db: dict[str, np.ndarray] = field(default_factory=dict)


def wav_data_uri(audio: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV of ``audio (S,)`` as a ``data:audio/wav;base64,...`` URI."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, format="WAV",
             subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(mel_db: np.ndarray, vmin: float, vmax: float, seconds: float) -> str:
    """A small log-mel image ``(T, F)`` (time → x, mel bin → y) with its dB colour bar (``vmin`` .. ``vmax``,
    the example's shared scale) as a ``data:image/png;base64,...`` URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 1.5), dpi=80, constrained_layout=True)
    image = ax.imshow(mel_db.T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                      extent=(0, seconds, 0, mel_db.shape[1]))
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("mel", fontsize=7)
    ax.tick_params(labelsize=6)
    bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.05)
    bar.set_label("dB", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: float) -> str:
    """Rates as integers (900, 6000), scores with three decimals."""
    return f"{value:.0f}" if value.is_integer() and abs(value) >= 100 else f"{value:.3f}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else _number(value)
    if value is None:
        return "–"
    return html.escape(str(value))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px} p.meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
table.examples td{vertical-align:middle} table.examples img{display:block}
span.duration{font-size:12px;color:#555;margin-left:6px;font-variant-numeric:tabular-nums}
ul.notes{font-size:13px;color:#555}
"""


def write_report(path: str | Path, *, title: str, table_columns: Sequence[str],
                 table_rows: Sequence[Sequence[Any]], examples: Sequence[ReportExample], sample_rate: int,
                 mel_fn: Any = None, notes: Sequence[str] = (), meta: str = "", quiet: bool = True) -> Path:
    """Write the page atomically and return its path.

    Args:
        path: the ``.html`` file.
        title: page heading.
        table_columns, table_rows: the metrics table (first column: the rendering's name).
        examples: the example windows.
        sample_rate: of every waveform.
        mel_fn: ``waveform (S,) -> dB mel (T, F)`` for renderings without ``mels_db``.
        notes: lines listed under the table (skipped anchors, metric notes).
        meta: one line under the heading (checkpoint, data, machine).
        quiet: no progress bar (one count per rendering of every example: its PNG and WAV).

    Each player is followed by the clip's duration (``2.56 s``), each spectrogram carries its dB colour bar.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(f'<p class="meta">{html.escape(meta)}</p>')
    parts += ['<h2>Metrics</h2>', '<table class="metrics"><thead><tr>',
              *[f"<th>{html.escape(c)}</th>" for c in table_columns], "</tr></thead><tbody>"]
    for row in table_rows:
        parts.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    parts.append("</tbody></table>")
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Examples</h2>")
    bar = progress(desc="report: page", total=sum(len(e.renderings) for e in examples), unit="clip",
                   disable=quiet)
    for index, example in enumerate(examples):
        mels = dict(example.mels_db)
        for name, audio in example.renderings.items():
            if name not in mels and mel_fn is not None:
                mels[name] = mel_fn(audio)
        reference = mels.get("original", next(iter(mels.values()), None))
        vmax = float(np.max(reference)) if reference is not None else 0.0
        vmin = vmax - 80.0
        parts += [f'<h3 id="example-{index}">{html.escape(example.title)}</h3>',
                  '<table class="examples"><tbody>']
        for name, audio in example.renderings.items():
            seconds = len(audio) / sample_rate
            image = (f'<img alt="log-mel of {html.escape(name)}" src="{png_data_uri(mels[name], vmin, vmax, seconds)}">'
                     if name in mels else "")
            parts.append(f'<tr><td>{html.escape(name)}</td><td><audio controls preload="metadata" '
                         f'src="{wav_data_uri(audio, sample_rate)}"></audio>'
                         f'<span class="duration">{seconds:.2f} s</span></td><td>{image}</td></tr>')
            bar.update(1)
        parts.append("</tbody></table>")
    bar.close()
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = "\n".join(parts).encode("utf-8")
    write_atomic(path, lambda handle: handle.write(page), "report")
    return path


#: Columns of :func:`quality_table`.
QUALITY_COLUMNS = ("rendering", "bit/s", "mel MAE dB", "PESQ-WB", "STOI", "DNSMOS SIG", "DNSMOS BAK",
                   "DNSMOS OVRL", "DNSMOS P.808", "dWER", "WER")

_SIDE_NAMES = {"recon": "tokenizer + Griffin-Lim", "ceiling": "Griffin-Lim ceiling (true mel)",
               "vocoder_recon": "tokenizer + neural vocoder", "vocoder_ceiling": "neural vocoder ceiling (true mel)"}


#: The dWER / WER cell of a row whose sources the recogniser does not understand
#: (:mod:`transcoder.evaluation.asr_guard`).
UNRELIABLE = "unreliable"


def _perceptual_cells(scores: dict[str, Any] | None) -> list[Any]:
    """DNSMOS SIG / BAK / OVRL / P.808, dWER, WER of one row (``"unreliable"`` for dWER / WER when no source
    of the row is one the recogniser understands)."""
    scores = scores or {}
    dnsmos = scores.get("dnsmos") or {}
    if scores.get("dwer_unreliable"):
        return [*(dnsmos.get(k) for k in ("sig", "bak", "ovrl", "p808")), UNRELIABLE, UNRELIABLE]
    return [*(dnsmos.get(k) for k in ("sig", "bak", "ovrl", "p808")), (scores.get("dwer") or {}).get("wer"),
            (scores.get("wer") or {}).get("wer")]


def quality_table(results: dict[str, Any], anchors: dict[str, Any] | None = None) -> list[list[Any]]:
    """Rows of :data:`QUALITY_COLUMNS`: the original, the tokenizer's renderings (``evaluate_tokenizer``
    results with ``audio``) and the anchors (``evaluate_anchors`` results, its duplicate Griffin-Lim ceiling
    left out). "mel MAE dB" is the codec's own mel error: the tokenizer's reconstruction, the anchor's
    decoded mel, a waveform codec's decoded audio re-analysed; for ceilings, the rendering's re-analysed mel.
    """
    perceptual = results.get("perceptual") or {}
    rows: list[list[Any]] = []
    if "original" in perceptual:
        rows.append(["original", None, 0.0, None, None, *_perceptual_cells(perceptual["original"])])
    audio = results.get("audio") or {}
    for side, name in _SIDE_NAMES.items():
        if side not in audio:
            continue
        recon = side.endswith("recon")
        rows.append([name, results["rates"]["bitrate"] if recon else None,
                     results["spectrogram"]["mae_db"] if recon else audio[side]["mel_mae_db"],
                     audio[side]["pesq"], audio[side]["stoi"], *_perceptual_cells(perceptual.get(side))])
    if anchors:
        for name, row in anchors["rows"].items():
            if name == "griffin-lim ceiling" and "ceiling" in audio:
                continue
            rows.append([name, row.get("bitrate"), row.get("mae_db"), row.get("pesq"), row.get("stoi"),
                         *_perceptual_cells(row.get("perceptual"))])
    return rows


def markdown_table(rows: Sequence[Sequence[Any]], columns: Sequence[str] = QUALITY_COLUMNS) -> str:
    """The rows as a Markdown table (``-`` for missing values)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return _number(value) if math.isfinite(value) else "-"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
