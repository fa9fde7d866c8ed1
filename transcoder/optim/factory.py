"""AdamW and its schedule from the ``optimizer`` config section (shared by training and benchmarks)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from transcoder.optim.param_groups import build_param_groups
from transcoder.optim.schedulers import warmup_cosine_schedule


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
