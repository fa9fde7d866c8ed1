"""Parameter groups, learning-rate schedules and the optimizer factory."""

from transcoder.optim.factory import build_optimizer
from transcoder.optim.param_groups import build_param_groups
from transcoder.optim.schedulers import warmup_cosine_schedule

__all__ = ["build_optimizer", "build_param_groups", "warmup_cosine_schedule"]
