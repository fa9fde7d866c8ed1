"""AdamW with parameter groups and a warm-up + cosine learning-rate schedule, from an optimizer config section."""

from __future__ import annotations

import math
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


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any], max_steps: int,
                    device: torch.device) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW (fused on CUDA) without decay on norms, biases and position embeddings, plus warm-up + cosine."""
    optimizer = torch.optim.AdamW(
        build_param_groups(model, float(optim_cfg["weight_decay"])),
        lr=float(optim_cfg["lr"]), betas=tuple(optim_cfg["betas"]), eps=float(optim_cfg["eps"]),
        fused=device.type == "cuda",
    )
    scheduler = warmup_cosine_schedule(optimizer, int(optim_cfg["warmup_steps"]), max_steps,
                                       float(optim_cfg["min_lr_ratio"]))
    return optimizer, scheduler
