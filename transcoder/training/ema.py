"""An exponential moving average of a model's weights, with a decay that ramps up over the first updates."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """EMA copy of ``model`` (parameters and floating-point buffers; integer buffers are copied).

    With ``warmup`` the decay after ``t`` updates is ``min(decay, (1 + t) / (10 + t))`` (the warm-up of
    timm's ``ModelEmaV3``), so a short run's EMA is not dominated by the initial weights: with a constant
    0.999, 55 % of the average after 600 updates is still the first model.

    Args:
        model: the trained (unwrapped) model; the EMA copy is made from it.
        decay: the decay once warmed up, in (0, 1).
        warmup: ramp the decay up from 0.1 (after the first update) to ``decay``.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay!r}: expected a number in (0, 1)")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used for the ``updates``-th update (1-based)."""
        if not self.warmup:
            return self.decay if updates > 1 else 0.0  # the first update copies the weights
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.updates += 1
        decay = self.decay_at(self.updates)
        averaged, current = [], []
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value.detach().to(ema_value.dtype))
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
