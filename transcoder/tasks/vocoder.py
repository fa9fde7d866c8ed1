"""The vocoder task: a Vocos-style generator learns model-space log-mel -> waveform against MPD + MRD.

Parts: ``model`` (the generator, ``config["model"]``, optimizer section ``optimizer``, EMA when
``training.ema_decay`` is set) and ``discriminator`` (``config["discriminator"]``, optimizer section
``disc_optimizer``). One step: the discriminators' hinge update on real vs generated segments, then the
generator's update on mel L1 + hinge + feature matching (:class:`transcoder.losses.vocoder.VocoderLoss`);
before ``loss.params.disc_start_step`` generator updates only the mel loss trains the generator and
the discriminators are not updated.

Segments: ``data.target_length`` frames (e.g. 100 frames = 1 s at hop 160) cut at random from the
training files by the dataset classes (train mode). The generator's input is the front end's log-mel
of the segment, exactly what the tokenizer sees.

Fine-tune mode (top-level ``tokenizer_checkpoint: PATH``): the input becomes a frozen tokenizer's
reconstruction of the segment's log-mel; the target stays the real waveform (HiFi-GAN's fine-tuning on
predicted mels). The tokenizer only works on whole windows of its ``input_length`` frames, and at
inference (:mod:`transcoder.api`) every window is decoded on its own; so ``data.target_length`` must be
a whole number of tokenizer windows, each segment is cut into those windows, each window reconstructed
alone and the reconstructions concatenated: the vocoder sees the same window borders it will see when
rendering a tokenizer's output (no padding to a window and cropping, which would train on borders
that never occur at inference).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from transcoder.audio import MelConfig
from transcoder.audio.neural_vocoder import mel_differences
from transcoder.losses.vocoder import VocoderLoss
from transcoder.models.build import load_checkpoint_model
from transcoder.models.discriminators import DiscriminatorOutput
from transcoder.tasks.base import Task, evaluating
from transcoder.utils.distributed import all_reduce_sum
from transcoder.utils.targets import ConfigError, get_obj_from_str, instantiate

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from transcoder.training.monitor import Monitor
    from transcoder.training.step import StepState

#: Generator parameters that must equal the front end's settings (taken from the ``data`` block).
DERIVED_GENERATOR_KEYS = {"n_mels": "n_mels", "n_fft": "n_fft", "hop_length": "hop_length",
                          "win_length": "win_length"}


def derive_generator_spec(spec: dict[str, Any], mel_config: MelConfig) -> dict[str, Any]:
    """A copy of a generator spec whose ``n_mels`` / ``n_fft`` / ``hop_length`` / ``win_length`` are the
    front end's; a config that states them anyway must agree (else :class:`ConfigError`)."""
    spec = copy.deepcopy(spec)
    params = spec.setdefault("params", {}) or {}
    spec["params"] = params
    mel = mel_config.to_dict()
    for key, source in DERIVED_GENERATOR_KEYS.items():
        derived = mel[source] if source != "win_length" else (mel["win_length"] or mel["n_fft"])
        given = params.setdefault(key, derived)
        if given != derived:
            raise ConfigError(f"model.params.{key}={given!r} but data.{source} gives {derived!r}: leave {key} "
                              f"out (it is taken from data.{source}) or make them equal")
    return spec


def tokenizer_window(checkpoint: dict[str, Any]) -> tuple[MelConfig, int]:
    """The mel settings and window length (frames) of a tokenizer checkpoint."""
    mel = checkpoint.get("mel") or MelConfig.from_dict((checkpoint.get("config") or {}).get("data") or {},
                                                       strict=False).to_dict()
    mel_config = MelConfig.from_dict(mel)
    audioconfig = (((checkpoint.get("config") or {}).get("model") or {}).get("params") or {}).get("audioconfig")
    window = (audioconfig or {}).get("input_length") or mel_config.target_length
    return mel_config, int(window)


def check_tokenizer_checkpoint(path: Any, mel_config: MelConfig) -> None:
    """``tokenizer_checkpoint``: an existing tokenizer checkpoint with the data block's mel settings whose
    window divides ``data.target_length``; else :class:`ConfigError` naming the key and values."""
    from transcoder.utils.checkpoint import CheckpointError, load_checkpoint

    if not isinstance(path, str) or not path:
        raise ConfigError(f"tokenizer_checkpoint={path!r}: expected null or the path of a tokenizer checkpoint")
    if not Path(path).is_file():
        raise ConfigError(f"tokenizer_checkpoint={path}: no such file")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"tokenizer_checkpoint={path}: {err}") from None
    if checkpoint.get("task", "tokenizer") != "tokenizer":
        raise ConfigError(f"tokenizer_checkpoint={path} was written by task {checkpoint.get('task')!r}, "
                          "not by a tokenizer run")
    tok_mel, window = tokenizer_window(checkpoint)
    diff = mel_differences(mel_config, tok_mel)
    if diff:
        listed = ", ".join(f"data.{key}={a!r} but the tokenizer has {b!r}" for key, (a, b) in diff.items())
        raise ConfigError(f"tokenizer_checkpoint={path}: mel settings differ ({listed})")
    if mel_config.target_length % window:
        raise ConfigError(f"data.target_length={mel_config.target_length} with tokenizer_checkpoint={path}: "
                          f"segments must be whole tokenizer windows of {window} frames (use a multiple of {window})")


def split_disc_output(output: dict[str, DiscriminatorOutput], batch: int) -> tuple[dict[str, DiscriminatorOutput],
                                                                                  dict[str, DiscriminatorOutput]]:
    """Outputs of one discriminator pass on ``cat([real, fake])`` -> (real outputs, fake outputs)."""
    real: dict[str, DiscriminatorOutput] = {}
    fake: dict[str, DiscriminatorOutput] = {}
    for name, (logits, features) in output.items():
        real[name] = ([x[:batch] for x in logits], [[f[:batch] for f in layers] for layers in features])
        fake[name] = ([x[batch:] for x in logits], [[f[batch:] for f in layers] for layers in features])
    return real, fake


class VocoderTask(Task):
    """Train a neural vocoder on the tokenizer front end's log-mel (see the module docstring)."""

    name = "vocoder"
    model_sections = ("model", "discriminator")
    optimizer_sections = {"model": "optimizer", "discriminator": "disc_optimizer"}
    ema_parts = ("model",)
    best_metric = "val/mel_l1"
    cpu_config = "configs/vocoder/vocoder_mid_corpus_cpu.yaml"
    extra_keys = {"tokenizer_checkpoint": None}

    @classmethod
    def resolve_config(cls, config: dict[str, Any]) -> None:
        """The generator's STFT settings come from ``data``; so does the loss's ``sample_rate``. A
        ``tokenizer_checkpoint`` is checked against the data block's mel settings."""
        mel_config = MelConfig.from_dict(config["data"], strict=False)
        config["model"] = derive_generator_spec(config["model"], mel_config)
        loss_cls = get_obj_from_str(config["loss"]["target"])
        if not (isinstance(loss_cls, type) and issubclass(loss_cls, VocoderLoss)):
            raise ConfigError(f"loss.target={config['loss']['target']}: the vocoder task needs "
                              "transcoder.losses.VocoderLoss (or a subclass)")
        loss_params = config["loss"]["params"]
        given = loss_params.setdefault("sample_rate", mel_config.sample_rate)
        if given != mel_config.sample_rate:
            raise ConfigError(f"loss.params.sample_rate={given!r} but data.sample_rate={mel_config.sample_rate}: "
                              "leave it out (it is taken from data.sample_rate)")
        if config["tokenizer_checkpoint"] is not None:
            check_tokenizer_checkpoint(config["tokenizer_checkpoint"], mel_config)

    def __init__(self, config: dict[str, Any], mel_config: MelConfig, device: torch.device) -> None:
        super().__init__(config, mel_config, device)
        self.loss_fn = instantiate(config["loss"]).to(device)
        if not isinstance(self.loss_fn, VocoderLoss):
            raise ConfigError(f"loss.target={config['loss']['target']}: the vocoder task needs "
                              "transcoder.losses.VocoderLoss (or a subclass)")
        self.tokenizer: nn.Module | None = None
        self.tokenizer_window = 0
        if config["tokenizer_checkpoint"] is not None:
            model, _ = load_checkpoint_model(config["tokenizer_checkpoint"], use_ema=True)
            self.tokenizer = model.to(device).eval().requires_grad_(False)
            self.tokenizer_window = int(model.input_length)

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": instantiate(self.config["model"]).to(self.device),
                "discriminator": instantiate(self.config["discriminator"]).to(self.device)}

    @torch.no_grad()
    def model_input(self, audio: Tensor) -> Tensor:
        """(B, S) waveforms on the device -> generator input (B, S // hop, F): the front end's log-mel, or in
        fine-tune mode the frozen tokenizer's reconstruction of it, window by window."""
        mel = self.frontend(audio)
        if self.tokenizer is None:
            return mel
        batch, frames, bins = mel.shape
        windows = mel.reshape(batch * (frames // self.tokenizer_window), self.tokenizer_window, bins)
        recon = self.tokenizer(windows)[0].float()
        return recon.reshape(batch, frames, bins)

    def memory_probe(self, state: StepState) -> Callable[[int], None]:
        generator, disc = state.parts["model"].model, state.parts["discriminator"].model
        def probe(clips: int) -> None:
            real = 0.1 * torch.randn(clips, self.mel_config.clip_samples, device=self.device)
            with torch.no_grad():
                mel = self.model_input(real)
            with state.autocast():
                fake = generator(mel).float()
                disc(torch.cat([real, fake]))
        return probe

    def step(self, state: StepState, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        generator, disc = state.parts["model"], state.parts["discriminator"]
        real = batch["audio"].to(self.device, non_blocking=True)
        mel = self.model_input(real)
        state.mark("frontend")
        with state.autocast():
            fake = generator.forward_model(mel).float()
        size = real.shape[0]
        adversarial = self.loss_fn.adversarial_active(generator.updates)
        g_real = g_fake = None
        if adversarial:
            # One pass over real and generated segments together (a single DDP forward per backward).
            with state.autocast():
                d_real, d_fake = split_disc_output(disc.forward_model(torch.cat([real, fake.detach()])), size)
            d_loss, d_terms = self.loss_fn.discriminator(d_real, d_fake)
            state.optimize("discriminator", d_loss)
            # The generator's pass goes through the plain module with frozen weights: gradients flow to
            # the generated waveform only, and the discriminator's DDP hooks stay out of this backward.
            disc.model.requires_grad_(False)
            try:
                with state.autocast():
                    with torch.no_grad():
                        g_real = disc.model(real)
                    g_fake = disc.model(fake)
            finally:
                disc.model.requires_grad_(True)
        else:
            zero = torch.zeros((), device=self.device)
            d_loss, d_terms = zero, {"loss/disc_mpd": zero, "loss/disc_mrd": zero}
        g_loss, terms = self.loss_fn.generator(fake, real, g_real, g_fake)
        state.optimize("model", g_loss)
        terms.update({"loss/disc": d_loss.detach(), **d_terms})
        return terms, {"adversarial": adversarial}

    def log_scalars(self, state: StepState, info: dict[str, Any]) -> dict[str, float]:
        return {"train/adversarial": float(info.get("adversarial", False))}

    def log_line(self, values: dict[str, float]) -> str:
        """Generator total and terms: mel L1, adversarial (hinge) and feature-matching losses against the
        multi-period (MPD) and multi-resolution (MRD) discriminators, and the discriminators' own loss."""
        return (f"loss {values['loss/total']:.4f} (mel {values['loss/mel']:.4f} | adversarial MPD "
                f"{values['loss/gen_mpd']:.3f}, MRD {values['loss/gen_mrd']:.3f} | feature matching MPD "
                f"{values['loss/fm_mpd']:.3f}, MRD {values['loss/fm_mrd']:.3f} | discriminators "
                f"{values['loss/disc']:.3f})")

    @torch.no_grad()
    def validate(self, state: StepState, loader: DataLoader, max_batches: int | None) -> dict[str, float]:
        """``val/mel_l1``: L1 in model space between the front end's log-mel of the vocoded and the real
        segment (valid frames only); ``val/mel_loss``: the multi-resolution mel loss (per-segment mean)."""
        model = state.parts["model"].eval_model
        with evaluating(model):
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # l1 sum, l1 count, mel sum, segments
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                real = batch["audio"].to(self.device)
                valid = torch.as_tensor(batch["num_valid"], device=self.device)
                keep = valid > 0
                if not bool(keep.any()):
                    continue
                real, valid = real[keep], valid[keep]
                with state.autocast():
                    fake = model(self.model_input(real)).float()
                real_mel, fake_mel = self.frontend(real), self.frontend(fake)
                frames = torch.arange(real_mel.shape[1], device=self.device)
                hop = self.mel_config.hop_length
                mask = frames[None, :] < (valid[:, None] + hop - 1) // hop
                error = (fake_mel - real_mel).abs().mean(-1)  # (B, T)
                sums[0] += (error * mask).sum().double()
                sums[1] += mask.sum().double()
                for b in range(real.shape[0]):
                    sums[2] += self.loss_fn.mel_loss(fake[b:b + 1], real[b:b + 1]).double()
                sums[3] += real.shape[0]
        sums = all_reduce_sum(sums)
        return {"val/mel_l1": float(sums[0] / sums[1].clamp_min(1)),
                "val/mel_loss": float(sums[2] / sums[3].clamp_min(1)), "val/clips": float(sums[3])}

    @torch.no_grad()
    def log_media(self, state: StepState, monitor: Monitor, batch: dict[str, Any], step: int) -> None:
        """Real vs vocoded audio and spectrograms (fine-tune mode: the vocoder's input is the tokenizer's
        reconstruction, shown as the ``input`` spectrogram)."""
        count = min(int(self.config["training"]["num_images"]), batch["audio"].shape[0])
        if count == 0:
            return
        model = state.parts["model"].eval_model
        with evaluating(model):
            real = batch["audio"][:count].to(self.device)
            mel = self.model_input(real)
            with state.autocast():
                fake = model(mel).float()
        monitor.spectrograms("spectrogram/input_vs_vocoded", self.frontend.model_to_db(mel),
                             self.frontend.model_to_db(self.frontend(fake)), step)
        monitor.audio("audio/real", real, self.mel_config.sample_rate, step)
        monitor.audio("audio/vocoded", fake, self.mel_config.sample_rate, step)

    def next_commands(self, output_dir: Path, checkpoint: Path) -> list[str]:
        """How to use the vocoder: render a tokenizer's evaluation and decoded codes with it."""
        return [f"python scripts/evaluate_audio_tokenizer.py TOKENIZER.pt --vocoder {checkpoint} --output "
                f"{output_dir / 'eval'}",
                f"python scripts/tokenize_audio.py decode --checkpoint TOKENIZER.pt CODES_DIR OUT_DIR --vocoder "
                f"{checkpoint}",
                "(TOKENIZER.pt: a tokenizer checkpoint trained with the same data mel settings)"]

    def describe(self, state: StepState) -> str:
        generator = state.parts["model"].model
        millions = [sum(p.numel() for p in state.parts[name].model.parameters()) / 1e6
                    for name in ("model", "discriminator")]
        mode = (f"fine-tuning on the reconstructions of {self.config['tokenizer_checkpoint']}"
                if self.tokenizer is not None else "on the true log-mel")
        seconds = self.mel_config.clip_samples / self.mel_config.sample_rate
        return (f"vocoder: generator {millions[0]:.2f}M ({getattr(generator, 'dim', '?')} wide, "
                f"{getattr(generator, 'num_layers', '?')} blocks), discriminators {millions[1]:.2f}M, "
                f"{seconds:g} s segments, {mode}")
