"""Building a tokenizer model from its config spec or from a checkpoint.

The model's input grid is stated once, in a config's ``data`` block: ``audioconfig.input_size`` is
``data.n_mels`` and ``audioconfig.input_length`` is ``data.target_length``. Everything that builds a
tokenizer model (the training tasks, :mod:`transcoder.api`, the vocoder's fine-tune mode, scripts)
goes through :func:`build_model`, so the rule lives here once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, load_weights_strict, model_weights
from transcoder.utils.targets import ConfigError, check_trusted_spec, instantiate

__all__ = ["InputGrid", "build_model", "checkpoint_mel_settings", "derive_input_grid", "load_checkpoint_model",
           "build_checkpoint_spec"]


class InputGrid(Protocol):
    """What the model's input grid is derived from (a :class:`~transcoder.audio.mel.MelConfig` is one)."""

    @property
    def n_mels(self) -> int: ...

    @property
    def target_length(self) -> int: ...


def derive_input_grid(spec: dict[str, Any], grid: InputGrid) -> dict[str, Any]:
    """A copy of a tokenizer model spec whose ``audioconfig.input_size`` / ``input_length`` are the front
    end's ``n_mels`` / ``target_length``; a config that states them anyway must agree (else ConfigError)."""
    spec = copy.deepcopy(spec)
    params = spec.setdefault("params", {}) or {}
    spec["params"] = params
    audioconfig = params.get("audioconfig")
    if isinstance(audioconfig, dict):
        for key, derived, source in (("input_size", grid.n_mels, "data.n_mels"),
                                     ("input_length", grid.target_length, "data.target_length")):
            given = audioconfig.setdefault(key, derived)
            if given != derived:
                raise ConfigError(f"model audioconfig.{key}={given} but {source}={derived}: leave {key} out "
                                  f"(it is taken from {source}) or make them equal")
    return spec


def build_model(spec: dict[str, Any], grid: InputGrid) -> nn.Module:
    """Instantiate a tokenizer model (``{target, params}``) whose input grid comes from ``grid``."""
    return instantiate(derive_input_grid(spec, grid))


def checkpoint_mel_settings(state: dict[str, Any], where: str | Path = "<dict>") -> dict[str, Any]:
    """The front-end settings of a checkpoint: its ``mel`` entry, or (older checkpoints) its config's
    ``data`` section, which holds them beside the loading keys."""
    mel = state.get("mel")
    if isinstance(mel, dict):
        return mel
    config = state.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {where} has neither 'mel' nor config['data'] mel settings")
    return data


class _Grid:
    def __init__(self, settings: dict[str, Any], where: str | Path) -> None:
        try:
            self.n_mels, self.target_length = int(settings["n_mels"]), int(settings["target_length"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {where}: its mel settings lack a valid n_mels / target_length "
                                  f"({err})") from None


def build_checkpoint_spec(spec: dict[str, Any], where: str | Path, key: str, trust_config: bool = False,
                          grid: InputGrid | None = None) -> nn.Module:
    """Build an object from a spec stored in a checkpoint (data, not code): every ``target`` in ``spec``
    (nested ones included) must be one of the project's classes unless ``trust_config``
    (:func:`~transcoder.utils.targets.check_trusted_spec`), checked before anything is imported.

    ``grid``: build a tokenizer model whose input grid comes from it (:func:`build_model`). Any refusal or
    config problem raises :class:`CheckpointError` naming ``where`` and the key.
    """
    try:
        check_trusted_spec(spec, key, trust_config)
        return build_model(spec, grid) if grid is not None else instantiate(spec)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {where}: {err}") from err


def load_checkpoint_model(
    checkpoint: str | Path | dict[str, Any], use_ema: bool = True, trust_config: bool = False,
    allow_nonfinite: bool = False, where: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the tokenizer model of a checkpoint and load its weights (EMA weights if asked and present).

    Reads checkpoint format 1 and 2 (:func:`transcoder.utils.checkpoint.model_weights`); files are
    loaded with ``weights_only=True``. The trainer saves the unwrapped module, so state dicts hold no
    DDP / ``torch.compile`` prefixes and no ``AveragedModel`` bookkeeping; weights must fit exactly.

    Returns ``(model on CPU in eval mode, checkpoint dict)``; ``state["weights"]`` is set to ``"ema"`` or
    ``"model"`` (which weights were loaded); :func:`checkpoint_mel_settings` gives its front end. ``where``
    names a checkpoint given as a dict in error messages (a release folder's weights file, for instance).

    The config stored in the checkpoint may name only the project's own classes (the model and its nested
    quantizer) unless ``trust_config`` (:func:`build_checkpoint_spec`): a shared checkpoint runs no code.
    Weights must be finite and of the model's dtype (:func:`~transcoder.utils.checkpoint.check_weights`);
    ``allow_nonfinite`` loads non-finite weights anyway with a warning naming how many.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, unsafe (pickled objects), or weights / config that do not fit.
    """
    path = Path(checkpoint) if not isinstance(checkpoint, dict) else Path(where or "<dict>")
    state = dict(checkpoint) if isinstance(checkpoint, dict) else load_checkpoint(path)
    config = state.get("config")
    model_spec = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_spec, dict) or "target" not in model_spec:
        raise CheckpointError(f"checkpoint {path}: config['model'] must be {{'target': ..., 'params': ...}}, "
                              f"got {model_spec!r}")
    grid = _Grid(checkpoint_mel_settings(state, path), path)
    model = build_checkpoint_spec(model_spec, path, "config.model", trust_config, grid)
    weights, source = model_weights(state, "model", use_ema=use_ema)
    state["weights"] = "ema" if source == "ema" else "model"
    load_weights_strict(model, weights, f"checkpoint {path} ({model_spec['target']}, {source} weights)",
                        allow_nonfinite=allow_nonfinite)
    return model.eval(), state
