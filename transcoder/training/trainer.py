"""The training loop: one process or ``torchrun`` DDP, exact resume, atomic checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.contrib.logging import logging_redirect_tqdm

from transcoder.data import LogMelFrontend, MelConfig, SpecAugment, build_dataset
from transcoder.optim import build_optimizer
from transcoder.training.loader import build_loader
from transcoder.training.monitor import LogWindow, Monitor, detach_to_float, setup_text_logger
from transcoder.training.sampler import ResumableTrainSampler
from transcoder.training.state import (
    TrainState,
    file_list_fingerprint,
    gather_rng_states,
    restore_rng_state,
    seed_everything,
)
from transcoder.training.validation import ValidationMetrics
from transcoder.utils.checkpoint import load_checkpoint, save_atomic
from transcoder.utils.config import ConfigError, instantiate, save_config
from transcoder.utils.distributed import DistEnv, all_reduce_max, all_reduce_sum, barrier, check_same_on_all_ranks

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """Raised after ``training.max_nonfinite_steps`` non-finite losses in a row."""


class Trainer:
    """Builds everything from a resolved config and runs :meth:`fit`.

    Args:
        config: resolved config (:func:`transcoder.utils.config.load_config`).
        output_dir: run folder (config, log, TensorBoard, ``checkpoints/``).
        env: process placement from :func:`transcoder.utils.distributed.init_distributed`.
        resume: checkpoint to resume from; by default ``output_dir/checkpoints/latest.pt`` if present.
    """

    def __init__(self, config: dict[str, Any], output_dir: str | Path, env: DistEnv,
                 resume: str | Path | None = None) -> None:
        self.config = config
        self.env = env
        self.device = env.device
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        if env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        self.logger = setup_text_logger(self.output_dir, env.is_main)
        self.train_cfg = config["training"]
        self.data_cfg = config["data"]
        self.optim_cfg = config["optimizer"]
        self.state = TrainState()
        self.history: list[dict[str, float]] = []  # every logged scalar dict, in order (rank 0 and others)
        self._stop_signal: int | None = None  # set by this process's signal handler
        self._stop_agreed = False  # set once every rank has seen the stop request (all-reduced)
        self._pending_skipped_files = 0  # this rank's skipped files since the last all-reduce
        self._last_saved_step: int | None = None

        seed = int(self.train_cfg["seed"])
        seed_everything(seed + env.rank)
        if self.train_cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)

        self.precision = self._resolve_precision(self.train_cfg["precision"])
        self.mel_config = MelConfig.from_dict(self.data_cfg, strict=False)
        self.frontend = LogMelFrontend(self.mel_config).to(self.device)
        spec_cfg = self.data_cfg["specaugment"]
        self.specaugment = SpecAugment(**spec_cfg).to(self.device) if spec_cfg else None

        self.model = self._build_model()
        self.loss_fn = instantiate(config["loss"]).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.optim_cfg, int(self.train_cfg["max_steps"]),
                                                         self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == torch.float16)
        ema_decay = self.train_cfg["ema_decay"]
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(ema_decay)), use_buffers=True)
                    if ema_decay else None)

        resume_path = Path(resume) if resume else self.ckpt_dir / "latest.pt"
        self.resumed_from: Path | None = None
        self._resumed_train_files: dict[str, Any] | None = None
        if resume or resume_path.is_file():
            self._load(resume_path)

        self.train_model: nn.Module = self.model
        if env.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.train_cfg["compile"]:
            self.train_model = torch.compile(self.train_model)

        self.train_dataset = build_dataset(self.data_cfg["train"], sample_rate=self.mel_config.sample_rate,
                                           clip_samples=self.mel_config.clip_samples, mode="train")
        val_spec = self.data_cfg["val"]
        self.val_dataset = (build_dataset(val_spec, sample_rate=self.mel_config.sample_rate,
                                          clip_samples=self.mel_config.clip_samples, mode="eval")
                            if val_spec else None)
        self.train_files = self._check_same_files_on_every_rank()
        if self._resumed_train_files is not None and self._resumed_train_files != self.train_files:
            self.logger.warning(
                "the training file list changed since the checkpoint (%s files, list hash %s; now %s, %s): "
                "training continues, but not with the clips the interrupted run would have seen",
                *self._resumed_train_files.values(), *self.train_files.values())
        if env.is_main:
            save_config(config, self.output_dir / "config.yaml")
        n_params = sum(p.numel() for p in self.model.parameters())
        self.logger.info("model %.2fM parameters, %s, precision %s, world size %d, %d training files%s",
                         n_params / 1e6, self.device, str(self.precision).replace("torch.", ""), env.world_size,
                         len(self.train_dataset), f", resumed from {self.resumed_from} at step {self.state.step}"
                         if self.resumed_from else "")

    # -- construction ----------------------------------------------------------------------
    def _resolve_precision(self, name: str) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if name == "fp16" and self.device.type != "cuda":
            raise ConfigError("training.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
        return PRECISIONS[name]

    def _build_model(self) -> nn.Module:
        model = build_model(self.config["model"], self.mel_config)
        if self.train_cfg["grad_checkpointing"] is not None:
            model.set_grad_checkpointing(bool(self.train_cfg["grad_checkpointing"]))
        if self.train_cfg["sync_batchnorm"] and self.device.type != "cuda":
            raise ConfigError("training.sync_batchnorm=true needs CUDA (SyncBatchNorm has no CPU implementation)")
        if self.train_cfg["sync_batchnorm"] and self.env.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(self.device)

    def _loader(self, dataset: Any, sampler: Any, batch_size: int, train: bool) -> DataLoader:
        return build_loader(dataset, sampler, batch_size, workers=int(self.data_cfg["num_workers"]),
                            device=self.device, seed=int(self.train_cfg["seed"]), persistent=train,
                            pin_memory=bool(self.data_cfg["pin_memory"]),
                            prefetch_factor=int(self.data_cfg["prefetch_factor"]))

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
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_n_averaged": self.ema.n_averaged.item() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.to_dict(),
            "step": self.state.step,
            "rng": gather_rng_states(),
            "world_size": self.env.world_size,
            "train_files": self.train_files,
            "config": self.config,
            "mel": self.mel_config.to_dict(),
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
            self.logger.info("step %d: saved %s", self.state.step, ", ".join(f"{n}.pt" for n in names))
        barrier()

    def _load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None:
            if checkpoint.get("ema") is None:
                raise ConfigError(f"training.ema_decay is set but checkpoint {path} has no EMA weights")
            self.ema.module.load_state_dict(checkpoint["ema"])
            self.ema.n_averaged.fill_(int(checkpoint["ema_n_averaged"]))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainState.from_dict(checkpoint["state"])
        self._resumed_train_files = checkpoint.get("train_files")
        rng_states = checkpoint["rng"]
        if checkpoint.get("world_size") == self.env.world_size:
            restore_rng_state(rng_states[self.env.rank])
        else:
            warnings.warn(f"{path} was written by {checkpoint.get('world_size')} processes, this run has "
                          f"{self.env.world_size}: RNG streams restart from the seed (resume is not bitwise exact)",
                          stacklevel=2)
        self.resumed_from = path

    # -- the loop --------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> TrainState:
        """Train to ``training.max_steps`` (or stop early at ``stop_at_step`` with a checkpoint, leaving
        the schedule unchanged, e.g. to split a run into jobs); returns the final state."""
        max_steps = int(self.train_cfg["max_steps"])
        end_step = min(max_steps, stop_at_step) if stop_at_step is not None else max_steps
        batch_size = int(self.data_cfg["batch_size"])
        sampler = ResumableTrainSampler(len(self.train_dataset), rank=self.env.rank, world_size=self.env.world_size,
                                        seed=int(self.train_cfg["seed"]), start=self.state.step * batch_size)
        loader = iter(self._loader(self.train_dataset, sampler, batch_size, train=True))
        monitor = Monitor(self.output_dir, self.env.is_main, max_steps, self.state.step)
        previous_handlers = self._install_signal_handlers()
        window = LogWindow()
        # Log lines go through tqdm.write, so they don't break the progress bar.
        with logging_redirect_tqdm(loggers=[self.logger]):
            try:
                self._loop(loader, sampler, monitor, window, end_step, max_steps, batch_size)
            finally:
                monitor.close()
                for signum, handler in previous_handlers.items():
                    signal.signal(signum, handler)
        return self.state

    def _loop(self, loader: Any, sampler: ResumableTrainSampler, monitor: Monitor, window: LogWindow,
              end_step: int, max_steps: int, batch_size: int) -> None:
        """Steps until ``end_step``; logging, media, validation and checkpoints on their schedules."""
        while self.state.step < end_step:
            wait_start = time.perf_counter()
            batch = next(loader)
            window.data_seconds += time.perf_counter() - wait_start
            terms, grad_norm, info = self._train_step(batch, window)
            window.add(terms, grad_norm, batch["audio"].shape[0])
            self._pending_skipped_files += len(batch.get("skipped", []))
            step = self.state.step
            if step % int(self.train_cfg["log_every"]) == 0 or step == max_steps:
                self._log(monitor, window, info, sampler.epoch_at(step * batch_size))
                window = LogWindow()
            else:
                monitor.progress(1)
            if self.train_cfg["image_every"] and step % int(self.train_cfg["image_every"]) == 0:
                self._log_media(monitor, batch)
            if self.val_dataset is not None and step % int(self.train_cfg["val_every"]) == 0:
                self._validate_and_keep_best(monitor)
            if step % int(self.train_cfg["ckpt_every"]) == 0:
                self.save("latest", f"step_{step:07d}")
            elif step % int(self.train_cfg["latest_every"]) == 0:
                self.save("latest")
            if self._stop_agreed:
                signum = self._stop_signal or signal.SIGTERM
                self.save("latest")
                self.logger.warning("received signal %d: saved checkpoints/latest.pt at step %d, exiting",
                                    signum, step)
                raise SystemExit(128 + signum)
        finished = self.state.step >= max_steps
        if finished and self.val_dataset is not None and max_steps % int(self.train_cfg["val_every"]):
            self._validate_and_keep_best(monitor)
        if self._last_saved_step != self.state.step:
            self.save("latest")
        self._verify_replicas()
        self.logger.info("%s %d steps (%d skipped as non-finite, %d reads of bad audio files skipped)",
                         "finished" if finished else "stopped at", self.state.step, self.state.skipped_steps,
                         self.state.skipped_files)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def _model_input(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) waveforms → model input (SpecAugment-ed in training) and clean target, (B, T, F)."""
        with torch.no_grad():
            target = self.frontend(audio.to(self.device, non_blocking=True))
            model_input = self.specaugment(target) if self.specaugment is not None else target
        return model_input, target

    def _train_step(self, batch: dict[str, Any], window: LogWindow) -> tuple[dict[str, Tensor], Tensor, dict]:
        self.train_model.train()
        if self.specaugment is not None:
            self.specaugment.train()
        compute_start = time.perf_counter()
        model_input, target = self._model_input(batch["audio"])
        with self._autocast():
            recon, quant_loss, info = self.train_model(model_input)
        loss, terms = self.loss_fn(recon, target, quant_loss, self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.optim_cfg["grad_clip_norm"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip) if clip else math.inf)

        # One small sync per step: skip decisions and signals must agree on every rank.
        loss_bad = ~torch.isfinite(loss.detach())
        grad_bad = ~torch.isfinite(grad_norm) if self.precision != torch.float16 else torch.zeros_like(loss_bad)
        flags = torch.stack([(loss_bad | grad_bad).float(), torch.tensor(float(self._stop_signal is not None),
                                                                         device=loss.device)])
        nonfinite, stop = all_reduce_max(flags).tolist()
        # Act on the reduced flag only: a signal arriving after this point is acted on at the next step.
        self._stop_agreed = bool(stop)
        if nonfinite:
            self.state.nonfinite_in_row += 1
            self.state.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.logger.warning("step %d: non-finite loss or gradient (loss %s), step skipped (%d in a row)",
                                self.state.step, float(loss.detach()), self.state.nonfinite_in_row)
            if self.state.nonfinite_in_row >= int(self.train_cfg["max_nonfinite_steps"]):
                raise NonFiniteLossError(
                    f"{self.state.nonfinite_in_row} non-finite losses in a row at step {self.state.step}; lower "
                    "optimizer.lr, raise optimizer.warmup_steps, or use training.precision=bf16/fp32")
        else:
            self.state.nonfinite_in_row = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        self.state.step += 1
        window.compute_seconds += time.perf_counter() - compute_start
        terms["entropy/per_sample_bits"] = info["per_sample_entropy"] / math.log(2)
        terms["entropy/codebook_bits"] = info["codebook_entropy"] / math.log(2)
        return terms, grad_norm.detach(), info

    # -- logging and validation ------------------------------------------------------------
    def _log(self, monitor: Monitor, window: LogWindow, info: dict[str, Any], epoch: int) -> None:
        self._sync_skipped_files()
        values = detach_to_float(window.mean_terms())
        indices = info["indices"]
        distinct = int(torch.unique(indices).numel())
        possible = min(2 ** self.model.embed_dim, indices.numel())
        seconds = max(window.data_seconds + window.compute_seconds, 1e-9)
        samples = window.samples * self.env.world_size
        clip_seconds = self.mel_config.clip_samples / self.mel_config.sample_rate
        values.update({
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/grad_norm": values.pop("grad_norm"),
            "codebook/batch_distinct_codes": distinct,
            "codebook/batch_code_usage": distinct / possible,
            "perf/samples_per_second": samples / seconds,
            "perf/audio_seconds_per_second": samples * clip_seconds / seconds,
            "perf/data_wait_fraction": window.data_seconds / seconds,
            "train/epoch": epoch,
            "train/skipped_files": self.state.skipped_files,
        })
        monitor.scalars(values, self.state.step)
        self.history.append({"step": self.state.step, **values})
        monitor.progress(1, {"loss": f"{values['loss/total']:.4f}", "lr": f"{values['train/lr']:.2e}",
                             "samples/s": f"{values['perf/samples_per_second']:.1f}"})
        self.logger.info(
            "step %d | loss %.4f (l1 %.4f, quant %.4f) | cb entropy %.2f bits | lr %.3e | grad %.3f | %.1f samples/s "
            "| data wait %.0f%%", self.state.step, values["loss/total"], values["loss/l1"], values["loss/quantizer"],
            values["entropy/codebook_bits"], values["train/lr"], values["train/grad_norm"],
            values["perf/samples_per_second"], 100 * values["perf/data_wait_fraction"])

    @torch.no_grad()
    def _log_media(self, monitor: Monitor, batch: dict[str, Any]) -> None:
        """Input vs reconstruction spectrograms and their Griffin-Lim audio (rank 0 only)."""
        if not self.env.is_main:
            return
        count = min(int(self.train_cfg["num_images"]), batch["audio"].shape[0])
        if count == 0:
            return
        model = self._eval_model()
        was_training = model.training
        model.eval()
        _, target = self._model_input(batch["audio"][:count])
        with self._autocast():
            recon, _, _ = model(target)
        model.train(was_training)
        monitor.reconstructions(self.frontend, target, recon.float(), batch["audio"].shape[-1], self.state.step)

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """MSE / MAE in dB, L1 in model space and codebook usage on the validation split, reduced over ranks.

        Each rank takes every ``world_size``-th window (no padding duplicates), then sums are all-reduced
        (:class:`~transcoder.training.validation.ValidationMetrics`).
        """
        model = self._eval_model()
        was_training = model.training
        model.eval()
        indices = list(range(self.env.rank, len(self.val_dataset), self.env.world_size))
        batch_size = int(self.data_cfg["val_batch_size"] or self.data_cfg["batch_size"])
        loader = self._loader(self.val_dataset, indices, batch_size, train=False)
        max_batches = self.train_cfg["val_max_batches"]
        metrics = ValidationMetrics(self.frontend, self.model.embed_dim, self.device)
        for batch_index, batch in enumerate(loader):
            if max_batches is not None and batch_index >= int(max_batches):
                break
            _, target = self._model_input(batch["audio"])
            with self._autocast():
                recon, quant_loss, info = model(target)
            metrics.update(recon, target, quant_loss, info["indices"], torch.as_tensor(batch["num_valid"]))
        model.train(was_training)
        return metrics.compute()

    def validate_to_file(self) -> dict[str, float]:
        """Validate the loaded weights and write ``validation_step_N.json`` (rank 0); returns the metrics."""
        if self.val_dataset is None:
            raise ConfigError("data.val is null: there is no validation split to evaluate")
        metrics = self.validate()
        if self.env.is_main:
            path = self.output_dir / f"validation_step_{self.state.step:07d}.json"
            path.write_text(json.dumps({"step": self.state.step, "world_size": self.env.world_size, **metrics},
                                       indent=2))
            self.logger.info("step %d | validation %s -> %s", self.state.step, metrics, path)
        return metrics

    def _validate_and_keep_best(self, monitor: Monitor) -> None:
        metrics = self.validate()
        monitor.scalars(metrics, self.state.step)
        self.logger.info("step %d | validation: MSE %.2f dB^2, MAE %.3f dB, L1 %.4f, %d distinct codes, "
                         "%.2f bits/token over %d clips", self.state.step, metrics["val/mse_db"],
                         metrics["val/mae_db"], metrics["val/l1"], metrics["val/distinct_codes"],
                         metrics["val/code_entropy_bits"], metrics["val/clips"])
        if metrics["val/l1"] < self.state.best_val_loss:
            self.state.best_val_loss = metrics["val/l1"]
            self.save("best")

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at the end of the step."""
        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _verify_replicas(self) -> None:
        """Under DDP, check that every rank ends with bit-identical weights (a broken sync shows here)."""
        if not self.env.distributed:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
            weighted = flat * torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            fingerprint = (flat.sum().item(), weighted.sum().item())  # position-weighted: catches swaps too
        check_same_on_all_ranks(fingerprint, "the model weights after training")
        self.logger.info("weights identical on all %d ranks", self.env.world_size)


def build_model(spec: dict[str, Any], mel_config: MelConfig) -> nn.Module:
    """Instantiate the model and check that its input grid matches the front end's mel settings."""
    model = instantiate(spec)
    config = getattr(model, "config", None)
    if config is not None:
        if config.input_size != mel_config.n_mels:
            raise ConfigError(f"model audioconfig.input_size={config.input_size} but data.n_mels="
                              f"{mel_config.n_mels}: they must be equal")
        if config.input_length != mel_config.target_length:
            raise ConfigError(f"model audioconfig.input_length={config.input_length} but data.target_length="
                              f"{mel_config.target_length}: they must be equal")
    return model
