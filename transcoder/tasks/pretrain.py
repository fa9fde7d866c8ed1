"""The ``mae_pretrain`` task: masked-autoencoder pre-training of the tokenizer's encoder (AudioMAE style).

The model section is a :class:`transcoder.models.mae.AudioMAE` (its ``audioconfig`` has the tokenizer's
keys), the loss section a :class:`transcoder.losses.masked.MaskedPatchLoss`. A tokenizer then starts from
the encoder with ``training.init_from: {path: <run>/checkpoints/latest.pt, modules: [encoder]}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from transcoder.audio import MelConfig
from transcoder.losses.masked import MaskedPatchLoss
from transcoder.models.build import build_model, derive_input_grid
from transcoder.models.mae import AudioMAE, MaskedPrediction, unpatchify
from transcoder.tasks.base import Task, evaluating
from transcoder.utils.distributed import all_reduce_sum
from transcoder.utils.targets import ConfigError, instantiate

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from transcoder.training.monitor import Monitor
    from transcoder.training.step import StepState


class MAEPretrainTask(Task):
    """Reconstruct masked log-mel patches from the visible ones.

    One part, ``model`` (an :class:`AudioMAE`), trained with the ``optimizer`` section. Each step draws a new
    mask from the global RNG (restored on resume). Validation reports ``val/loss``, the masked-patch loss
    with masks from a generator seeded by ``training.seed`` (the same masks at every validation), over
    windows holding audio (``num_valid > 0``).
    """

    name = "mae_pretrain"
    optimizer_sections = {"model": "optimizer"}
    ema_parts = ("model",)
    best_metric = "val/loss"

    @classmethod
    def resolve_config(cls, config: dict[str, Any]) -> None:
        """The encoder's input grid comes from the data block (as for the tokenizer); SpecAugment is refused
        (masking is the augmentation) and the loss must be a :class:`MaskedPatchLoss`."""
        config["model"] = derive_input_grid(config["model"], MelConfig.from_dict(config["data"], strict=False))
        if config["data"]["specaugment"] is not None:
            raise ConfigError(f"data.specaugment={config['data']['specaugment']!r}: task mae_pretrain masks "
                              "patches itself; set data.specaugment to null")
        target = config["loss"]["target"]
        if target.rpartition(".")[2] != "MaskedPatchLoss":
            raise ConfigError(f"loss.target={target!r}: task mae_pretrain expects "
                              "transcoder.losses.masked.MaskedPatchLoss")

    def __init__(self, config: dict[str, Any], mel_config: MelConfig, device: torch.device) -> None:
        super().__init__(config, mel_config, device)
        self.loss_fn: MaskedPatchLoss = instantiate(config["loss"]).to(device)

    def build_models(self) -> dict[str, nn.Module]:
        model = build_model(self.config["model"], self.mel_config)
        if not isinstance(model, AudioMAE):
            raise ConfigError(f"model.target={self.config['model']['target']!r}: task mae_pretrain expects "
                              "transcoder.models.mae.AudioMAE")
        return {"model": model.to(self.device)}

    def mel(self, audio: Tensor) -> Tensor:
        """(B, S) waveforms → (B, T, F) log-mel in model space."""
        with torch.no_grad():
            return self.frontend(audio.to(self.device, non_blocking=True))

    def memory_probe(self, state: StepState) -> Callable[[int], None]:
        model = state.parts["model"].model
        def probe(clips: int) -> None:
            mel = self.mel(0.1 * torch.randn(clips, self.mel_config.clip_samples))
            with state.autocast():
                model(mel)
        return probe

    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        part = state.parts["model"]
        mel = self.mel(batch["audio"])
        state.mark("frontend")
        with state.autocast():
            out: MaskedPrediction = part.forward_model(mel)
        loss, terms = self.loss_fn(out.pred, out.target, out.mask)
        state.optimize("model", loss)
        return terms, {"visible_share": out.visible.shape[1] / out.mask.shape[1]}

    def log_scalars(self, state: StepState, info: dict[str, Any]) -> dict[str, float]:
        return {"mae/visible_share": float(info["visible_share"])}

    def log_line(self, values: dict[str, float]) -> str:
        return f"masked mse {values['loss/total']:.4f}"

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(self.config["training"]["seed"]))

    @torch.no_grad()
    def validate(self, state: StepState, loader: DataLoader, max_batches: int | None) -> dict[str, float]:
        part = state.parts["model"]
        model = part.eval_model
        with evaluating(model):
            generator = self._generator()
            totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum of per-window losses, windows
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                mel = self.mel(batch["audio"])
                with state.autocast():
                    out: MaskedPrediction = model(mel, generator=generator)
                per_patch = (out.pred.float() - self.loss_fn.target(out.target.float())).pow(2).mean(-1)
                per_window = torch.where(out.mask, per_patch, 0.0).sum(1) / out.mask.sum(1).clamp_min(1)
                keep = torch.as_tensor(batch["num_valid"], device=self.device) > 0
                totals += torch.stack([per_window[keep].double().sum(), keep.double().sum()])
        total, windows = all_reduce_sum(totals).tolist()
        return {"val/loss": total / max(windows, 1.0), "val/clips": windows}

    @torch.no_grad()
    def log_media(self, state: StepState, monitor: Monitor, batch: dict[str, Any], step: int) -> None:
        """Input, masked input (masked patches at the floor) and reconstruction (visible patches copied,
        masked ones predicted; de-normalised with the true patch statistics under ``norm_pix_loss``)."""
        count = min(int(self.config["training"]["num_images"]), batch["audio"].shape[0])
        if count == 0:
            return
        model = state.parts["model"].eval_model
        with evaluating(model):
            mel = self.mel(batch["audio"][:count])
            with state.autocast():
                out: MaskedPrediction = model(mel, generator=self._generator())
        pred, target = out.pred.float(), out.target.float()
        if self.loss_fn.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        mask = out.mask.unsqueeze(-1)
        floor = torch.full_like(target, -1.0)  # the bottom of model space (data.db_min)
        patch_tf = model.patch_size
        panels = {
            "input": mel,
            "masked input": unpatchify(torch.where(mask, floor, target), out.grid, patch_tf),
            "reconstruction": unpatchify(torch.where(mask, pred, target), out.grid, patch_tf),
        }
        monitor.spectrogram_panels("mae", {name: self.frontend.model_to_db(value) for name, value in panels.items()},
                                   step)

    def describe(self, state: StepState) -> str:
        model: AudioMAE = state.parts["model"].model
        grid = model.config.grid
        masked = model.mask_spec.num_masked(grid)
        return (f"mae_pretrain: {grid[0]}x{grid[1]} tokens per {self.mel_config.target_length}-frame window, "
                f"{masked} masked ({model.mask_spec.mode}, ratio {model.mask_spec.ratio}), "
                f"{grid[0] * grid[1] - masked} visible, encoder conv module: {model.encoder_conv}")
