"""The one trainer: any task, one process or ``torchrun`` DDP, exact resume, atomic checkpoints, signals."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset
from tqdm.contrib.logging import logging_redirect_tqdm

from transcoder.audio import MelConfig
from transcoder.data import build_dataset
from transcoder.tasks import Task, build_task
from transcoder.training.config import save_config
from transcoder.training.init_from import frozen_parameters, load_modules
from transcoder.training.loader import ObservedIterator, build_loader
from transcoder.training.monitor import LogWindow, Monitor, detach_to_float, setup_text_logger
from transcoder.training.optim import BudgetClock
from transcoder.training.resources import (
    available_host_memory,
    check_resources,
    estimate_memory,
    gpu_free_memory,
)
from transcoder.training.run_dir import RunLock, config_differences, load_resumable, remove_stale_temporaries
from transcoder.training.sampler import ResumableTrainSampler
from transcoder.training.signals import StopSignals, signal_name
from transcoder.training.state import (
    TrainState,
    file_list_fingerprint,
    gather_from_ranks,
    gather_rng_states,
    restore_rng_state,
    seed_everything,
)
from transcoder.training.step import PRECISIONS, NonFiniteLossError, StepState, build_parts, train_step
from transcoder.utils.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_weights_strict,
    save_atomic,
)
from transcoder.utils.distributed import DistEnv, all_reduce_sum, barrier, check_same_on_all_ranks
from transcoder.utils.numbers import format_value
from transcoder.utils.targets import ConfigError

__all__ = ["NonFiniteLossError", "Trainer", "resolve_precision"]


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """``training.precision`` → dtype (``auto``: bf16 on CUDA, fp32 on CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("training.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return PRECISIONS[name]


class Trainer:
    """Builds a task and its parts from a resolved config and runs :meth:`fit`.

    Args:
        config: resolved config (:func:`transcoder.training.config.load_config`); ``config["task"]`` picks the task.
        output_dir: run folder (config, log, TensorBoard, ``checkpoints/``).
        env: process placement from :func:`transcoder.utils.distributed.init_distributed`.
        resume: checkpoint to resume from; by default the run folder's newest readable checkpoint
            (``latest.pt``, else the highest ``step_N.pt``), if any.
        allow_config_change: resume even if the checkpoint's config differs from ``config`` in settings
            that change results (monitoring settings such as ``log_every`` may always change).
    """

    def __init__(self, config: dict[str, Any], output_dir: str | Path, env: DistEnv,
                 resume: str | Path | None = None, allow_config_change: bool = False) -> None:
        self.config = config
        self.env = env
        self.device = env.device
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.train_cfg = config["training"]
        self.data_cfg = config["data"]
        self.history: list[dict[str, float]] = []  # every logged scalar dict, in order
        self._pending_skipped_files = 0  # this rank's skipped files since the last all-reduce
        self._last_saved_step: int | None = None
        self._latest_on_disk: int | None = None  # the step of the complete checkpoints/latest.pt
        self._received_signal: int | None = None
        #: The command that resumes this run (named when a signal stops it); the CLI sets the exact one.
        self.resume_command = f"the same command with --output-dir {self.output_dir}"

        seed_everything(int(self.train_cfg["seed"]) + env.rank)
        if self.train_cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
        self.precision = resolve_precision(self.train_cfg["precision"], self.device)
        self.mel_config = MelConfig.from_dict(self.data_cfg, strict=False)
        self.task: Task = build_task(config, self.mel_config, self.device)
        budget = self.train_cfg["budget_seconds"]
        self.clock = BudgetClock(float(budget)) if budget is not None else None
        parts = build_parts(self.task, config, self.device, self.precision, distributed=env.distributed,
                            clock=self.clock)
        self.step_state = StepState(parts=parts, counters=TrainState(), precision=self.precision,
                                    device=self.device, clock=self.clock)

        # Data before the run folder: a missing root or an empty folder leaves nothing behind.
        self.train_dataset = self._build_dataset("train", mode="train")
        self.val_dataset = self._build_dataset("val", mode="eval") if self.data_cfg["val"] else None
        if resume is not None and not Path(resume).is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
        # Before the run folder too: a run that cannot fit in memory leaves nothing behind.
        resource_warning = None if self.train_cfg["skip_resource_check"] else self._check_resources()
        self._lock = RunLock(self.output_dir) if env.is_main else None
        if env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        self.logger = setup_text_logger(self.output_dir, env.is_main)
        if resource_warning and env.is_main:
            self.logger.warning("%s", resource_warning)
        if env.is_main:
            for path in remove_stale_temporaries(self.ckpt_dir):
                self.logger.warning("removed %s, left by a save that was interrupted", path)

        self.resumed_from: Path | None = None
        self._resumed_train_files: dict[str, Any] | None = None
        found = self._find_checkpoint(Path(resume) if resume else None)
        if found is not None:
            self._load(*found, allow_config_change=allow_config_change)
        self._init_from(fresh=found is None)
        self._wrap_parts()

        self.train_files = self._check_same_files_on_every_rank()
        if self._resumed_train_files is not None and self._resumed_train_files != self.train_files:
            self.logger.warning(
                "the training file list changed since the checkpoint (%s files, list hash %s; now %s, %s): "
                "training continues, but not with the clips the interrupted run would have seen",
                *self._resumed_train_files.values(), *self.train_files.values())
        if env.is_main:
            save_config(config, self.output_dir / "config.yaml")
        n_params = sum(p.numel() for part in self.parts.values() for p in part.model.parameters())
        self.logger.info("%s | %.2fM parameters, %s, precision %s, world size %d, %d training files%s",
                         self.task.describe(self.step_state), n_params / 1e6, self.device,
                         str(self.precision).replace("torch.", ""), env.world_size, self.train_files["count"],
                         f", resumed from {self.resumed_from} at step {self.state.step}"
                         if self.resumed_from else "")
        for split, dataset in (("train", self.train_dataset), ("val", self.val_dataset)):
            left_out = getattr(dataset, "skip_reasons", None) or {}  # listing problems (nothing is read yet)
            if left_out and env.is_main:
                self.logger.warning("data.%s: %d entries skipped while listing: %s", split, len(left_out),
                                    "; ".join(f"{path}: {reason}" for path, reason in list(left_out.items())[:5])
                                    + (" ..." if len(left_out) > 5 else ""))

    # -- construction ----------------------------------------------------------------------
    @property
    def parts(self) -> dict[str, Any]:
        return self.step_state.parts

    @property
    def state(self) -> TrainState:
        """The run's counters (step, best validation value, skipped steps and files)."""
        return self.step_state.counters

    @property
    def model(self) -> nn.Module:
        """The first part's model (the tokenizer's ``model``, a GAN's generator)."""
        return next(iter(self.parts.values())).model

    def _build_dataset(self, split: str, mode: str) -> Any:
        """``data.<split>``'s dataset; a bad root, split or target is re-raised naming ``data.<split>``."""
        try:
            return build_dataset(self.data_cfg[split], sample_rate=self.mel_config.sample_rate,
                                 clip_samples=self.mel_config.clip_samples, mode=mode)
        except (ValueError, TypeError, OSError) as err:
            try:
                renamed = type(err)(f"data.{split}: {err}")
            except TypeError:  # e.g. UnicodeError subclasses take five arguments
                renamed = ValueError(f"data.{split}: {type(err).__name__}: {err}")
            raise renamed from None

    def _check_resources(self) -> str | None:
        """The start-up memory and speed check (:mod:`transcoder.training.resources`): raises
        :class:`ResourceError` when the run cannot fit, returns a warning when it will be very slow."""
        estimate = estimate_memory(
            [part.model for part in self.parts.values()],
            ema_parts=sum(part.ema is not None for part in self.parts.values()),
            probe=self.task.memory_probe(self.step_state), batch_size=int(self.data_cfg["batch_size"]),
            clip_samples=self.mel_config.clip_samples, num_workers=int(self.data_cfg["num_workers"]),
            prefetch_factor=int(self.data_cfg["prefetch_factor"]))
        processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # ranks sharing this host's memory
        host_free = available_host_memory()
        return check_resources(estimate, self.device, int(self.train_cfg["max_steps"]), self.task.cpu_config,
                               host_free // processes_here if host_free is not None else None,
                               gpu_free_memory(self.device))

    def _wrap_parts(self) -> None:
        """DDP (and ``torch.compile``) views for training forwards; checkpoints keep the plain modules."""
        for part in self.parts.values():
            forward_model: nn.Module = part.model
            if self.env.distributed and any(p.requires_grad for p in part.model.parameters()):
                forward_model = DistributedDataParallel(
                    part.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.train_cfg["compile"]:
                forward_model = torch.compile(forward_model)
            part.forward_model = forward_model

    def _loader(self, dataset: Any, sampler: Any, batch_size: int, train: bool) -> DataLoader:
        return build_loader(dataset, sampler, batch_size, workers=int(self.data_cfg["num_workers"]),
                            device=self.device, seed=int(self.train_cfg["seed"]), persistent=train,
                            pin_memory=bool(self.data_cfg["pin_memory"]),
                            prefetch_factor=int(self.data_cfg["prefetch_factor"]),
                            timeout=self.data_cfg["loader_timeout"])

    def _check_same_files_on_every_rank(self) -> dict[str, Any]:
        """Count and hash of the training file list; every rank must list the same files in the same
        order (a node with a partial copy or a stale cache would silently duplicate or drop clips)."""
        fingerprint = file_list_fingerprint(self.train_dataset)
        check_same_on_all_ranks(fingerprint, "the training file list (count, hash)",
                                "every rank must see the same data: check node-local copies and file-list caches")
        return fingerprint

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "task": self.task.name,
            "models": {name: part.model.state_dict() for name, part in self.parts.items()},
            "ema": {name: part.ema.module.state_dict() for name, part in self.parts.items() if part.ema is not None},
            "optim": {name: part.training_state() for name, part in self.parts.items()},
            "state": self.state.to_dict(),
            "step": self.state.step,
            "rng": gather_rng_states(),
            "world_size": self.env.world_size,
            "train_files": self.train_files,
            "config": self.config,
            "mel": self.mel_config.to_dict(),
            **self._stream_checkpoint(),
            "budget_clock_seconds": self.clock.seconds if self.clock is not None else None,
        }

    def _sync_skipped_files(self) -> None:
        """Add every rank's newly skipped files to the run total (a collective)."""
        pending = torch.tensor([float(self._pending_skipped_files)], device=self.device)
        self.state.skipped_files += int(all_reduce_sum(pending).item())
        self._pending_skipped_files = 0

    def save(self, *names: str) -> None:
        """Write ``checkpoints/<name>.pt`` for each name (a collective: call on every rank)."""
        self._sync_skipped_files()
        checkpoint = self._checkpoint()
        if "latest" in names:
            self._last_saved_step = self.state.step
        if self.env.is_main:
            for name in names:
                save_atomic(checkpoint, self.ckpt_dir / f"{name}.pt")
            if "latest" in names:
                self._latest_on_disk = self.state.step
            self.logger.info("step %d: saved %s", self.state.step, ", ".join(f"{n}.pt" for n in names))
        barrier()

    def _find_checkpoint(self, resume: Path | None) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from: ``resume`` if given, else the run folder's newest readable one
        (rank 0 looks first and sets damaged files aside; then the other ranks find the same file)."""
        if resume is not None:
            return resume, load_checkpoint(resume, map_location="cpu")
        found = load_resumable(self.ckpt_dir, self.logger.warning) if self.env.is_main else None
        barrier()
        if not self.env.is_main:
            found = load_resumable(self.ckpt_dir, self.logger.warning)
        check_same_on_all_ranks(found[0].name if found else None, "the checkpoint to resume from")
        return found

    def _load(self, path: Path, checkpoint: dict[str, Any], allow_config_change: bool) -> None:
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} was written by an earlier version (checkpoint format "
                                  f"{checkpoint.get('format', 1)}): training cannot resume from it; its weights "
                                  "still load with transcoder.api.load_tokenizer")
        if checkpoint.get("task", "tokenizer") != self.task.name:
            raise CheckpointError(f"{path} was written by task {checkpoint.get('task')!r}, this run is "
                                  f"task {self.task.name!r}")
        changed = config_differences(checkpoint["config"], self.config)
        if changed and not allow_config_change:
            raise ConfigError(f"the config differs from the one {path} was trained with ({'; '.join(changed)}); "
                              "resume with the same config, pass --allow-config-change to resume anyway, or "
                              "use a new --output-dir")
        if changed:
            self.logger.warning("resuming from %s with a changed config (%s): the new settings apply from the "
                                "first resumed update", path, "; ".join(changed))
        if self.clock is not None:  # before the parts: a `budget` schedule reads it
            self.clock.seconds = float(checkpoint.get("budget_clock_seconds") or 0.0)
        for name, part in self.parts.items():
            if name not in checkpoint["models"]:
                raise CheckpointError(f"{path} holds no weights for part {name!r} "
                                      f"(it has {sorted(checkpoint['models'])})")
            load_weights_strict(part.model, checkpoint["models"][name], f"checkpoint {path}, part {name!r}")
            if part.ema is not None:
                if name not in checkpoint["ema"]:
                    raise ConfigError(f"training.ema_decay is set but checkpoint {path} has no EMA weights "
                                      f"for {name!r}")
                load_weights_strict(part.ema.module, checkpoint["ema"][name], f"checkpoint {path}, EMA of {name!r}")
            # After a config change the new optimizer settings and schedule apply from the first resumed update.
            part.load_training_state(checkpoint["optim"][name], keep_configured=bool(changed))
        self.step_state.counters = TrainState.from_dict(checkpoint["state"])
        self._restore_stream(checkpoint)
        self._resumed_train_files = checkpoint.get("train_files")
        if checkpoint.get("world_size") == self.env.world_size:
            restore_rng_state(checkpoint["rng"][self.env.rank])
        else:
            warnings.warn(f"{path} was written by {checkpoint.get('world_size')} processes, this run has "
                          f"{self.env.world_size}: RNG streams restart from the seed (resume is not bitwise exact)",
                          stacklevel=2)
        self.resumed_from = path
        if path == self.ckpt_dir / "latest.pt":
            self._latest_on_disk = self.state.step
        self._restore_numbered_checkpoint(path, checkpoint)

    def _restore_numbered_checkpoint(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """A kill between writing ``latest.pt`` and ``step_N.pt`` of one save leaves no ``step_N.pt``: write it
        from the checkpoint resumed from (the same content), so a resumed run keeps every numbered checkpoint."""
        step, every = self.state.step, int(self.train_cfg["ckpt_every"])
        numbered = self.ckpt_dir / f"step_{step:07d}.pt"
        if (self.env.is_main and step > 0 and step % every == 0 and path.resolve().parent == self.ckpt_dir.resolve()
                and not numbered.exists()):
            save_atomic(checkpoint, numbered)
            self.logger.warning("%s was missing (a save interrupted after %s): written from it", numbered.name,
                                path.name)

    # -- streaming training data: an IterableDataset with state_dict()/load_state_dict() -----
    # It replaces ResumableTrainSampler: it splits the data over ranks and workers itself, sees each
    # consumed batch (observe), and its per-rank position is gathered into the checkpoint ("data_state").
    @property
    def _streaming(self) -> bool:
        dataset = self.train_dataset
        return isinstance(dataset, IterableDataset) and all(
            callable(getattr(dataset, name, None)) for name in ("state_dict", "load_state_dict", "observe"))

    def _stream_batches(self, batch_size: int) -> ObservedIterator:
        return ObservedIterator(iter(self._loader(self.train_dataset, None, batch_size, train=True)),
                                self.train_dataset.observe)

    def _stream_checkpoint(self) -> dict[str, Any]:
        """``{"data_state": [state of rank 0, rank 1, ...]}`` (a collective), or ``{}`` for map-style data."""
        return {"data_state": gather_from_ranks(self.train_dataset.state_dict())} if self._streaming else {}

    def _restore_stream(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("data_state")
        if not self._streaming or states is None:
            return
        # Another world size: the dataset sees it in the state, warns and starts a new pass.
        self.train_dataset.load_state_dict(states[self.env.rank] if len(states) == self.env.world_size else states[0])

    def _init_from(self, fresh: bool) -> None:
        """``training.init_from``: load the modules' weights at the start of a fresh run only (a resumed run
        has them in its checkpoint), and on every start set which parameters stay frozen for how long."""
        spec = self.train_cfg.get("init_from")
        if spec is None:
            return
        if "model" not in self.parts:
            raise ConfigError(f"training.init_from loads into part 'model'; task {self.task.name!r} has parts "
                              f"{list(self.parts)}")
        part = self.parts["model"]
        if fresh:
            self.logger.info("%s", load_modules(part.model, spec, part.ema.module if part.ema else None))
        part.frozen = tuple(frozen_parameters(part.model, spec["modules"]))
        part.frozen_updates = int(spec["freeze_steps"])

    # -- the loop --------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> TrainState:
        """Train to ``training.max_steps`` or until ``training.budget_seconds`` are spent (or stop early at
        ``stop_at_step`` with a checkpoint, leaving the schedule unchanged, e.g. to split a run into jobs);
        returns the final counters."""
        max_steps = int(self.train_cfg["max_steps"])
        end_step = min(max_steps, stop_at_step) if stop_at_step is not None else max_steps
        batch_size = int(self.data_cfg["batch_size"])
        if self.state.step >= end_step or (self.clock is not None and self.clock.spent):
            self._nothing_to_do(max_steps)
            self.release()
            return self.state
        self._first_step = self.state.step
        if self._streaming:
            sampler = self.train_dataset  # gives the epoch (pass) for logging
            loader = self._stream_batches(batch_size)
        else:
            sampler = ResumableTrainSampler(len(self.train_dataset), rank=self.env.rank,
                                            world_size=self.env.world_size, seed=int(self.train_cfg["seed"]),
                                            start=self.state.step * batch_size)
            loader = iter(self._loader(self.train_dataset, sampler, batch_size, train=True))
        monitor = Monitor(self.output_dir, self.env.is_main, max_steps, self.state.step, self.clock)
        self._fit_start = time.perf_counter()
        signals = self._stop_signals()
        signals.install()
        if self.clock is not None:
            self.clock.start()
        # Log lines go through tqdm.write, so they don't break the progress bar.
        with logging_redirect_tqdm(loggers=[self.logger]):
            try:
                self._loop(loader, sampler, monitor, end_step, max_steps, batch_size)
            finally:
                monitor.close()
                signals.uninstall()
                shutdown = getattr(loader, "_shutdown_workers", None)
                if shutdown is not None:  # never leave loader workers behind, whatever ended the loop
                    shutdown()
                self.release()
        return self.state

    def _nothing_to_do(self, max_steps: int) -> None:
        """A start on a run that already reached its end: say so; nothing is trained or re-saved."""
        if self.state.step >= max_steps or (self.clock is not None and self.clock.spent):
            limit = "training.max_steps" if self.state.step >= max_steps else "training.budget_seconds"
            self.logger.info("already finished at step %s; nothing to do (raise %s to continue: the same command "
                             "with %s=... --allow-config-change, see \"Checkpoints and resuming\" in "
                             "AUDIO_README.md)", f"{self.state.step:,}", limit, limit)
        else:
            self.logger.info("already at step %s (--stop-at-step); nothing to do (a larger --stop-at-step, or none, "
                             "continues)", f"{self.state.step:,}")

    def release(self) -> None:
        """Give the run folder up (the lock); :meth:`fit` and :meth:`validate_to_file` do it when they end."""
        if self._lock is not None:
            self._lock.release()

    def _loop(self, loader: Any, sampler: Any, monitor: Monitor, end_step: int, max_steps: int,
              batch_size: int) -> None:
        """Steps until ``end_step``; logging, media, validation and checkpoints on their schedules
        (``sampler.epoch_at(position)`` gives the logged epoch: the sampler, or a streaming dataset)."""
        cfg = self.train_cfg
        window = LogWindow()
        while self.state.step < end_step and not (self.clock is not None and self.clock.spent):
            wait_start = time.perf_counter()
            batch = next(loader)
            window.data_seconds += time.perf_counter() - wait_start
            result = train_step(self.step_state, self.task, batch, int(cfg["max_nonfinite_steps"]))
            if self.step_state.step_nonfinite:
                self.logger.warning("step %d: non-finite loss or gradient (loss %s), update skipped (%d in a row)",
                                    self.state.step, float(result.terms["loss/total"]),
                                    self.state.nonfinite_in_row)
            window.compute_seconds += result.seconds
            window.add(result.terms, result.grad_norms, batch["audio"].shape[0])
            self._pending_skipped_files += len(batch.get("skipped", []))
            step = self.state.step
            if step % int(cfg["log_every"]) == 0 or step == max_steps:
                self._log(monitor, window, result.info, sampler.epoch_at(step * batch_size))
                window = LogWindow()
            else:
                monitor.progress(1)
            if cfg["image_every"] and step % int(cfg["image_every"]) == 0 and self.env.is_main:
                self._log_media(monitor, batch, step)
            if self.val_dataset is not None and cfg["val_every"] and step % int(cfg["val_every"]) == 0:
                self._validate_and_keep_best(monitor)
            if step % int(cfg["ckpt_every"]) == 0:
                self.save("latest", f"step_{step:07d}")
            elif step % int(cfg["latest_every"]) == 0:
                self.save("latest")
            if self.step_state.stop_agreed:
                signum = self._received_signal or signal.SIGTERM
                if step == self._first_step + 1:  # agreed in the first step: the same on every rank
                    self.logger.warning("received %s during the first step of this start: exiting without writing a "
                                        "checkpoint%s", signal_name(signum), self._kept_checkpoint_note())
                    raise SystemExit(128 + signum)
                self.save("latest")
                self.logger.warning("received %s: saved checkpoints/latest.pt at step %d, exiting; resume with: %s",
                                    signal_name(signum), step, self.resume_command)
                raise SystemExit(128 + signum)
        budget_spent = self.clock is not None and self.clock.spent
        finished = self.state.step >= max_steps or budget_spent
        if finished and self.val_dataset is not None and cfg["val_every"] and self.state.step % int(cfg["val_every"]):
            self._validate_and_keep_best(monitor)
        if self._last_saved_step != self.state.step:
            self.save("latest")
        self._verify_replicas()
        ran = self.state.step - self._first_step
        self.logger.info("%s step %s (%s steps this run, in %.0f s; %s skipped as non-finite, %s reads of bad audio "
                         "files skipped); results in %s", "finished at" if finished else "stopped at",
                         f"{self.state.step:,}", f"{ran:,}", time.perf_counter() - self._fit_start,
                         f"{self.state.skipped_steps:,}", f"{self.state.skipped_files:,}", self.output_dir)
        best = self.ckpt_dir / "best.pt"
        checkpoint = best if best.is_file() else self.ckpt_dir / "latest.pt"
        commands = [*self.task.next_commands(self.output_dir, checkpoint),
                    f"tensorboard --logdir {self.output_dir}"]
        self.logger.info("next: %s", "  |  ".join(commands))

    # -- logging and validation ------------------------------------------------------------
    def _log(self, monitor: Monitor, window: LogWindow, info: dict[str, Any], epoch: int) -> None:
        self._sync_skipped_files()
        values = detach_to_float(window.mean_terms())
        seconds = max(window.data_seconds + window.compute_seconds, 1e-9)
        samples = window.samples * self.env.world_size
        clip_seconds = self.mel_config.clip_samples / self.mel_config.sample_rate
        for name, part in self.parts.items():
            suffix = "" if len(self.parts) == 1 else f"/{name}"
            values[f"train/lr{suffix}"] = part.lr
            values[f"train/grad_norm{suffix}"] = values.pop(f"grad_norm/{name}", float("nan"))
        values.update(self.task.log_scalars(self.step_state, info))
        values.update({
            "perf/samples_per_second": samples / seconds,
            "perf/audio_seconds_per_second": samples * clip_seconds / seconds,
            "perf/data_wait_fraction": window.data_seconds / seconds,
            "train/epoch": epoch,
            "train/skipped_files": self.state.skipped_files,
        })
        step = self.state.step
        monitor.scalars(values, step)
        self.history.append({"step": step, **values})
        first = next(iter(self.parts))
        lr_key = "train/lr" if len(self.parts) == 1 else f"train/lr/{first}"
        grad_key = "train/grad_norm" if len(self.parts) == 1 else f"train/grad_norm/{first}"
        monitor.progress(1, {"loss": f"{values['loss/total']:.4f}", "lr": f"{values[lr_key]:.2e}",
                             "samples/s": f"{values['perf/samples_per_second']:.1f}"})
        self.logger.info("step %d | %s | lr %.3e | grad %.3f | %.1f samples/s | data wait %.0f%%", step,
                         self.task.log_line(values), values[lr_key], values[grad_key],
                         values["perf/samples_per_second"], 100 * values["perf/data_wait_fraction"])

    def _log_media(self, monitor: Monitor, batch: dict[str, Any], step: int) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        # Media must not advance the training RNG (exact resume).
        with torch.random.fork_rng(devices=devices):
            self.task.log_media(self.step_state, monitor, batch, step)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The task's validation metrics, each rank reading every ``world_size``-th window (no padding
        duplicates), reduced over ranks."""
        indices = list(range(self.env.rank, len(self.val_dataset), self.env.world_size))
        batch_size = int(self.data_cfg["val_batch_size"] or self.data_cfg["batch_size"])
        loader = self._loader(self.val_dataset, indices, batch_size, train=False)
        max_batches = self.train_cfg["val_max_batches"]
        return self.task.validate(self.step_state, loader, int(max_batches) if max_batches is not None else None)

    def validate_to_file(self) -> dict[str, float]:
        """Validate the loaded weights and write ``validation_step_N.json`` (rank 0); returns the metrics."""
        if self.val_dataset is None:
            raise ConfigError("data.val is null: there is no validation split to evaluate")
        try:
            metrics = self.validate()
        finally:
            self.release()
        if self.env.is_main:
            path = self.output_dir / f"validation_step_{self.state.step:07d}.json"
            path.write_text(json.dumps({"step": self.state.step, "world_size": self.env.world_size, **metrics},
                                       indent=2))
            self.logger.info("step %d | validation %s -> %s", self.state.step, metrics, path)
        return metrics

    def _validate_and_keep_best(self, monitor: Monitor) -> None:
        metrics = self.validate()
        monitor.scalars(metrics, self.state.step)
        shown = ", ".join(f"{key.removeprefix('val/')} {format_value(value)}" for key, value in metrics.items())
        self.logger.info("step %d | validation: %s", self.state.step, shown)
        best = metrics[self.task.best_metric]
        if best < self.state.best_val_loss:
            self.state.best_val_loss = best
            self.save("best")

    def _stop_signals(self) -> StopSignals:
        """SIGTERM/SIGINT: the first is answered at once and stops the loop at the end of the step (with a
        checkpoint); a second aborts at once, keeping the last complete checkpoint (:mod:`.signals`)."""
        def request_stop(signum: int) -> None:
            self._received_signal = signum
            self.step_state.stop_requested = True

        def acknowledge(signum: int) -> str:
            if self.state.step == self._first_step:
                return (f"received {signal_name(signum)}: stopping after this first step (step {self.state.step + 1}) "
                        "without writing a checkpoint; press Ctrl-C again to abort")
            return (f"received {signal_name(signum)}: stopping after this step (step {self.state.step + 1}) and "
                    "saving checkpoints/latest.pt; press Ctrl-C again to abort")

        def abort(signum: int) -> str:
            latest = self.ckpt_dir / "latest.pt"
            at_step = f" (step {self._latest_on_disk})" if self._latest_on_disk is not None else ""
            kept = f"{latest}{at_step} is kept" if latest.is_file() else "no checkpoint was written yet"
            return (f"received {signal_name(signum)} again: aborted during step {self.state.step + 1}; {kept}; "
                    f"resume with: {self.resume_command}")

        def say(line: str) -> None:
            if self.env.is_main:
                self.logger.warning("%s", line)
        return StopSignals(request_stop, acknowledge, abort, say)

    def _kept_checkpoint_note(self) -> str:
        """``"; <latest.pt> (step N) is kept"`` when an earlier start left one, else ``""``."""
        latest = self.ckpt_dir / "latest.pt"
        if not latest.is_file():
            return ""
        at_step = f" (step {self._latest_on_disk})" if self._latest_on_disk is not None else ""
        return f"; {latest}{at_step} is kept; resume with: {self.resume_command}"

    def _verify_replicas(self) -> None:
        """Under DDP, check that every rank ends with bit-identical weights (a broken sync shows here)."""
        if not self.env.distributed:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().double().flatten() for part in self.parts.values()
                              for p in part.model.parameters()])
            weighted = flat * torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            fingerprint = (flat.sum().item(), weighted.sum().item())  # position-weighted: catches swaps too
        check_same_on_all_ranks(fingerprint, "the model weights after training")
        self.logger.info("weights identical on all %d ranks", self.env.world_size)
