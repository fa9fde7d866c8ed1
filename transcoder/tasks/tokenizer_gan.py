"""The tokenizer task with a mel-domain adversarial loss (``task: tokenizer_gan``).

Two parts: ``model`` (the tokenizer, ``optimizer``) and ``discriminator`` (a multi-scale 2-D patch
discriminator on the log-mel, :class:`transcoder.models.mel_discriminator.MultiScaleMelDiscriminator`,
``disc_optimizer``). Each step, once ``loss.params.disc_start`` generator updates are done, the
discriminator takes a hinge step on the clean target vs the detached reconstruction, then the tokenizer
takes a step on reconstruction + quantizer + adaptive-weighted generator hinge + feature matching
(:class:`transcoder.losses.tokenizer_gan.AudioTokenizerGanLoss`). Before that only the tokenizer trains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from transcoder.losses.adversarial import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from transcoder.losses.tokenizer_gan import AudioTokenizerGanLoss
from transcoder.tasks.tokenizer import TokenizerTask
from transcoder.training.step import StepState
from transcoder.utils.targets import ConfigError, instantiate

PLAIN_LOSS = "transcoder.losses.AudioTokenizerLoss"
GAN_LOSS = "transcoder.losses.tokenizer_gan.AudioTokenizerGanLoss"
DEFAULT_DISCRIMINATOR = {"target": "transcoder.models.mel_discriminator.MultiScaleMelDiscriminator", "params": {}}


class TokenizerGanTask(TokenizerTask):
    """:class:`TokenizerTask` plus a mel discriminator; the loss section is an ``AudioTokenizerGanLoss``
    (a config naming the plain ``AudioTokenizerLoss`` is upgraded to it, keeping its params)."""

    name = "tokenizer_gan"
    model_sections = ("model", "discriminator")
    optimizer_sections = {"model": "optimizer", "discriminator": "disc_optimizer"}
    default_model_sections = {"discriminator": DEFAULT_DISCRIMINATOR}
    ema_parts = ("model",)
    best_metric = "val/l1"

    @classmethod
    def resolve_config(cls, config: dict[str, Any]) -> None:
        super().resolve_config(config)
        if config["loss"]["target"] == PLAIN_LOSS:
            config["loss"]["target"] = GAN_LOSS

    def __init__(self, config: dict[str, Any], mel_config: Any, device: torch.device) -> None:
        super().__init__(config, mel_config, device)
        if not isinstance(self.loss_fn, AudioTokenizerGanLoss):
            raise ConfigError(f"task=tokenizer_gan: loss.target={config['loss']['target']!r}: expected {GAN_LOSS} "
                              "(or a subclass)")

    def build_models(self) -> dict[str, nn.Module]:
        models = super().build_models()
        models["discriminator"] = instantiate(self.config["discriminator"]).to(self.device)
        return models

    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        gen, disc = state.parts["model"], state.parts["discriminator"]
        loss_fn: AudioTokenizerGanLoss = self.loss_fn  # type: ignore[assignment]
        model_input, target = self.model_input(batch["audio"], augment=True)
        valid_frames = self.valid_frames(batch, model_input.shape[1])
        state.mark("frontend")
        with state.autocast():
            recon, quant_loss, info = gen.forward_model(model_input, valid_frames=valid_frames)
        active = loss_fn.gan_active(gen.updates)
        zero = torch.zeros((), device=self.device)
        d_loss, g_adv, fm, gan_weight = zero, zero, zero, zero
        if active:
            # One forward over [real; fake] (a DDP module is run once per backward).
            with state.autocast():
                logits, _ = disc.forward_model(torch.cat([target, recon.detach().to(target.dtype)]))
            real_logits, fake_logits = _split_halves(logits)
            d_loss = discriminator_hinge_loss(real_logits, fake_logits)
            state.optimize("discriminator", d_loss)

        rec_loss, terms = loss_fn.reconstruction(recon, target)
        codebook_weight = loss_fn.codebook_weight_at(gen.updates)
        loss = rec_loss + codebook_weight * quant_loss
        if active:
            disc.model.requires_grad_(False)  # the generator step computes no discriminator gradients
            try:
                with state.autocast():
                    logits, features = disc.model(torch.cat([recon, target.to(recon.dtype)]))
                fake_logits, _ = _split_halves(logits)
                g_adv = generator_hinge_loss(fake_logits)
                gan_weight = loss_fn.gan_weight(rec_loss, g_adv, gen.model.decoder.to_patches.weight)
                loss = loss + gan_weight * g_adv
                if loss_fn.feature_matching_weight > 0:
                    halves = [_split_halves(layers) for layers in features]
                    fm = feature_matching_loss([real for _, real in halves], [fake for fake, _ in halves])
                    loss = loss + loss_fn.feature_matching_weight * fm
            finally:
                disc.model.requires_grad_(True)
        state.optimize("model", loss)
        terms = {"loss/total": loss.detach(), **terms, "loss/quantizer": quant_loss.detach(),
                 "loss/codebook_weight": torch.tensor(codebook_weight), "loss/disc": d_loss.detach(),
                 "loss/gen_adv": g_adv.detach(), "loss/feature_matching": fm.detach(),
                 "gan/weight": gan_weight.detach()}
        self._entropy_terms(info, terms)
        return terms, {"indices": info["indices"]}

    def log_line(self, values: dict[str, float]) -> str:
        return (f"{super().log_line(values)} | disc {values['loss/disc']:.4f}, adv {values['loss/gen_adv']:.4f}, "
                f"fm {values['loss/feature_matching']:.4f}, w {values['gan/weight']:.3g}")


def _split_halves(tensors: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Tensors of a ``[a; b]`` batch (2B, ...) → (first halves, second halves), in fp32."""
    halves = [t.float().chunk(2) for t in tensors]
    return [h[0] for h in halves], [h[1] for h in halves]
