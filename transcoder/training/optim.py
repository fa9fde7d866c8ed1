"""AdamW with parameter groups and a warm-up + cosine learning-rate schedule, from an optimizer config section.

``optimizer.schedule``: ``cosine`` decays over ``training.max_steps`` applied updates; ``budget`` decays over
``training.budget_seconds`` of training time (:class:`BudgetClock`), so a run given a wall-clock budget
ends its cosine exactly when the budget is spent, whatever its speed. The budget clock counts training-loop
time only (validation, checkpoints and media included, model building excluded) and is saved with
checkpoints: a resumed run continues the schedule where it stopped, but since the learning rate of each
step depends on measured time, a budget run is not bitwise reproducible (not across a resume, nor between
two uninterrupted runs); use ``cosine`` for exact resume.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (decayed) and 1-D parameters plus ``model.no_weight_decay()`` (not decayed)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # 1-D tensors are norm scales and biases; the depthwise kernel is 2-D and is decayed.
        if param.ndim <= 1 or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr after ``step`` applied updates: 0 → 1 linearly, then cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: Optimizer, warmup_steps: int, max_steps: int,
                           min_lr_ratio: float = 0.0) -> LambdaLR:
    """A scheduler stepped once per *applied* optimizer update (skipped updates do not advance it)."""
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, max_steps, min_lr_ratio))


SCHEDULES = ("cosine", "budget")


class BudgetClock:
    """Training seconds spent against ``training.budget_seconds``.

    :meth:`local_seconds` is this process's count (seconds restored from a checkpoint plus the time since
    :meth:`start`); :attr:`seconds` is the value every rank agreed on at the last update (the maximum over
    ranks, set by :class:`transcoder.training.step.StepState`), so all ranks follow the same schedule.
    """

    def __init__(self, budget_seconds: float, seconds: float = 0.0) -> None:
        if isinstance(budget_seconds, bool) or not isinstance(budget_seconds, int | float) or budget_seconds <= 0:
            raise ValueError(f"training.budget_seconds={budget_seconds!r}: expected a positive number")
        self.budget_seconds = float(budget_seconds)
        self.seconds = float(seconds)
        self._offset = float(seconds)
        self._started: float | None = None

    def start(self) -> None:
        """Start (or continue after a resume) counting from the current :attr:`seconds`."""
        self._offset = self.seconds
        self._started = time.perf_counter()

    def local_seconds(self) -> float:
        if self._started is None:
            return self._offset
        return self._offset + time.perf_counter() - self._started

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        return min(1.0, self.seconds / self.budget_seconds)

    @property
    def spent(self) -> bool:
        return self.seconds >= self.budget_seconds


def warmup_budget_factor(step: int, warmup_steps: int, progress: float, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr: a linear warm-up over ``warmup_steps`` updates times a cosine over the
    budget ``progress`` in [0, 1] (to ``min_lr_ratio`` when the budget is spent)."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warmup * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any], max_steps: int,
                    device: torch.device, clock: BudgetClock | None = None) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW (fused on CUDA) without decay on norms, biases and position embeddings, plus warm-up + cosine
    (over ``max_steps`` updates, or over ``clock``'s budget with ``schedule: budget``)."""
    optimizer = torch.optim.AdamW(
        build_param_groups(model, float(optim_cfg["weight_decay"])),
        lr=float(optim_cfg["lr"]), betas=tuple(optim_cfg["betas"]), eps=float(optim_cfg["eps"]),
        fused=device.type == "cuda",
    )
    warmup, min_ratio = int(optim_cfg["warmup_steps"]), float(optim_cfg["min_lr_ratio"])
    schedule = optim_cfg.get("schedule", "cosine")
    if schedule == "budget":
        if clock is None:
            raise ValueError("optimizer.schedule=budget needs training.budget_seconds (a positive number of seconds)")
        budget_clock = clock

        def factor(step: int) -> float:
            return warmup_budget_factor(step, warmup, budget_clock.progress, min_ratio)

        return optimizer, LambdaLR(optimizer, factor)
    if schedule != "cosine":
        raise ValueError(f"optimizer.schedule={schedule!r}: expected one of {list(SCHEDULES)}")
    return optimizer, warmup_cosine_schedule(optimizer, warmup, max_steps, min_ratio)
