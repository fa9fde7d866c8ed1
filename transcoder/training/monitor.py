"""Rank-0 monitoring: plain-text log, tqdm bar, TensorBoard scalars, spectrogram images and audio (rendered
by the task's :class:`~transcoder.audio.render.Renderer`: Griffin-Lim, or the neural vocoder of
``training.vocoder``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from transcoder.audio.mel import LogMelFrontend  # noqa: E402
from transcoder.audio.render import Renderer  # noqa: E402
from transcoder.training.optim import BudgetClock  # noqa: E402


def setup_text_logger(output_dir: Path | None, is_main: bool) -> logging.Logger:
    """Logger ``transcoder``: console + ``output_dir/train.log`` on rank 0, warnings only elsewhere."""
    logger = logging.getLogger("transcoder")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if is_main and output_dir is not None:
        file_handler = logging.FileHandler(output_dir / "train.log")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def spectrogram_figure(target_db: Tensor, recon_db: Tensor, title: str = "") -> plt.Figure:
    """Input and reconstruction, each (T, F) in dB, one above the other."""
    figure, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for axis, mel, name in zip(axes, (target_db, recon_db), ("input", "reconstruction"), strict=True):
        image = axis.imshow(mel.float().T.cpu().numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0,
                            cmap="magma", interpolation="nearest")
        axis.set_ylabel(f"{name}\nmel bin")
        figure.colorbar(image, ax=axis, label="dB")
    axes[-1].set_xlabel("frame")
    if title:
        axes[0].set_title(title)
    figure.tight_layout()
    return figure


def panels_figure(panels: dict[str, Tensor], title: str = "") -> plt.Figure:
    """One (T, F) dB spectrogram per panel, named by its key, one above the other."""
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.5 * len(panels)), sharex=True, squeeze=False)
    for axis, (name, mel) in zip(axes[:, 0], panels.items(), strict=True):
        image = axis.imshow(mel.float().T.cpu().numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0,
                            cmap="magma", interpolation="nearest")
        axis.set_ylabel(f"{name}\nmel bin")
        figure.colorbar(image, ax=axis, label="dB")
    axes[-1, 0].set_xlabel("frame")
    if title:
        axes[0, 0].set_title(title)
    figure.tight_layout()
    return figure


#: The progress bar of a run limited by ``training.budget_seconds``: seconds of the budget, the step in the postfix.
BUDGET_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"


class Monitor:
    """Writes to TensorBoard and the progress bar on rank 0; does nothing on other ranks.

    The bar counts steps to ``total_steps``, or, with a budget ``clock`` (``training.budget_seconds``), the
    budget's seconds (its ETA is the budget left; the step count is in the postfix): a budget-limited run sets
    ``max_steps`` to a huge number, against which a step bar's ETA means nothing.
    """

    def __init__(self, output_dir: Path, is_main: bool, total_steps: int, initial_step: int,
                 clock: BudgetClock | None = None) -> None:
        self.is_main = is_main
        self.clock = clock
        self.step = initial_step
        self.writer = SummaryWriter(str(output_dir / "tensorboard")) if is_main else None
        if not is_main:
            self.bar = None
        elif clock is not None:
            self.bar = tqdm(total=clock.budget_seconds, initial=min(clock.seconds, clock.budget_seconds),
                            dynamic_ncols=True, desc="train (budget)", bar_format=BUDGET_BAR_FORMAT)
            self.bar.set_postfix_str(f"step {initial_step:,}", refresh=False)
        else:
            self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, desc="train")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def progress(self, steps: int, postfix: dict[str, str] | None = None) -> None:
        """``steps`` more steps done (``postfix``: the latest loss, lr ...)."""
        self.step += steps
        if self.bar is None:
            return
        if self.clock is None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        if postfix:
            self.bar.set_postfix_str(f"step {self.step:,}, " + ", ".join(f"{k}={v}" for k, v in postfix.items()),
                                     refresh=False)
        elif self.bar.postfix is not None and self.bar.postfix.startswith("step "):
            rest = self.bar.postfix.partition(", ")[2]
            self.bar.set_postfix_str(f"step {self.step:,}" + (f", {rest}" if rest else ""), refresh=False)
        self.bar.update(max(0.0, min(self.clock.seconds, self.clock.budget_seconds) - self.bar.n))

    def spectrograms(self, tag: str, target_db: Tensor, recon_db: Tensor, step: int) -> None:
        """(N, T, F) dB pairs as figures."""
        if self.writer is None:
            return
        for i in range(target_db.shape[0]):
            figure = spectrogram_figure(target_db[i], recon_db[i], f"step {step}")
            self.writer.add_figure(f"{tag}/{i}", figure, step, close=True)

    def spectrogram_panels(self, tag: str, panels: dict[str, Tensor], step: int) -> None:
        """Named (N, T, F) dB spectrograms, one figure per sample with one panel per name (``tag/i``)."""
        if self.writer is None:
            return
        count = next(iter(panels.values())).shape[0]
        for i in range(count):
            figure = panels_figure({name: mel[i] for name, mel in panels.items()}, f"step {step}")
            self.writer.add_figure(f"{tag}/{i}", figure, step, close=True)

    def audio(self, tag: str, wave: Tensor, sample_rate: int, step: int) -> None:
        """(N, S) waveforms."""
        if self.writer is None:
            return
        for i in range(wave.shape[0]):
            clip = wave[i].float().cpu()
            peak = clip.abs().max().clamp_min(1e-8)
            self.writer.add_audio(f"{tag}/{i}", (clip / peak * 0.9).unsqueeze(0), step, sample_rate=sample_rate)

    def reconstructions(self, frontend: LogMelFrontend, target: Tensor, recon: Tensor, num_samples: int,
                        step: int, renderer: Renderer) -> None:
        """Spectrogram figures and audio of (N, T, F) model-space inputs and reconstructions, the audio
        rendered by ``renderer`` with phase seed 0."""
        if self.writer is None:
            return
        self.spectrograms("spectrogram", frontend.model_to_db(target), frontend.model_to_db(recon), step)
        devices = [target.device] if target.device.type == "cuda" else []
        # Rendering (a random initial phase) must not advance the training RNG (exact resume).
        with torch.random.fork_rng(devices=devices):
            for tag, mel in (("audio/input", target), ("audio/reconstruction", recon)):
                wave = renderer.render(mel, num_samples, seed=0)
                self.audio(tag, wave, renderer.sample_rate, step)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def detach_to_float(values: dict[str, Tensor]) -> dict[str, float]:
    """One device sync for a dict of scalar tensors."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()]).cpu().tolist()
    return dict(zip(values.keys(), stacked, strict=True))


class LogWindow:
    """Running sums between two log lines (on the device: no per-step sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.data_seconds = 0.0
        self.compute_seconds = 0.0

    def add(self, terms: dict[str, Tensor], grad_norms: dict[str, Tensor], samples: int) -> None:
        """Add one step's loss terms and per-part gradient norms (logged as ``grad_norm/<part>``)."""
        named = {**terms, **{f"grad_norm/{name}": norm for name, norm in grad_norms.items()}}
        for name, value in named.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1
        self.samples += samples

    def mean_terms(self) -> dict[str, Tensor]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}
