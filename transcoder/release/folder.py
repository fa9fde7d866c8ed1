"""Reading a release folder: JSON and safetensors only, so loading one unpickles nothing and runs no code from it.

Layout (``format_version`` 1)::

    config.json            {"format": "audio-bsq-vit-release", "format_version": 1,
                            "model": {"target", "params"}, "mel": {...}, "codes": {...}, "rates": {...},
                            "weights": "ema" | "model", "source": {...}, "datasets": [...],
                            "training_config": {...}, "vocoder": null | {...}, "onnx": null | {...}}
    model.safetensors      the tokenizer's inference weights (one state dict, no optimizer, no EMA copy)
    README.md              the model card
    vocoder.safetensors    (optional) a neural vocoder's weights, with
    vocoder_config.json    {"format_version": 1, "model": {"target", "params"}, "mel": {...}}
    encoder.onnx           (optional) model-space mel windows (B, T, F) float32 -> indices (B, Nt, Nf) int64
    decoder.onnx           (optional) indices (B, Nt, Nf) int64 -> model-space mel (B, T, F) float32

The model is built by :func:`transcoder.models.build.load_checkpoint_model`, the function that builds a
checkpoint's model, so a folder's ``model.target`` passes the same checks as a checkpoint's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transcoder.audio.mel import MelConfig
from transcoder.audio.neural_vocoder import NeuralVocoder, load_vocoder
from transcoder.models.build import load_checkpoint_model
from transcoder.utils.checkpoint import CheckpointError

__all__ = ["CONFIG_FILE", "DECODER_ONNX", "ENCODER_ONNX", "FORMAT_VERSION", "MODEL_FILE", "CARD_FILE",
           "RELEASE_FORMAT", "ReleaseFormatError", "VOCODER_CONFIG_FILE", "VOCODER_FILE", "load_release_model",
           "load_release_vocoder", "read_json", "read_release_config", "read_weights"]

RELEASE_FORMAT = "audio-bsq-vit-release"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CARD_FILE = "README.md"
VOCODER_FILE = "vocoder.safetensors"
VOCODER_CONFIG_FILE = "vocoder_config.json"
ENCODER_ONNX = "encoder.onnx"
DECODER_ONNX = "decoder.onnx"


class ReleaseFormatError(CheckpointError):
    """A release folder that cannot be used; the one-line message names the file, the key and what was expected."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`ReleaseFormatError` naming the file if it is missing or not an object."""
    if not path.is_file():
        raise ReleaseFormatError(f"{path} is missing (a release folder holds {CONFIG_FILE} and {MODEL_FILE}; "
                                 "write one with scripts/export_tokenizer.py)")
    try:
        return json_object(path)
    except ValueError as err:
        raise ReleaseFormatError(str(err)) from None


def json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` naming the file if it cannot be read or is not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _require(config: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = config.get(key)
    if not isinstance(value, kind):
        raise ReleaseFormatError(f"{path}: key {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def read_release_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a release folder, checked: format name and version, ``model`` (with ``target``),
    ``mel`` and ``weights``. Raises :class:`ReleaseFormatError` naming the file and key."""
    path = Path(folder) / CONFIG_FILE
    config = read_json(path)
    if config.get("format") != RELEASE_FORMAT:
        raise ReleaseFormatError(f"{path}: key 'format' is {config.get('format')!r}, expected {RELEASE_FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ReleaseFormatError(f"{path}: key 'format_version' is {config.get('format_version')!r}; this version "
                                 f"of transcoder reads format_version {FORMAT_VERSION}")
    model = _require(config, "model", dict, path)
    if not isinstance(model.get("target"), str):
        raise ReleaseFormatError(f"{path}: key 'model.target' must be a dotted class path, got {model.get('target')!r}")
    _require(config, "mel", dict, path)
    _require(config, "weights", str, path)
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict on the CPU; :class:`ReleaseFormatError` naming the file if missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ReleaseFormatError(f"{path} is missing (the weights of the release folder {path.parent})")
    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise ReleaseFormatError(f"{path} cannot be read as safetensors ({err})") from None


def load_release_model(folder: str | Path, trust_config: bool = False, allow_nonfinite: bool = False
                       ) -> tuple[nn.Module, MelConfig, dict[str, Any]]:
    """Build the tokenizer model of a release folder and load its weights.

    The folder's ``model`` spec, ``mel`` settings and ``model.safetensors`` go through
    :func:`~transcoder.models.build.load_checkpoint_model` as a checkpoint's would: the model config may name only the
    project's own classes unless ``trust_config``, and the weights are checked (``allow_nonfinite``: NaN / Inf
    loaded with a warning).

    Returns:
        ``(model on CPU in eval mode, mel config, config.json dict)``.

    Raises:
        ReleaseFormatError: a missing or malformed file, or weights that do not fit the model.
    """
    folder = Path(folder)
    config = read_release_config(folder)
    state = {"format": 2, "config": {"model": config["model"], "data": config["mel"]}, "mel": config["mel"],
             "models": {"model": read_weights(folder / MODEL_FILE)}}
    try:
        model, _ = load_checkpoint_model(state, use_ema=False, trust_config=trust_config,
                                         allow_nonfinite=allow_nonfinite, where=folder / MODEL_FILE)
        mel_config = MelConfig.from_dict(config["mel"])
    except (CheckpointError, ValueError, TypeError) as err:
        raise ReleaseFormatError(f"release folder {folder}: {err}") from err
    return model, mel_config, config


def load_release_vocoder(folder: str | Path, device: str | torch.device | None = "cpu",
                         trust_config: bool = False) -> NeuralVocoder | None:
    """The neural vocoder of a release folder (``vocoder.safetensors`` + ``vocoder_config.json``), or ``None``
    when ``config.json`` names none. Built by :func:`~transcoder.audio.neural_vocoder.load_vocoder` (its model
    config may name only the project's own classes unless ``trust_config``)."""
    folder = Path(folder)
    entry = read_release_config(folder).get("vocoder")
    if not entry:
        return None
    config_path = folder / VOCODER_CONFIG_FILE
    config = read_json(config_path)
    if config.get("format_version") != FORMAT_VERSION:
        raise ReleaseFormatError(f"{config_path}: key 'format_version' is {config.get('format_version')!r}, "
                                 f"expected {FORMAT_VERSION}")
    spec, mel = _require(config, "model", dict, config_path), _require(config, "mel", dict, config_path)
    state = {"format": 2, "task": "vocoder", "config": {"model": spec}, "mel": mel,
             "models": {"model": read_weights(folder / VOCODER_FILE)}}
    try:
        vocoder = load_vocoder(state, device=device, use_ema=False, trust_config=trust_config)
    except (CheckpointError, ValueError, TypeError) as err:
        raise ReleaseFormatError(f"release folder {folder}, {VOCODER_FILE}: {err}") from err
    vocoder.name = str(folder / VOCODER_FILE)
    return vocoder
