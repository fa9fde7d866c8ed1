"""The model card (``README.md``) of a release folder: Hugging Face front matter, rates, usage, scores.

The front matter holds ``library_name``, ``license``, ``tags``, ``pipeline_tag``, the training ``datasets`` and,
when an evaluation's ``metrics.json`` is given (``scripts/evaluate_audio_tokenizer.py``), a ``model-index`` with
its scores (log-mel MAE, PESQ-WB and STOI of the Griffin-Lim rendering, per code width).
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import yaml

__all__ = ["LIBRARY_NAME", "TAGS", "metric_rows", "model_card", "training_datasets"]

LIBRARY_NAME = "transcoder"
TAGS = ["audio", "audio-tokenizer", "speech", "neural-codec", "binary-spherical-quantization", "log-mel"]
PIPELINE_TAG = "audio-to-audio"
#: ``(row key, metric type, label)`` of the scores put in the card, in order.
_METRICS = [("mae_db", "mel_mae_db", "log-mel MAE (dB)"), ("pesq", "pesq", "PESQ-WB (Griffin-Lim)"),
            ("stoi", "stoi", "STOI (Griffin-Lim)")]


def _dataset_name(spec: Any) -> str | None:
    """The data one ``{target, params}`` dataset spec reads (its ``root`` / ``shards`` / ``cuts`` /
    ``recordings`` path as configured, else its class name); ``None`` for no dataset."""
    if not isinstance(spec, dict) or not isinstance(spec.get("target"), str):
        return None
    params = spec.get("params") or {}
    for key in ("root", "shards", "cuts", "recordings"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return str(PurePath(value))
    return spec["target"].rpartition(".")[2]


def training_datasets(training_config: dict[str, Any] | None) -> list[str]:
    """The ``data.train`` and ``data.val`` datasets of a training config (:func:`_dataset_name`), without repeats;
    the exporter's ``datasets`` argument replaces them with Hub dataset ids."""
    data = (training_config or {}).get("data") or {}
    names = [_dataset_name(data.get(split)) for split in ("train", "val")]
    return list(dict.fromkeys(name for name in names if name))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{bits, bitrate, mae_db, pesq, stoi}`` of an evaluation's ``metrics.json``: its ``rows`` (one per
    width, ``--bits 9,18``) or the single evaluation's ``rates`` / ``spectrogram`` / ``audio.recon``.

    Raises ``ValueError`` naming the missing key for a file of another shape.
    """
    if isinstance(metrics.get("rows"), list):
        rows = metrics["rows"]
    else:
        try:
            audio = (metrics.get("audio") or {}).get("recon") or {}
            rows = [{"bits": metrics["rates"]["bits_per_token"], "bitrate": metrics["rates"]["bitrate"],
                     "mae_db": metrics["spectrogram"]["mae_db"], "pesq": audio.get("pesq"),
                     "stoi": audio.get("stoi")}]
        except (KeyError, TypeError) as err:
            raise ValueError(f"metrics.json: expected 'rows' or 'rates' + 'spectrogram' "
                             f"(scripts/evaluate_audio_tokenizer.py), missing {err}") from None
    return [{"bits": int(row["bits"]), "bitrate": float(row["bitrate"]),
             **{key: _finite(row.get(key)) for key, _, _ in _METRICS}} for row in rows]


def _eval_dataset(metrics: dict[str, Any]) -> str:
    name = _dataset_name(metrics.get("dataset"))
    return name or "evaluation set"


def _front_matter(config: dict[str, Any], name: str, license_id: str, metrics: dict[str, Any] | None) -> str:
    matter: dict[str, Any] = {"library_name": LIBRARY_NAME, "license": license_id, "tags": TAGS,
                              "pipeline_tag": PIPELINE_TAG}
    if config.get("datasets"):
        matter["datasets"] = list(config["datasets"])
    if metrics is not None:
        dataset = _eval_dataset(metrics)
        results = []
        for row in metric_rows(metrics):
            scores = [{"type": kind, "name": f"{label} at {row['bitrate']:g} bit/s", "value": round(row[key], 4)}
                      for key, kind, label in _METRICS if row[key] is not None]
            results.append({"task": {"type": PIPELINE_TAG, "name": f"Audio tokenization, {row['bits']} bits"},
                            "dataset": {"name": dataset, "type": dataset}, "metrics": scores})
        matter["model-index"] = [{"name": name, "results": results}]
    return "---\n" + yaml.safe_dump(matter, sort_keys=False, allow_unicode=True) + "---\n"


def _scores_table(metrics: dict[str, Any]) -> list[str]:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"Scores on {_eval_dataset(metrics)} (`scripts/evaluate_audio_tokenizer.py`; audio rendered by "
             "Griffin-Lim):", "", "| bits | bit/s | log-mel MAE (dB) | PESQ-WB | STOI |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['bits']} | {r['bitrate']:g} | {cell(r['mae_db'])} | {cell(r['pesq'])} | {cell(r['stoi'])} |"
              for r in metric_rows(metrics)]
    return lines + [""]


def model_card(config: dict[str, Any], name: str, license_id: str = "mit",
               metrics: dict[str, Any] | None = None) -> str:
    """The text of a release folder's ``README.md``.

    Args:
        config: the folder's ``config.json`` (``codes``, ``rates``, ``mel``, ``datasets``, ``vocoder``, ``onnx``).
        name: the model's name (a Hub id ``org/model`` or the folder's name), used in the usage snippet.
        license_id: the weights' license (a Hub license id, e.g. ``mit``, ``cc-by-4.0``).
        metrics: an evaluation's ``metrics.json`` (rendered in the front matter and in a table), or ``None``.
    """
    codes, rates, mel = config["codes"], config["rates"], config["mel"]
    pt, pf = codes["patch_size"]
    lines = [
        _front_matter(config, name, license_id, metrics),
        f"# {name}", "",
        "An Audio BSQ-ViT audio tokenizer: a log-mel spectrogram is cut into patches, encoded by a ViT, quantized "
        "by Binary Spherical Quantization into one integer per patch, and decoded back to the spectrogram; audio "
        "is rendered from the decoded spectrogram by Griffin-Lim"
        + (" or the neural vocoder shipped in this folder." if config.get("vocoder") else "."), "",
        "| property | value |", "|---|---|",
        f"| sample rate | {mel['sample_rate']} Hz, mono |",
        f"| front end | {mel['n_mels']} mels, n_fft {mel['n_fft']}, hop {mel['hop_length']} |",
        f"| window | {codes['window_frames']} frames ({codes['window_samples'] / mel['sample_rate']:g} s) |",
        f"| patch | {pt} frames x {pf} mels; {codes['n_freq_patches']} tokens per time step |",
        f"| code | {codes['bits_per_token']} bits per token (vocabulary 2^{codes['bits_per_token']}) |",
        f"| rate | {rates['tokens_per_second']:g} tokens/s, {rates['bits_per_second']:g} bit/s |",
        f"| weights | {config['weights']} |", "",
        "## Usage", "",
        "```python",
        "from transcoder.api import load_tokenizer",
        "",
        f'tok = load_tokenizer("{name}")  # this folder, or its Hub name (needs huggingface_hub)',
        'codes = tok.encode_file("speech.flac")  # (n_time_tokens, n_freq_patches) int64',
        "wave = tok.decode_codes(codes, num_samples=tok.last_num_samples)",
        "```", "",
    ]
    if config.get("onnx"):
        lines += ["The encoder and decoder are also shipped as ONNX graphs (`encoder.onnx`: model-space mel windows "
                  "(batch, frames, mels) float32 -> indices int64; `decoder.onnx`: back); "
                  f'`load_tokenizer("{name}", backend="onnx")` runs them with ONNX Runtime behind the same API.', ""]
    if metrics is not None:
        lines += ["## Evaluation", "", *_scores_table(metrics)]
    if config.get("datasets"):
        lines += ["## Training data", "", ", ".join(f"`{d}`" for d in config["datasets"]), ""]
    return "\n".join(lines)
