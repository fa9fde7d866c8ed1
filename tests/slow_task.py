"""A tokenizer task whose steps from the third on take ``$SLOW_STEP_SECONDS`` (for the Ctrl-C tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from torch import Tensor

from transcoder.tasks.tokenizer import TokenizerTask
from transcoder.training.step import StepState


class SlowStepTask(TokenizerTask):
    name = "tokenizer"

    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if state.counters.step >= 2:
            time.sleep(float(os.environ.get("SLOW_STEP_SECONDS", "0")))
        return super().step(state, batch)
