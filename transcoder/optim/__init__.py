"""Parameter groups and learning-rate schedules."""

from transcoder.optim.param_groups import build_param_groups
from transcoder.optim.schedulers import warmup_cosine_schedule

__all__ = ["build_param_groups", "warmup_cosine_schedule"]
