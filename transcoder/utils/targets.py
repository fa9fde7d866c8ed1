"""Building objects from ``target`` + ``params`` specs, and the error every config problem raises.

This sits below every other layer so that models, audio, data, tasks and training can all build
objects from a spec and report a bad config the same way, without importing the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key and what was expected.

    ``key``: the dotted config key the error is about, when the raiser knows it (the config loader uses
    it to name the file or command-line override that set the key).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def get_obj_from_str(dotted: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ConfigError(f"target {dotted!r}: expected a dotted path such as transcoder.data.AudioFolderDataset")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"target {dotted!r} cannot be imported: {err}") from err


def instantiate(spec: dict[str, Any], **extra: Any) -> Any:
    """Build ``target(**params, **extra)``; a bad parameter names the target and the key."""
    cls = get_obj_from_str(spec["target"])
    params = {**(spec.get("params") or {}), **extra}
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"cannot build {spec['target']} with params {sorted(params)}: {err}") from err
