"""Training tasks: each says what its models are and how one step trains them (see :class:`Task`)."""

from __future__ import annotations

from typing import Any

import torch

from transcoder.audio import MelConfig
from transcoder.tasks.base import Task

# Task names a config's top-level ``task`` key accepts; a dotted class path works too.
TASKS: dict[str, str] = {
    "tokenizer": "transcoder.tasks.tokenizer.TokenizerTask",
    "vocoder": "transcoder.tasks.vocoder.VocoderTask",
    "mae_pretrain": "transcoder.tasks.pretrain.MAEPretrainTask",
    "tokenizer_gan": "transcoder.tasks.tokenizer_gan.TokenizerGanTask",
}


def task_class(name: str) -> type[Task]:
    """The task class for a config's ``task`` value (a registered name or a dotted class path)."""
    from transcoder.utils.targets import ConfigError, get_obj_from_str

    if not isinstance(name, str):
        raise ConfigError(f"task={name!r}: expected one of {sorted(TASKS)} or a dotted class path")
    if name not in TASKS and "." not in name:
        raise ConfigError(f"task={name!r}: expected one of {sorted(TASKS)} or a dotted class path")
    cls = get_obj_from_str(TASKS.get(name, name))
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task={name!r} is not a transcoder.tasks.Task subclass")
    return cls


def build_task(config: dict[str, Any], mel_config: MelConfig, device: torch.device) -> Task:
    """Instantiate the task a resolved config names."""
    return task_class(config["task"])(config, mel_config, device)


__all__ = ["TASKS", "Task", "build_task", "task_class"]
