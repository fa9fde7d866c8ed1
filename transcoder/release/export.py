"""Writing a release folder from a trainer checkpoint (see :mod:`transcoder.release.folder` for the layout).

The folder is written to a temporary sibling and renamed into place, so a failed export leaves nothing under
the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from transcoder.audio.mel import MelConfig
from transcoder.audio.neural_vocoder import check_same_mel, load_vocoder
from transcoder.models.build import checkpoint_mel_settings, load_checkpoint_model
from transcoder.release.card import metric_rows, model_card, training_datasets
from transcoder.release.folder import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    RELEASE_FORMAT,
    VOCODER_CONFIG_FILE,
    VOCODER_FILE,
    json_object,
)
from transcoder.utils.checkpoint import load_checkpoint
from transcoder.utils.files import write_failure
from transcoder.utils.rates import token_rates

__all__ = ["code_geometry", "export_release"]


def code_geometry(model: nn.Module, mel: MelConfig) -> dict[str, Any]:
    """The ``codes`` entry of ``config.json``: patch, window, tokens per window and code width of ``model``."""
    pt, pf = (int(v) for v in model.patch_size)
    frames = int(model.input_length)
    nested = getattr(model, "nested_bits", None)
    return {"patch_size": [pt, pf], "window_frames": frames, "window_samples": mel.num_samples(frames),
            "time_rows_per_window": frames // pt, "n_freq_patches": mel.n_mels // pf,
            "tokens_per_window": frames // pt * (mel.n_mels // pf), "bits_per_token": int(model.bits),
            "nested_widths": list(nested.widths) if nested is not None else [int(model.bits)],
            "dtype": "int64", "layout": "(n_time_tokens, n_freq_patches), time-major"}


def _save_safetensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    weights = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in module.state_dict().items()}
    save_file(weights, str(path), metadata={"format": "pt"})


def _write_json(value: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n",
                    encoding="utf-8")


def _vocoder_files(vocoder: str | Path, mel: MelConfig, folder: Path) -> dict[str, Any]:
    """Write ``vocoder.safetensors`` + ``vocoder_config.json`` of a vocoder checkpoint (EMA weights when present)
    into ``folder``; its mel settings must equal the tokenizer's. Returns the ``vocoder`` entry of ``config.json``."""
    state = load_checkpoint(vocoder)
    loaded = load_vocoder(state)
    check_same_mel(loaded.mel_config, mel, str(vocoder), "the tokenizer")
    _save_safetensors(loaded.generator, folder / VOCODER_FILE)
    _write_json({"format_version": FORMAT_VERSION, "model": state["config"]["model"],
                 "mel": loaded.mel_config.to_dict()}, folder / VOCODER_CONFIG_FILE)
    return {"weights": VOCODER_FILE, "config": VOCODER_CONFIG_FILE, "source": Path(vocoder).name,
            "step": state.get("step")}


def _read_metrics(path: Path) -> dict[str, Any]:
    """An evaluation's ``metrics.json``, checked to hold scores the card can show (``ValueError`` naming the file)."""
    try:
        metrics = json_object(path)
    except ValueError as err:
        raise ValueError(f"--metrics {err}") from None
    try:
        metric_rows(metrics)
    except ValueError as err:
        raise ValueError(f"--metrics {path}: {err}") from None
    return metrics


def _install(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``staging`` folder to ``out_dir`` (replacing an existing one when ``overwrite``)."""
    old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old.exists():
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_release(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    weights: str | None = None,
    vocoder: str | Path | None = None,
    metrics: str | Path | None = None,
    onnx: bool = False,
    name: str | None = None,
    license_id: str = "mit",
    datasets: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the release folder of a tokenizer checkpoint.

    Args:
        checkpoint: a trainer checkpoint (``best.pt``).
        out_dir: the folder to create.
        weights: ``"ema"``, ``"model"`` (raw weights), or ``None``: EMA when the checkpoint has them.
        vocoder: a vocoder checkpoint (``scripts/train_vocoder.py``) shipped beside the tokenizer.
        metrics: an evaluation's ``metrics.json``, rendered in the model card.
        onnx: also write ``encoder.onnx`` and ``decoder.onnx`` (needs the ``onnx`` extra).
        name: the model's name in the card (default: ``out_dir``'s name).
        license_id: the license id in the card's front matter.
        datasets: the training data's names in the card (e.g. Hub ids); default: the paths of the
            checkpoint's ``data.train`` / ``data.val`` datasets.
        overwrite: replace an existing ``out_dir`` (else ``FileExistsError``).

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ValueError: ``weights`` is not ``ema`` / ``model``, ``ema`` on a checkpoint without EMA weights, or
            ``onnx`` for a model whose quantizer is not binary (FSQ).
        CheckpointError / FileNotFoundError: from loading the checkpoints.
    """
    out_dir = Path(out_dir)
    if weights not in (None, "ema", "model"):
        raise ValueError(f"weights={weights!r}: expected 'ema' or 'model'")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    model, state = load_checkpoint_model(checkpoint, use_ema=weights != "model")
    if weights == "ema" and state["weights"] != "ema":
        raise ValueError(f"checkpoint {checkpoint} holds no EMA weights; export --weights model")
    if onnx and not getattr(getattr(model, "quantizer", None), "binary_codes", False):
        raise ValueError(f"--onnx: the ONNX decoder graph reads binary (BSQ) codes only; {checkpoint} uses "
                         f"{type(getattr(model, 'quantizer', None)).__name__}: export it without --onnx")
    settings = checkpoint_mel_settings(state, checkpoint)
    mel = MelConfig.from_dict(settings, strict=settings is state.get("mel"))
    scores = _read_metrics(Path(metrics)) if metrics is not None else None
    codes = code_geometry(model, mel)
    rates = token_rates(codes["patch_size"], mel.n_mels, mel.hop_length, mel.sample_rate, codes["bits_per_token"])
    training_config = state.get("config") or {}
    config: dict[str, Any] = {
        "format": RELEASE_FORMAT, "format_version": FORMAT_VERSION,
        "model": training_config["model"], "mel": mel.to_dict(), "codes": codes,
        "rates": {"tokens_per_second": rates.tokens_per_second, "bits_per_second": rates.bits_per_second},
        "weights": state["weights"],
        "source": {"checkpoint": Path(checkpoint).name, "step": state.get("step"), "task": state.get("task")},
        "datasets": list(datasets) if datasets else training_datasets(training_config),
        "training_config": training_config,
        "vocoder": None, "onnx": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _save_safetensors(model, staging / MODEL_FILE)
        if vocoder is not None:
            config["vocoder"] = _vocoder_files(vocoder, mel, staging)
        if onnx:
            from transcoder.release.onnx_graphs import export_onnx

            config["onnx"] = export_onnx(model, staging)
        _write_json(config, staging / CONFIG_FILE)
        card = model_card(config, name or out_dir.name, license_id, scores)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes owner-only files; a release is for sharing
        _install(staging, out_dir, overwrite)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_failure(out_dir, err, "release folder") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
