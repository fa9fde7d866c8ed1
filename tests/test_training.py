"""Training: the demo learns, resume is bitwise exact, torchrun DDP, SIGTERM, non-finite losses, config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from transcoder.training.config import load_config
from transcoder.training.trainer import NonFiniteLossError, Trainer
from transcoder.utils.checkpoint import load_checkpoint
from transcoder.utils.distributed import init_distributed
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
SCRIPT = REPO / "scripts" / "main_audio_tokenizer.py"
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"

# A smaller model than the demo's so each test trains in seconds on two cores.
TINY = [
    f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}",
    "data.target_length=64", "model.params.audioconfig.width=32",
    "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2", "data.batch_size=4",
    "data.num_workers=0", "training.log_every=2", "training.val_every=1000", "training.image_every=0",
    "training.latest_every=1000", "training.ckpt_every=1000",
]


def make_trainer(output_dir: Path, *overrides: str, resume: Path | None = None, **kwargs: Any) -> Trainer:
    config = load_config(DEMO, [*TINY, *overrides])
    return Trainer(config, output_dir, init_distributed("cpu"), resume=resume, **kwargs)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["models"]["model"]


def test_demo_config_loss_falls(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "training.max_steps=40", "training.log_every=5",
                           "data.specaugment=null", "data.val=null", "training.image_every=40")
    trainer.fit()
    losses = [entry["loss/l1"] for entry in trainer.history]
    assert len(losses) == 8
    # Per-bin standardisation (the shipped recipe) starts the decoder at each bin's mean, so the first loss is
    # already the error of the mean spectrum; the tiny model still takes a fifth off it in 40 steps.
    assert losses[-1] < 0.85 * losses[0], losses
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "train.log").is_file()
    log = (tmp_path / "train.log").read_text()
    assert "bit/s" in log.splitlines()[0]  # the rate is stated when the run starts
    assert f"results in {tmp_path}" in log and "next: python scripts/evaluate_audio_tokenizer.py" in log
    assert f"tensorboard --logdir {tmp_path}" in log
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "audio": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/l1", "train/lr", "entropy/codebook_bits", "perf/data_wait_fraction"} <= set(tags["scalars"])
    assert set(tags["images"]) == {"spectrogram/0", "spectrogram/1"}
    assert {"audio/input/0", "audio/reconstruction/0"} <= set(tags["audio"])


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    # Validation, images and Griffin-Lim audio inside the run must not disturb the training RNG.
    common = ("training.max_steps=8", "training.val_every=3", "training.ema_decay=0.9", "training.image_every=3")
    make_trainer(tmp_path / "straight", *common).fit()
    first = make_trainer(tmp_path / "split", *common)
    state = first.fit(stop_at_step=4)
    assert state.step == 4
    # Re-running on the same folder resumes from checkpoints/latest.pt automatically.
    second = make_trainer(tmp_path / "split", *common)
    assert second.resumed_from == tmp_path / "split" / "checkpoints" / "latest.pt" and second.state.step == 4
    second.fit()
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert straight["step"] == split["step"] == 8
    for key in ("models", "ema"):
        assert straight[key]["model"].keys() == split[key]["model"].keys()
        for name, tensor in straight[key]["model"].items():
            assert torch.equal(tensor, split[key]["model"][name]), f"{key}.{name} differs after resume"
    assert straight["state"]["best_val_loss"] == split["state"]["best_val_loss"]


def test_resume_from_explicit_path(tmp_path: Path) -> None:
    make_trainer(tmp_path / "a", "training.max_steps=4").fit(stop_at_step=2)
    trainer = make_trainer(tmp_path / "b", "training.max_steps=4", resume=tmp_path / "a" / "checkpoints" / "latest.pt")
    assert trainer.state.step == 2
    assert trainer.fit().step == 4


def test_resume_warns_when_the_training_files_changed(tmp_path: Path) -> None:
    data = tmp_path / "LibriSpeech"
    shutil.copytree(DATA_ROOT, data)
    make_trainer(tmp_path / "run", "training.max_steps=4", f"data.train.params.root={data}").fit(stop_at_step=2)
    chapter = data / "dev-clean" / "9001" / "1"
    shutil.copy(chapter / "9001-1-0000.flac", chapter / "9001-1-0005.flac")
    with (chapter / "9001-1.trans.txt").open("a") as handle:
        handle.write("9001-1-0005 A COPY\n")
    trainer = make_trainer(tmp_path / "run", "training.max_steps=4", f"data.train.params.root={data}")
    assert trainer.train_files["count"] == 6
    assert "training file list changed since the checkpoint (5 files" in (tmp_path / "run" / "train.log").read_text()


def test_non_finite_losses_skip_steps_then_abort(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "training.max_steps=20", "training.max_nonfinite_steps=3")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    original_forward = trainer.task.loss_fn.forward

    def nan_loss(*args, **kwargs):
        total, terms = original_forward(*args, **kwargs)
        return total * float("nan"), terms

    trainer.task.loss_fn.forward = nan_loss
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        trainer.fit()
    assert trainer.state.skipped_steps == 3
    for name, tensor in trainer.model.state_dict().items():
        # Running statistics (BatchNorm, the per-bin standardisation's first batches) follow the forward passes.
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")) \
                and not name.startswith("input_norm."):
            assert torch.equal(tensor, before[name]), name


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_torchrun_two_process_gloo_run(tmp_path: Path) -> None:
    # A copy of the demo data with one corrupt file: 6 files, 2 ranks x batch 4 x 6 steps = 48 draws = 8 epochs,
    # so the corrupt file is drawn (and skipped) exactly 8 times over both ranks.
    data = tmp_path / "LibriSpeech"
    shutil.copytree(DATA_ROOT, data)
    chapter = data / "dev-clean" / "9001" / "1"
    (chapter / "9001-1-0005.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with (chapter / "9001-1.trans.txt").open("a") as handle:
        handle.write("9001-1-0005 A CORRUPT FILE\n")
    output = tmp_path / "run"
    command = [torchrun_path(), "--standalone", "--nproc_per_node=2", str(SCRIPT), str(DEMO), "--output-dir",
               str(output), "--device", "cpu", *TINY, f"data.train.params.root={data}", "training.max_steps=6",
               "training.val_every=6", "data.specaugment=null"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_cli_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "weights identical on all 2 ranks" in result.stderr
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["best.pt", "latest.pt"], checkpoints
    checkpoint = load_checkpoint(output / "checkpoints" / "latest.pt")
    assert checkpoint["step"] == 6 and checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["state"]["skipped_files"] == 8  # summed over both ranks
    assert "9001-1-0005.flac" in result.stderr
    log = (output / "train.log").read_text()
    assert log.count("validation:") == 1  # rank 0 alone writes the log


def test_validation_under_ddp_equals_one_process(tmp_path: Path) -> None:
    make_trainer(tmp_path, "training.max_steps=4").fit()
    overrides = [*TINY, "training.max_steps=4"]
    single = [sys.executable, str(SCRIPT), str(DEMO), "--output-dir", str(tmp_path), "--device", "cpu",
              "--validate-only", *overrides, "data.val_batch_size=3"]
    result = subprocess.run(single, capture_output=True, text=True, timeout=300, env=_cli_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "validation_step_0000004.json").read_text())
    ddp = [torchrun_path(), "--standalone", "--nproc_per_node=2", *single[1:]]
    result = subprocess.run(ddp, capture_output=True, text=True, timeout=300, env=_cli_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "validation_step_0000004.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["val/clips"] == two["val/clips"] == 42  # 0.64 s windows of 24.7 s in 5 files, each once
    # Per-window metrics are identical to a single-process run.
    assert "val/quant_loss" not in one  # a training quantity, not computed in evaluation
    for key in ("val/mse_db", "val/mae_db", "val/l1", "val/distinct_codes", "val/code_entropy_bits"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def torchrun_path() -> str:
    return shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


def test_sigterm_to_torchrun_with_loader_workers_writes_a_checkpoint(tmp_path: Path) -> None:
    # torchrun forwards SIGTERM to every worker process and the loader workers get it too (as on a
    # pre-empted cluster); the run must still agree to stop, save and exit.
    command = [torchrun_path(), "--standalone", "--nproc_per_node=2", str(SCRIPT), str(DEMO), "--output-dir",
               str(tmp_path), "--device", "cpu", *TINY, "data.num_workers=1", "training.max_steps=100000",
               "training.log_every=1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(),
                               cwd=REPO, start_new_session=True)
    log = tmp_path / "train.log"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (log.is_file() and "step 3 |" in log.read_text()):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    os.killpg(process.pid, signal.SIGTERM)  # the whole process group, as a scheduler does
    _, stderr = process.communicate(timeout=180)
    assert "received SIGTERM: saved checkpoints/latest.pt" in log.read_text(), stderr[-4000:]
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert checkpoint["step"] >= 3 and checkpoint["world_size"] == 2


def test_sigterm_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), str(DEMO), "--output-dir", str(tmp_path), "--device", "cpu", *TINY,
               "training.max_steps=100000", "training.log_every=1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(),
                               cwd=REPO)
    log = tmp_path / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and "step 3 |" in log.read_text()):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert checkpoint["step"] >= 3
    assert "received SIGTERM: saved checkpoints/latest.pt" in log.read_text()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.grad_clip=1.0", r"unknown key\(s\) \['grad_clip'\] in section 'optimizer'.*grad_clip_norm"),
        ("training.max_step=10", r"unknown key\(s\) \['max_step'\] in section 'training'"),
        ("data.n_mel=80", r"unknown key\(s\) \['n_mel'\] in section 'data'"),
        ("trainig.seed=1", r"unknown key\(s\) \['trainig'\] in top level"),
        ("training.precision=fp8", "training.precision='fp8'"),
        ("data.batch_size=0", "data.batch_size=0: expected a positive integer"),
        ("model.params.audioconfig.widht=64", r"unknown audioconfig key\(s\) \['widht'\]"),
        ("training.val_every=-1", "training.val_every=-1: expected an integer >= 0"),
        ("training.ckpt_every=null", "training.ckpt_every=None: expected a positive integer"),
        ("data.batch_size=true", "data.batch_size=True: expected a positive integer"),
        ("training.ema_decay=1.5", r"training.ema_decay=1.5: expected null or a number in \(0, 1\)"),
        ("optimizer.grad_clip_norm=-1", "optimizer.grad_clip_norm=-1"),
        ("optimizer.lr=fast", "optimizer.lr='fast': expected a number"),
        ("optimizer.betas=[0.9]", "optimizer.betas"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        make_trainer(tmp_path, override)


def test_exponent_without_dot_is_read_as_a_number(tmp_path: Path) -> None:
    config = load_config(DEMO, [*TINY, "optimizer.lr=3e-4", "training.ema_decay=9e-1"])
    assert config["optimizer"]["lr"] == 3e-4 and config["training"]["ema_decay"] == 0.9


def test_model_and_data_shape_mismatch_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input_length=64 but data.target_length=128"):
        make_trainer(tmp_path, "data.target_length=128", "model.params.audioconfig.input_length=64")
    # Left out, the model's input grid follows the data block, and the saved config states it.
    config = load_config(DEMO, [*TINY, "data.target_length=96"])
    assert config["model"]["params"]["audioconfig"]["input_length"] == 96
    assert config["model"]["params"]["audioconfig"]["input_size"] == config["data"]["n_mels"]


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), str(DEMO), "--output-dir", str(tmp_path),
                             "optimizer.lr_peak=1"], capture_output=True, text=True, env=_cli_env(), cwd=REPO)
    assert result.returncode == 2
    assert "command-line override optimizer.lr_peak=1: unknown key(s) ['lr_peak']" in result.stderr
