"""The shared step with more than one model: a toy GAN task trains on the one trainer, resumes bitwise
exactly, and each update touches only its own part. Step counting after skipped updates; EMA warm-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from conftest import assert_same_training_state
from torch import Tensor, nn

from transcoder.tasks.base import Task
from transcoder.training.config import load_config
from transcoder.training.ema import ModelEma
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import load_checkpoint
from transcoder.utils.distributed import init_distributed

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"


class FrameGenerator(nn.Module):
    """(B, T, F) → (B, T, F): a per-frame MLP."""

    def __init__(self, n_mels: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_mels, hidden), nn.GELU(), nn.Linear(hidden, n_mels))

    def forward(self, mel: Tensor) -> Tensor:
        return self.net(mel)


class FrameCritic(nn.Module):
    """(B, T, F) → (B, T) real/fake logits."""

    def __init__(self, n_mels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_mels, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, mel: Tensor) -> Tensor:
        return self.net(mel).squeeze(-1)


class ToyGanTask(Task):
    """Generator reconstructs a noisy mel; a critic tells real from generated frames (hinge loss)."""

    name = "toy_gan"
    model_sections = ("model", "discriminator")
    optimizer_sections = {"model": "optimizer", "discriminator": "disc_optimizer"}
    ema_parts = ("model",)
    best_metric = "val/l1"

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": FrameGenerator(self.mel_config.n_mels).to(self.device),
                "discriminator": FrameCritic(self.mel_config.n_mels).to(self.device)}

    def step(self, state: Any, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        generator, critic = state.parts["model"], state.parts["discriminator"]
        with torch.no_grad():
            real = self.frontend(batch["audio"].to(self.device))
            noisy = real + 0.1 * torch.randn_like(real)  # uses the RNG: resume must restore it
        fake = generator.forward_model(noisy)
        d_loss = F.relu(1 - critic.forward_model(real)).mean() + F.relu(1 + critic.forward_model(fake.detach())).mean()
        state.optimize("discriminator", d_loss)
        l1 = F.l1_loss(fake, real)
        g_loss = l1 - 0.1 * critic.model(fake).mean()
        state.optimize("model", g_loss)
        return {"loss/total": g_loss.detach(), "loss/l1": l1.detach(), "loss/disc": d_loss.detach()}, {}

    @torch.no_grad()
    def validate(self, state: Any, loader: Any, max_batches: int | None) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in loader:
            real = self.frontend(batch["audio"].to(self.device))
            total += F.l1_loss(state.parts["model"].eval_model(real), real, reduction="sum").item()
            count += real.numel()
        return {"val/l1": total / max(count, 1)}


TINY_GAN = [
    "task=test_tasks.ToyGanTask", "model.target=test_tasks.FrameGenerator", "model.params={}",
    "discriminator.target=test_tasks.FrameCritic", "disc_optimizer.lr=2e-4", "disc_optimizer.warmup_steps=2",
    f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}", "data.target_length=64",
    "data.batch_size=4", "data.num_workers=0", "data.specaugment=null", "training.log_every=2",
    "training.val_every=3", "training.image_every=0", "training.latest_every=1000", "training.ckpt_every=1000",
    "training.ema_decay=0.9", "training.max_steps=8",
]


def gan_trainer(output_dir: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(DEMO, [*TINY_GAN, *overrides]), output_dir, init_distributed("cpu"))


def test_two_optimizer_task_trains_and_resumes_bitwise(tmp_path: Path) -> None:
    straight = gan_trainer(tmp_path / "straight")
    assert list(straight.parts) == ["model", "discriminator"]
    straight.fit()
    gen, disc = straight.parts["model"], straight.parts["discriminator"]
    assert gen.updates == disc.updates == 8
    assert disc.scheduler.last_epoch == 8 and disc.lr != gen.lr  # own optimizer settings and schedule
    assert {"loss/disc", "train/lr/model", "train/lr/discriminator", "train/grad_norm/discriminator"} <= set(
        straight.history[-1])

    gan_trainer(tmp_path / "split").fit(stop_at_step=4)
    resumed = gan_trainer(tmp_path / "split")
    assert resumed.state.step == 4
    resumed.fit()
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "latest.pt",
                               tmp_path / "split" / "checkpoints" / "latest.pt")
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")["optim"]["discriminator"]["updates"] == 8


def test_each_update_changes_only_its_own_part(tmp_path: Path) -> None:
    trainer = gan_trainer(tmp_path)
    state = trainer.step_state
    gen, disc = state.parts["model"], state.parts["discriminator"]
    batch = {"audio": torch.randn(2, trainer.mel_config.clip_samples) * 0.1}
    real = trainer.task.frontend(batch["audio"])
    for updated, other in ((disc, gen), (gen, disc)):
        before_updated = [p.detach().clone() for p in updated.model.parameters()]
        before_other = [p.detach().clone() for p in other.model.parameters()]
        loss = (gen.model(real) - real).abs().mean() + disc.model(gen.model(real)).mean()
        assert state.optimize(updated.name, loss)
        assert any(not torch.equal(p, q) for p, q in zip(updated.model.parameters(), before_updated, strict=True))
        assert all(torch.equal(p, q) for p, q in zip(other.model.parameters(), before_other, strict=True))


def test_skipped_updates_move_neither_schedule_nor_loss_ramp(tmp_path: Path) -> None:
    from test_training import make_trainer

    trainer = make_trainer(tmp_path, "training.max_steps=6", "training.max_nonfinite_steps=5",
                           "loss.params.codebook_warmup_steps=4", "optimizer.warmup_steps=4")
    original = trainer.task.loss_fn.forward
    seen_steps: list[int] = []

    def nan_for_two(recon, target, quant_loss, step):
        seen_steps.append(step)
        total, terms = original(recon, target, quant_loss, step)
        return (total * float("nan") if len(seen_steps) <= 2 else total), terms

    trainer.task.loss_fn.forward = nan_for_two
    trainer.fit()
    part = trainer.parts["model"]
    assert trainer.state.step == 6 and trainer.state.skipped_steps == 2
    assert part.updates == 4 and part.scheduler.last_epoch == 4 and part.ema is None
    # The loss ramp saw the applied-update count: 0, 0 (both skipped), then 0, 1, 2, 3.
    assert seen_steps == [0, 0, 0, 1, 2, 3]


def test_ema_decay_warms_up_and_first_update_copies() -> None:
    model = nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.999, warmup=True)
    assert [round(ema.decay_at(t), 4) for t in (1, 10, 100, 10000)] == [0.1818, 0.55, 0.9182, 0.999]
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    expected = 0.1818 * (model.weight - 1.0) + (1 - 0.1818) * model.weight
    torch.testing.assert_close(ema.module.weight, expected, atol=1e-4, rtol=0)
    plain = ModelEma(model, decay=0.999, warmup=False)
    plain.update(model)
    assert torch.equal(plain.module.weight, model.weight)


def test_tokenizer_step_passes_the_unpadded_frames_to_the_model() -> None:
    # The codebook entropy of training counts only tokens of real audio, as validation does: the step
    # turns the batch's num_valid into frames and hands them to the model.
    from transcoder.audio import MelConfig
    from transcoder.tasks import build_task
    from transcoder.training.state import TrainState
    from transcoder.training.step import StepState, build_parts, train_step

    config = load_config(DEMO, ["data.batch_size=2", "model.params.audioconfig.layers=1"])
    mel = MelConfig.from_dict(config["data"], strict=False)
    device = torch.device("cpu")
    task = build_task(config, mel, device)
    state = StepState(parts=build_parts(task, config, device, torch.float32), counters=TrainState(),
                      precision=torch.float32, device=device)
    seen: list[Any] = []
    state.parts["model"].model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("valid_frames")), with_kwargs=True)
    audio = torch.randn(2, mel.clip_samples) * 0.1
    short = mel.clip_samples // 4 + 1
    train_step(state, task, {"audio": audio, "num_valid": torch.tensor([mel.clip_samples, short])}, 10)
    assert seen[-1].tolist() == [mel.target_length, -(-short // mel.hop_length)]
    train_step(state, task, {"audio": audio}, 10)  # a batch that does not say: every token counts
    assert seen[-1] is None
