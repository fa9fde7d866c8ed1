"""The training step every task shares: parts (model + optimizer + schedule + scaler + EMA), the state a
step reads and changes, and :func:`train_step`.

A task's ``step(state, batch)`` computes its losses and calls :meth:`StepState.optimize` once per part it
updates (a GAN task: the discriminator, then the generator). ``optimize`` owns what every update needs:
zeroing, scaled backward, unscaling, clipping, the cross-rank non-finite check, the optimizer and
scheduler step, and the EMA. :func:`train_step` wraps one task step with the counters, the NaN guard and
timing; the trainer and ``scripts/benchmark_train.py`` both call it, so the benchmark measures what trains.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from transcoder.training.ema import ModelEma
from transcoder.training.optim import BudgetClock, build_optimizer
from transcoder.training.state import TrainState
from transcoder.utils.distributed import all_reduce_max

if TYPE_CHECKING:
    from transcoder.tasks.base import Task

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """Raised after ``training.max_nonfinite_steps`` steps in a row with a non-finite loss or gradient."""


@dataclass
class TrainPart:
    """One trained model with its optimizer, learning-rate schedule, loss scaler and optional EMA.

    ``model`` is the plain module (its weights are what checkpoints hold); ``forward_model`` is the view
    used for training forwards (DDP-wrapped and/or compiled, else ``model`` itself). ``updates`` counts
    applied optimizer updates: the scheduler and any loss schedule of the task follow it, so a skipped
    (non-finite, or fp16-overflow) update moves neither.
    """

    name: str
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    clip_norm: float | None
    ema: ModelEma | None = None
    forward_model: nn.Module | None = None
    updates: int = 0
    frozen: tuple[nn.Parameter, ...] = ()  # get no update while `updates < frozen_updates` (init_from)
    frozen_updates: int = 0

    def __post_init__(self) -> None:
        if self.forward_model is None:
            self.forward_model = self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation and media use: the EMA if kept, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def training_state(self) -> dict[str, Any]:
        """Optimizer, scheduler, scaler and counters (weights are stored separately, by part name)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "updates": self.updates,
                "ema_updates": self.ema.updates if self.ema is not None else None}

    def load_training_state(self, state: dict[str, Any], keep_configured: bool = False) -> None:
        """Restore :meth:`training_state`. ``keep_configured`` (a resume with another config): keep the
        hyperparameters this part was built with (each param group's lr, weight decay, betas, eps, ...) and
        the schedule's base lrs, and set the lr the schedule gives at the restored update count; the Adam
        moments, the update count and the loss scale still come from the checkpoint."""
        configured = [{key: value for key, value in group.items() if key != "params"}
                      for group in self.optimizer.param_groups]
        configured_base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if keep_configured:
            for group, settings in zip(self.optimizer.param_groups, configured, strict=True):
                group.update(settings)
            self.scheduler.base_lrs = configured_base_lrs
            step = self.scheduler.last_epoch
            for group, base_lr, factor in zip(self.optimizer.param_groups, configured_base_lrs,
                                              self.scheduler.lr_lambdas, strict=True):
                group["lr"] = base_lr * factor(step)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        self.updates = int(state["updates"])
        if self.ema is not None:
            self.ema.updates = int(state["ema_updates"])


def build_part(name: str, model: nn.Module, optim_cfg: dict[str, Any], max_steps: int, device: torch.device,
               precision: torch.dtype, ema_decay: float | None, ema_warmup: bool = True,
               clock: BudgetClock | None = None) -> TrainPart:
    """A :class:`TrainPart` for ``model`` (already on ``device``) from an optimizer config section."""
    optimizer, scheduler = build_optimizer(model, optim_cfg, max_steps, device, clock)
    clip = optim_cfg.get("grad_clip_norm")
    return TrainPart(
        name=name, model=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
        clip_norm=float(clip) if clip else None,
        ema=ModelEma(model, float(ema_decay), ema_warmup) if ema_decay else None,
    )


def build_parts(task: Task, config: dict[str, Any], device: torch.device, precision: torch.dtype,
                distributed: bool = False, clock: BudgetClock | None = None) -> dict[str, TrainPart]:
    """The task's models, each with the optimizer of its config section and, for ``task.ema_parts``, an EMA;
    ``clock`` drives ``schedule: budget`` optimizers."""
    from transcoder.utils.targets import ConfigError

    train_cfg = config["training"]
    models = task.build_models()
    if list(models) != list(task.optimizer_sections):
        raise RuntimeError(f"task {task.name}: build_models() returned parts {list(models)}, "
                           f"expected {list(task.optimizer_sections)}")
    sync_bn = bool(train_cfg["sync_batchnorm"])
    if sync_bn and device.type != "cuda":
        raise ConfigError("training.sync_batchnorm=true needs CUDA (SyncBatchNorm has no CPU implementation)")
    parts = {}
    for name, model in models.items():
        if train_cfg["grad_checkpointing"] is not None and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(bool(train_cfg["grad_checkpointing"]))
        if sync_bn and distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ema = train_cfg["ema_decay"] if name in task.ema_parts else None
        parts[name] = build_part(name, model.to(device), config[task.optimizer_sections[name]],
                                 int(train_cfg["max_steps"]), device, precision, ema, bool(train_cfg["ema_warmup"]),
                                 clock)
    return parts


@dataclass
class StepState:
    """Everything a training step reads and changes: the parts, the run's counters, precision and the
    stop request of this process (set by a signal handler) and of all ranks (agreed in :meth:`optimize`)."""

    parts: dict[str, TrainPart]
    counters: TrainState
    precision: torch.dtype
    device: torch.device
    stop_requested: bool = False
    stop_agreed: bool = False
    step_nonfinite: bool = field(default=False, repr=False)
    grad_norms: dict[str, Tensor] = field(default_factory=dict, repr=False)
    marks: list[tuple[str, Any]] | None = field(default=None, repr=False)  # set by the benchmark to time phases
    clock: BudgetClock | None = None  # training.budget_seconds: its agreed seconds are updated in optimize()

    def mark(self, phase: str) -> None:
        """End of a phase of the step (``frontend``, ``forward``, ``backward``, ``optimizer``), recorded only
        when :attr:`marks` is a list: a CUDA event on the GPU, ``perf_counter`` on the CPU."""
        if self.marks is None:
            return
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((phase, event))
        else:
            self.marks.append((phase, time.perf_counter()))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forwards (a no-op in fp32)."""
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def optimize(self, name: str, loss: Tensor) -> bool:
        """Backward ``loss`` into part ``name`` and apply its update if the loss and gradient are finite
        on every rank. Returns whether the update was applied (fp16 overflow skips count as not applied).

        One host sync: the non-finite flag, the stop request and the budget clock are reduced together
        across ranks (the clock's maximum, so every rank's ``budget`` schedule reads the same time).
        """
        part = self.parts[name]
        self.mark("forward")
        part.optimizer.zero_grad(set_to_none=True)
        part.scaler.scale(loss).backward()
        self.mark("backward")
        if part.updates < part.frozen_updates:
            for param in part.frozen:  # the same on every rank: AdamW skips parameters without a gradient
                param.grad = None
        part.scaler.unscale_(part.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(part.model.parameters(),
                                                   part.clip_norm if part.clip_norm else math.inf)
        self.grad_norms[name] = grad_norm.detach()
        loss_bad = ~torch.isfinite(loss.detach())
        # Under fp16 an overflowing gradient is the scaler's business (it skips and lowers the scale).
        grad_bad = ~torch.isfinite(grad_norm) if not part.scaler.is_enabled() else torch.zeros_like(loss_bad)
        clock_seconds = self.clock.local_seconds() if self.clock is not None else 0.0
        flags = torch.stack([(loss_bad | grad_bad).double().reshape(()),
                             torch.tensor(float(self.stop_requested), device=loss.device, dtype=torch.float64),
                             torch.tensor(clock_seconds, device=loss.device, dtype=torch.float64)])
        nonfinite, stop, clock_seconds = all_reduce_max(flags).tolist()
        if self.clock is not None:
            self.clock.seconds = clock_seconds
        self.stop_agreed = self.stop_agreed or bool(stop)  # a later signal is acted on at the next step
        if nonfinite:
            self.step_nonfinite = True
            part.optimizer.zero_grad(set_to_none=True)
            self.mark("optimizer")
            return False
        scale_before = part.scaler.get_scale() if part.scaler.is_enabled() else None
        part.scaler.step(part.optimizer)
        part.scaler.update()
        applied = scale_before is None or part.scaler.get_scale() >= scale_before
        if applied:  # else the scaler found inf/NaN gradients and skipped the update
            part.scheduler.step()
            part.updates += 1
            if part.ema is not None:
                part.ema.update(part.model)
        self.mark("optimizer")
        return applied


@dataclass
class StepResult:
    """What one step produced: detached loss terms (``{"loss/total": ..., ...}``), per-part gradient norms,
    task-specific info (e.g. code indices) and the compute time in seconds."""

    terms: dict[str, Tensor]
    grad_norms: dict[str, Tensor]
    info: dict[str, Any]
    seconds: float


def train_step(state: StepState, task: Task, batch: dict[str, Any], max_nonfinite_steps: int) -> StepResult:
    """Run ``task.step`` once, count it, and enforce the NaN guard.

    ``state.counters.step`` counts batches consumed (it positions the data and the logging schedule);
    each part's ``updates`` counts its applied updates. Raises :class:`NonFiniteLossError` after
    ``max_nonfinite_steps`` steps in a row with a skipped non-finite update.
    """
    start = time.perf_counter()
    state.mark("start")
    for part in state.parts.values():
        part.forward_model.train()
    state.step_nonfinite = False
    state.grad_norms = {}
    terms, info = task.step(state, batch)
    counters = state.counters
    counters.step += 1
    if state.step_nonfinite:
        counters.nonfinite_in_row += 1
        counters.skipped_steps += 1
        if counters.nonfinite_in_row >= max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{counters.nonfinite_in_row} non-finite losses in a row at step {counters.step}; lower "
                "optimizer.lr, raise optimizer.warmup_steps, or use training.precision=bf16/fp32")
    else:
        counters.nonfinite_in_row = 0
    return StepResult(terms, dict(state.grad_norms), info, time.perf_counter() - start)
