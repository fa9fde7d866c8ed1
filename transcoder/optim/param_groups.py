"""AdamW parameter groups: no weight decay on norms, biases and position embeddings."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (decayed) and 1-D parameters plus ``model.no_weight_decay()`` (not)."""
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
