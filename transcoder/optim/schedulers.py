"""Linear warm-up then cosine decay, as a ``LambdaLR`` multiplier."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: 0 → 1 linearly, then cosine down to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: Optimizer, warmup_steps: int, max_steps: int,
                           min_lr_ratio: float = 0.0) -> LambdaLR:
    """A scheduler stepped once per optimizer step."""
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, max_steps, min_lr_ratio))
