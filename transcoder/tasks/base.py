"""What a task is: its models, how one step trains them, how it validates, and what it shows.

The trainer (:class:`transcoder.training.Trainer`) owns everything every task needs once: DDP wrapping,
precision, clipping, the NaN guard, EMA, checkpoints and exact resume, signals, logging and the data
loader. A task only says what is specific to it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from transcoder.audio import LogMelFrontend, MelConfig

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from transcoder.training.monitor import Monitor
    from transcoder.training.step import StepState


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; its previous mode is restored after (also on error)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class Task(ABC):
    """Base class of training tasks.

    Subclasses set :attr:`name`, :attr:`model_sections` (config sections that are ``{target, params}``
    model specs), :attr:`optimizer_sections` (part name → config section holding its
    optimizer settings, in update order), :attr:`ema_parts` (parts that keep an EMA when
    ``training.ema_decay`` is set), :attr:`best_metric` (the validation scalar whose minimum is kept
    as ``best.pt``) and, if it has any, :attr:`extra_keys` (its own top-level config keys), and implement
    :meth:`build_models`, :meth:`step` and :meth:`validate`.

    Args:
        config: the resolved run config.
        mel_config: the log-mel front end's settings (``data`` section).
        device: where the models run.
    """

    name: str = "task"
    model_sections: tuple[str, ...] = ("model",)
    #: ``{target, params}`` used for a model section the config leaves out (e.g. a default discriminator).
    default_model_sections: dict[str, dict[str, Any]] = {}
    optimizer_sections: dict[str, str] = {"model": "optimizer"}
    ema_parts: tuple[str, ...] = ("model",)
    best_metric: str = "val/loss"
    #: Task-specific top-level config keys and their defaults (checked by :meth:`resolve_config`).
    extra_keys: dict[str, Any] = {}
    #: A shipped config of this task that trains in minutes on a CPU (named by the start-up resource check).
    cpu_config: str | None = None

    @classmethod
    def resolve_config(cls, config: dict[str, Any]) -> None:
        """Fill in (in place) settings the task derives from other sections, and check they agree; called
        once by :func:`transcoder.training.config.resolve_config`, so saved configs hold the derived values."""
        return None

    def __init__(self, config: dict[str, Any], mel_config: MelConfig, device: torch.device) -> None:
        self.config = config
        self.mel_config = mel_config
        self.device = device
        self.frontend = LogMelFrontend(mel_config).to(device)

    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """The models to train, by part name (the keys of :attr:`optimizer_sections`), on ``self.device``."""

    @abstractmethod
    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """One training step on ``batch`` (``audio`` (B, S) waveforms on the CPU).

        Compute the losses under ``state.autocast()`` with ``state.parts[name].forward_model`` and call
        ``state.optimize(name, loss)`` once per part to update. Returns ``(terms, info)``: detached scalar
        terms (``loss/total`` first) and anything :meth:`log_scalars` needs.
        """

    @abstractmethod
    def validate(self, state: StepState, loader: DataLoader, max_batches: int | None) -> dict[str, float]:
        """Metrics on the validation windows this rank reads, reduced over ranks; keys ``val/*``."""

    def memory_probe(self, state: StepState) -> Callable[[int], None] | None:
        """A function ``probe(clips)`` running one training forward (no backward, no update) of every trained
        part on that many random clips, for the start-up resource check to measure what autograd keeps
        (:mod:`transcoder.training.resources`); ``None``: not measured (activations count as zero)."""
        return None

    def log_scalars(self, state: StepState, info: dict[str, Any]) -> dict[str, float]:
        """Extra scalars for a log line, from the ``info`` of the last step (default: none)."""
        return {}

    def log_line(self, values: dict[str, float]) -> str:
        """The task's part of a log line, from the logged scalars."""
        losses = [f"{key.removeprefix('loss/')} {value:.4f}" for key, value in values.items()
                  if key.startswith("loss/") and key != "loss/total"]
        return f"loss {values['loss/total']:.4f} ({', '.join(losses)})"

    def log_media(self, state: StepState, monitor: Monitor, batch: dict[str, Any], step: int) -> None:
        """Images and audio for TensorBoard on rank 0 (default: none). Must not advance the training RNG."""
        return None

    def next_commands(self, output_dir: Path, checkpoint: Path) -> list[str]:
        """Commands to suggest when a run ends (besides TensorBoard), e.g. how to evaluate ``checkpoint``."""
        return []

    def describe(self, state: StepState) -> str:
        """One line for the start of a run (e.g. the token rate and bitrate)."""
        return self.name
