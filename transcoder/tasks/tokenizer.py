"""The tokenizer task: an Audio BSQ-ViT learns to reconstruct log-mels through binary codes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from transcoder.audio import MelConfig
from transcoder.audio.neural_vocoder import load_vocoder
from transcoder.audio.render import Renderer, build_renderer
from transcoder.data import SpecAugment
from transcoder.evaluation.reconstruction import frames_covering
from transcoder.models.build import build_model, derive_input_grid
from transcoder.tasks.base import Task, evaluating
from transcoder.training.validation import ValidationMetrics
from transcoder.utils.checkpoint import CheckpointError
from transcoder.utils.numbers import format_value
from transcoder.utils.rates import token_rates
from transcoder.utils.targets import instantiate

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from transcoder.training.monitor import Monitor
    from transcoder.training.step import StepState


def media_renderer(path: str | None, mel_config: MelConfig, device: torch.device) -> Renderer:
    """The renderer of TensorBoard audio: the neural vocoder of ``training.vocoder``, Griffin-Lim when ``None``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming ``training.vocoder`` and the
    differing settings when its mel settings differ from the ``data`` block's."""
    vocoder = None
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"training.vocoder={path}: no such file")
        try:
            vocoder = load_vocoder(path, device=None)
        except CheckpointError as err:
            raise ValueError(f"training.vocoder={path}: {err}") from None
    return build_renderer(mel_config, vocoder, device=device,
                          target_name="this run's data mel settings (training.vocoder)")


class TokenizerTask(Task):
    """Reconstruct the clean log-mel from a (SpecAugment-ed) log-mel through BSQ codes.

    One part, ``model`` (``config["model"]``), trained with ``config["loss"]`` and the ``optimizer`` section.
    Validation reports dB errors and code usage over valid frames (padding excluded); the best checkpoint
    follows ``val/l1``.
    """

    name = "tokenizer"
    optimizer_sections = {"model": "optimizer"}
    ema_parts = ("model",)
    best_metric = "val/l1"
    cpu_config = "configs/tokenizer/audio_simple_cpu_b18.yaml"

    @classmethod
    def resolve_config(cls, config: dict[str, Any]) -> None:
        """``model.params.audioconfig.input_size`` / ``input_length`` come from ``data.n_mels`` /
        ``data.target_length`` (stated once, in the data block)."""
        config["model"] = derive_input_grid(config["model"], MelConfig.from_dict(config["data"], strict=False))

    def __init__(self, config: dict[str, Any], mel_config: MelConfig, device: torch.device) -> None:
        super().__init__(config, mel_config, device)
        self.loss_fn = instantiate(config["loss"]).to(device)
        spec_cfg = dict(config["data"]["specaugment"] or {})
        # "input": the model learns to fill the masked cells; "input_and_target": the same masks on both.
        self.specaugment_target = spec_cfg.pop("apply_to", "input") == "input_and_target"
        self.specaugment = SpecAugment(**spec_cfg).to(device) if spec_cfg else None
        self.renderer = media_renderer(config["training"].get("vocoder"), mel_config, device)
        if (config["model"].get("params") or {}).get("nested_bits"):
            self.cpu_config = "configs/tokenizer/audio_simple_cpu_nested_b18.yaml"  # the same recipe at CPU size

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": build_model(self.config["model"], self.mel_config).to(self.device)}

    def model_input(self, audio: Tensor, augment: bool) -> tuple[Tensor, Tensor]:
        """(B, S) waveforms → model input (SpecAugment-ed if ``augment``) and target, both (B, T, F); the target
        is clean unless ``data.specaugment.apply_to`` is ``input_and_target`` (then it is the masked input)."""
        with torch.no_grad():
            target = self.frontend(audio.to(self.device, non_blocking=True))
            if augment and self.specaugment is not None:
                masked = self.specaugment.train()(target)
                return masked, masked if self.specaugment_target else target
        return target, target

    def valid_frames(self, batch: dict[str, Any], frames: int) -> Tensor | None:
        """(B,) mel frames holding audio (not padding) per window of ``batch``; ``None`` when the batch does not
        say (``num_valid`` missing): then every token counts in the quantizer's loss and entropies."""
        if "num_valid" not in batch:
            return None
        num_valid = torch.as_tensor(batch["num_valid"], device=self.device)
        return frames_covering(num_valid, self.mel_config.hop_length, frames)

    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        part = state.parts["model"]
        model_input, target = self.model_input(batch["audio"], augment=True)
        valid_frames = self.valid_frames(batch, model_input.shape[1])
        state.mark("frontend")
        with state.autocast():
            recon, quant_loss, info = part.forward_model(model_input, valid_frames=valid_frames)
        loss, terms = self.loss_fn(recon, target, quant_loss, part.updates)
        state.optimize("model", loss)
        self._entropy_terms(info, terms)
        return terms, {"indices": info["indices"]}

    def memory_probe(self, state: StepState) -> Callable[[int], None]:
        model = state.parts["model"].model
        def probe(clips: int) -> None:
            audio = 0.1 * torch.randn(clips, self.mel_config.clip_samples)
            model_input, _ = self.model_input(audio, augment=False)
            with state.autocast():
                model(model_input)
        return probe

    @staticmethod
    def _entropy_terms(info: dict[str, Any], terms: dict[str, Tensor]) -> None:
        """Add the soft entropies (bits) to ``terms`` when the quantizer computed them."""
        if "per_sample_entropy" in info:
            terms["entropy/per_sample_bits"] = info["per_sample_entropy"].detach() / math.log(2)
            terms["entropy/codebook_bits"] = info["codebook_entropy"].detach() / math.log(2)

    def log_scalars(self, state: StepState, info: dict[str, Any]) -> dict[str, float]:
        """The real use of the codes in the last batch: distinct codes, their share of the possible ones and
        the entropy (bits) of their empirical distribution (what validation's ``code_entropy_bits`` measures)."""
        indices = info["indices"]
        _, counts = torch.unique(indices, return_counts=True)
        distinct = int(counts.numel())
        possible = min(2 ** state.parts["model"].model.bits, indices.numel())
        share = counts.double() / counts.sum()
        entropy = float(-(share * share.log2()).sum())
        return {"codebook/batch_distinct_codes": distinct, "codebook/batch_code_usage": distinct / possible,
                "codebook/batch_code_entropy_bits": entropy}

    def log_line(self, values: dict[str, float]) -> str:
        """Losses; the real codes of the batch (distinct, entropy in bits); the quantizer's soft codebook
        entropy (the differentiable estimate the entropy loss maximises, not the codes' entropy)."""
        line = f"loss {values['loss/total']:.4f} (l1 {values['loss/l1']:.4f}, quant {values['loss/quantizer']:.4f})"
        if "codebook/batch_distinct_codes" in values:
            line += (f" | batch codes: {format_value(values['codebook/batch_distinct_codes'])} distinct, entropy "
                     f"{values['codebook/batch_code_entropy_bits']:.2f} bits")
        if "entropy/codebook_bits" in values:
            line += f" | soft cb entropy (estimate) {values['entropy/codebook_bits']:.2f} bits"
        return line

    @torch.no_grad()
    def validate(self, state: StepState, loader: DataLoader, max_batches: int | None) -> dict[str, float]:
        part = state.parts["model"]
        model = part.eval_model
        with evaluating(model):
            metrics = ValidationMetrics(self.frontend, part.model.bits, self.device)
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                target, _ = self.model_input(batch["audio"], augment=False)
                with state.autocast():
                    recon, quant_loss, info = model(target, valid_frames=self.valid_frames(batch, target.shape[1]))
                metrics.update(recon, target, quant_loss, info["indices"], torch.as_tensor(batch["num_valid"]))
        return metrics.compute()

    @torch.no_grad()
    def log_media(self, state: StepState, monitor: Monitor, batch: dict[str, Any], step: int) -> None:
        """Input vs reconstruction spectrograms and their rendered audio."""
        count = min(int(self.config["training"]["num_images"]), batch["audio"].shape[0])
        if count == 0:
            return
        model = state.parts["model"].eval_model
        with evaluating(model):
            target, _ = self.model_input(batch["audio"][:count], augment=False)
            with state.autocast():
                recon, _, _ = model(target)
        monitor.reconstructions(self.frontend, target, recon.float(), batch["audio"].shape[-1], step,
                                renderer=self.renderer)

    def next_commands(self, output_dir: Path, checkpoint: Path) -> list[str]:
        return [f"python scripts/evaluate_audio_tokenizer.py {checkpoint} --output {output_dir / 'eval'}"]

    def describe(self, state: StepState) -> str:
        model = state.parts["model"].model
        grid_t, grid_f = model.config.grid
        rates = token_rates(model.patch_size, self.mel_config.n_mels, self.mel_config.hop_length,
                            self.mel_config.sample_rate, model.bits)
        return (f"tokenizer: {grid_t}x{grid_f} tokens of {model.bits} bits per "
                f"{self.mel_config.target_length}-frame window, {rates.tokens_per_second:g} tokens/s, "
                f"{rates.bits_per_second:g} bit/s")
