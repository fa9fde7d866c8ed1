"""A new user's first hour: the resource check, the folder flags, Ctrl-C, honest log lines, messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.utils.data import DataLoader

from transcoder.data import AudioFolderDataset, collate_audio
from transcoder.training.cli import folder_overrides, parse_args, resume_command
from transcoder.training.config import load_config
from transcoder.training.resources import (
    MemoryEstimate,
    ResourceError,
    available_host_memory,
    check_resources,
    estimate_memory,
    measure_forward,
)
from transcoder.training.signals import SAME_REQUEST_SECONDS
from transcoder.utils.numbers import format_value

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
CPU_CONFIG = REPO / "configs" / "tokenizer" / "audio_simple_cpu_b18.yaml"
GPU_CONFIG = REPO / "configs" / "tokenizer" / "audio_simple_bsq_b18.yaml"
DATA = REPO / "data" / "librivox-mini"
SCRIPT = REPO / "scripts" / "main_audio_tokenizer.py"
TINY = ["data.val=null", "data.target_length=64", "model.params.audioconfig.width=32",
        "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2", "data.batch_size=2",
        "data.num_workers=0", "training.image_every=0", "training.log_every=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


# -- the resource check ----------------------------------------------------------------------------
def test_available_host_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_host_memory(meminfo) == 8_000_000 * 1024
    assert available_host_memory(tmp_path / "missing") is None or available_host_memory(tmp_path / "missing") > 0


def test_measured_activations_scale_with_the_model_and_leave_buffers_and_rng_alone() -> None:
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 64))
    wide = nn.Sequential(nn.Linear(64, 1024), nn.BatchNorm1d(1024), nn.GELU(), nn.Linear(1024, 64))

    def probe_of(model: nn.Module):
        def probe(clips: int) -> None:
            model(torch.randn(clips * 100, 64)).sum()
        return probe

    stats_before = wide[1].running_mean.clone()
    rng_before = torch.random.get_rng_state()
    small_bytes, seconds = measure_forward(probe_of(small), [small])
    wide_bytes, _ = measure_forward(probe_of(wide), [wide])
    assert seconds > 0
    # Saved for the backward: at least the hidden activations (100 x width floats), parameters excluded.
    assert small_bytes >= 100 * 64 * 4 and wide_bytes >= 100 * 1024 * 4 * 2 and wide_bytes > 8 * small_bytes
    assert torch.equal(wide[1].running_mean, stats_before) and torch.equal(torch.random.get_rng_state(), rng_before)
    estimate = estimate_memory([wide], ema_parts=1, probe=probe_of(wide), batch_size=8, clip_samples=16000,
                               num_workers=2, prefetch_factor=2)
    params = sum(p.numel() * 4 for p in wide.parameters())
    assert estimate.parameters == params and estimate.gradients == params and estimate.optimizer == 3 * params
    assert estimate.activations == pytest.approx(8 * wide_bytes, rel=0.5)
    assert estimate.workers > 2 * 2 * 8 * 16000 * 4


def test_check_refuses_what_cannot_fit_and_warns_when_slow_on_a_cpu() -> None:
    big = MemoryEstimate(parameters=10**9, gradients=10**9, optimizer=2 * 10**9, activations=20 * 10**9,
                         workers=2 * 10**9, step_seconds=900.0)
    with pytest.raises(ResourceError) as err:
        check_resources(big, torch.device("cpu"), 1000, "configs/tokenizer/audio_simple_cpu_b18.yaml", 16 * 10**9)
    message = str(err.value)
    assert "25.0 GB" in message and "16.0 GB is free" in message and "audio_simple_cpu_b18.yaml" in message
    assert "training.skip_resource_check=true" in message and "\n" not in message
    warning = check_resources(big, torch.device("cpu"), 1000, "configs/tokenizer/audio_simple_cpu_b18.yaml",
                              10**12)
    assert warning is not None and "900 s per step" in warning and "250 h for 1,000 steps" in warning
    assert "for a CPU use configs/tokenizer/audio_simple_cpu_b18.yaml" in warning
    quick = MemoryEstimate(parameters=10**7, gradients=10**7, optimizer=2 * 10**7, activations=10**8,
                           workers=3 * 10**8, step_seconds=1.0)
    assert check_resources(quick, torch.device("cpu"), 3000, None, 10**10) is None
    assert check_resources(quick, torch.device("cpu"), 3000, None, None) is None  # unknown free memory: no refusal
    # On a GPU the device's free memory decides; the host holds only the workers.
    with pytest.raises(ResourceError, match="on cuda:0"):
        check_resources(big, torch.device("cuda", 0), 1000, None, 10**12, device_free=10 * 10**9)
    assert check_resources(big, torch.device("cuda", 0), 1000, None, 10**12, device_free=80 * 10**9) is None


def test_a_run_that_cannot_fit_is_refused_before_a_run_folder(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from transcoder.training.cli import run

    # What the standard model does on a small CPU machine (its activations alone are tens of GB), made
    # independent of this machine's memory: the demo model with a batch of 100,000 clips (hundreds of GB).
    out = tmp_path / "run"
    assert run([str(DEMO), "--output-dir", str(out), "--train-dir", str(DATA), "data.val=null",
                "data.batch_size=100000", "data.num_workers=0", "--device", "cpu"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: this run needs about") and "audio_simple_cpu_b18.yaml" in last, last
    assert not out.exists()


def test_shipped_cpu_config_is_the_cpu_preset_of_the_quality_benchmark() -> None:
    import runpy

    presets = runpy.run_path(str(REPO / "scripts" / "benchmark_quality.py"))["PRESETS"]
    overrides = [o for o in presets["cpu"]["overrides"]]
    preset = load_config(REPO / "configs" / "tokenizer" / "audio_speech_short_b18.yaml", overrides)
    shipped = load_config(CPU_CONFIG)
    for section, key in (("data", "batch_size"), ("data", "num_workers"), ("data", "target_length"),
                         ("data", "n_mels"), ("training", "precision")):
        assert shipped[section][key] == preset[section][key], (section, key)
    for key in ("width", "layers", "heads", "patch_size", "use_conv_module"):
        assert shipped["model"]["params"]["audioconfig"][key] == preset["model"]["params"]["audioconfig"][key], key
    assert shipped["data"]["train"]["params"]["root"] == "my_audio/train"


# -- --train-dir / --val-dir -----------------------------------------------------------------------
def test_folder_flags_replace_any_dataset_of_a_config(tmp_path: Path) -> None:
    folder = tmp_path / "my audio (2024)"  # a path YAML would misread unquoted
    folder.mkdir()
    args = parse_args(["cfg.yaml", "--output-dir", "o", "--train-dir", str(folder), "--val-dir", "v",
                       "training.max_steps=5"])
    config = load_config(DEMO, [*folder_overrides(args.train_dir, args.val_dir), *args.overrides])
    assert config["data"]["train"] == {"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(folder)}}
    assert config["data"]["val"] == {"target": "transcoder.data.AudioFolderDataset", "params": {"root": "v"}}
    assert config["training"]["max_steps"] == 5
    # Overrides after the flags refine the folder dataset.
    config = load_config(DEMO, [*folder_overrides(str(folder), None), "data.train.params.extensions=[.flac]"])
    assert config["data"]["train"]["params"] == {"root": str(folder), "extensions": [".flac"]}
    assert config["data"]["val"]["target"] == "transcoder.data.LibriSpeechDataset"  # untouched


def test_resume_command_drops_resume_flag() -> None:
    command = resume_command(["c.yaml", "--output-dir", "out dir", "--resume", "x.pt", "training.max_steps=9"])
    assert command.endswith("c.yaml --output-dir 'out dir' training.max_steps=9") and "--resume" not in command
    assert resume_command(["c.yaml", "--output-dir", "o"], world_size=4) == "the same torchrun command"


# -- log lines and messages ------------------------------------------------------------------------
def test_counts_are_integers_with_separators() -> None:
    assert format_value(11523.0) == "11,523" and format_value(11523) == "11,523"
    assert format_value(0.0123456) == "0.01235" and format_value(675.94) == "675.9"
    assert format_value(12345.67) == "12,345.7" and format_value(float("nan")) == "nan"


def test_tokenizer_log_line_labels_the_soft_estimate_and_reports_the_real_codes() -> None:
    from transcoder.audio import MelConfig
    from transcoder.tasks.tokenizer import TokenizerTask
    from transcoder.training.state import TrainState
    from transcoder.training.step import StepState, build_parts

    config = load_config(DEMO, TINY)
    mel = MelConfig.from_dict(config["data"], strict=False)
    task = TokenizerTask(config, mel, torch.device("cpu"))
    parts = build_parts(task, config, torch.device("cpu"), torch.float32)
    state = StepState(parts=parts, counters=TrainState(), precision=torch.float32, device=torch.device("cpu"))
    indices = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]])  # 4 codes, equally used: 2 bits
    scalars = task.log_scalars(state, {"indices": indices})
    assert scalars["codebook/batch_distinct_codes"] == 4
    assert scalars["codebook/batch_code_entropy_bits"] == pytest.approx(2.0)
    line = task.log_line({"loss/total": 0.5, "loss/l1": 0.4, "loss/quantizer": 0.1, "entropy/codebook_bits": 17.9,
                          **scalars})
    assert "batch codes: 4 distinct, entropy 2.00 bits" in line
    assert "soft cb entropy (estimate) 17.90 bits" in line and "| cb entropy" not in line


def test_vocoder_log_line_names_its_terms() -> None:
    from transcoder.tasks.vocoder import VocoderTask

    values = {"loss/total": 5.0, "loss/mel": 0.5, "loss/gen_mpd": 5.032, "loss/gen_mrd": 3.047,
              "loss/fm_mpd": 0.145, "loss/fm_mrd": 0.493, "loss/disc": 1.9}
    line = VocoderTask.log_line(None, values)  # type: ignore[arg-type] - uses no state
    assert "adversarial MPD 5.032, MRD 3.047" in line and "feature matching MPD 0.145, MRD 0.493" in line
    commands = VocoderTask.next_commands(None, Path("out"), Path("out/checkpoints/best.pt"))  # type: ignore[arg-type]
    assert any("--vocoder out/checkpoints/best.pt" in c and "evaluate_audio_tokenizer.py" in c for c in commands)


def test_val_every_zero_means_never(tmp_path: Path) -> None:
    from transcoder.training.trainer import Trainer
    from transcoder.utils.distributed import init_distributed

    config = load_config(DEMO, [*TINY[1:], f"data.train.params.root={DATA / 'LibriSpeech'}",
                                f"data.val.params.root={DATA / 'LibriSpeech'}", "training.val_every=0",
                                "training.max_steps=2", "training.skip_resource_check=true"])
    trainer = Trainer(config, tmp_path, init_distributed("cpu"))
    trainer.fit()
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert "validation" not in (tmp_path / "train.log").read_text()


def test_resumed_and_finished_runs_say_what_they_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transcoder.training.cli import run

    argv = [str(DEMO), "--output-dir", str(tmp_path), "--train-dir", str(DATA), *TINY, "training.max_steps=4",
            "training.skip_resource_check=true"]
    assert run([*argv, "--stop-at-step", "3"]) == 0
    assert "stopped at step 3 (3 steps this run" in capsys.readouterr().err
    assert run(argv) == 0
    assert "finished at step 4 (1 steps this run" in capsys.readouterr().err
    latest = tmp_path / "checkpoints" / "latest.pt"
    stamp = latest.stat().st_mtime_ns
    assert run(argv) == 0
    err = capsys.readouterr().err
    assert "already finished at step 4; nothing to do (raise training.max_steps to continue" in err
    assert latest.stat().st_mtime_ns == stamp and "saved latest.pt" not in err  # not re-saved


def _print_warnings_to_stderr(_worker_id: int) -> None:
    """In a worker forked from pytest (which records warnings): print every warning as a script would."""
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, *_args, **_kwargs: os.write(2, f"{message}\n".encode())


def test_a_bad_file_is_reported_once_across_loader_workers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_garbage.flac").write_bytes(b"\x00garbage" * 50)
    for name in ("b.wav", "c.wav"):
        sf.write(tmp_path / name, np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    dataset = AudioFolderDataset(str(tmp_path), sample_rate=16000, clip_samples=1600, mode="train")
    garbage = next(i for i in range(dataset.num_files) if "garbage" in dataset.path(i))
    loader = DataLoader(dataset, batch_size=1, sampler=[garbage] * 4, num_workers=2, collate_fn=collate_audio,
                        worker_init_fn=_print_warnings_to_stderr)
    batches = list(loader)
    assert sum(len(b["skipped"]) for b in batches) == 4  # every read counted ...
    err = capfd.readouterr().err
    assert err.count("skipping '") == 1, err  # ... but reported once


# -- Ctrl-C ----------------------------------------------------------------------------------------
def _start_slow_run(tmp_path: Path, seconds: float) -> subprocess.Popen:
    env = _env()
    env["SLOW_STEP_SECONDS"] = str(seconds)
    command = [sys.executable, "-u", str(SCRIPT), str(DEMO), "--output-dir", str(tmp_path), "--train-dir", str(DATA),
               *TINY, "task=slow_task.SlowStepTask", "training.max_steps=100", "training.latest_every=2",
               "training.ckpt_every=1000"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=True)


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended early ({process.returncode}): {process.stdout.read()[-2000:]}")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no {text!r} in {path} after {timeout} s")


def test_second_ctrl_c_aborts_a_long_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    from transcoder.utils.checkpoint import load_checkpoint

    process = _start_slow_run(tmp_path, seconds=600)  # step 3 onwards sleeps 10 minutes
    try:
        log = tmp_path / "train.log"
        _wait_for(log, "step 2: saved latest.pt", process)
        time.sleep(0.5)  # inside step 3
        process.send_signal(signal.SIGINT)
        _wait_for(log, "stopping after this step (step 3)", process, timeout=10)  # answered at once
        process.send_signal(signal.SIGINT)  # within SAME_REQUEST_SECONDS: the same request, ignored
        time.sleep(SAME_REQUEST_SECONDS + 0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)  # aborted promptly, not after the 10-minute step
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-2000:]
    assert "received SIGINT: stopping after this step (step 3)" in output
    assert "press Ctrl-C again to abort" in output
    assert "received SIGINT again: aborted during step 3" in output
    assert "latest.pt (step 2) is kept" in output
    assert f"resume with: python {SCRIPT} {DEMO} --output-dir {tmp_path}" in output
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 2


def test_one_ctrl_c_finishes_the_step_and_saves(tmp_path: Path) -> None:
    from transcoder.utils.checkpoint import load_checkpoint

    process = _start_slow_run(tmp_path, seconds=3)
    try:
        log = tmp_path / "train.log"
        _wait_for(log, "step 2: saved latest.pt", process)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-2000:]
    assert "stopping after this step (step 3)" in output
    assert "received SIGINT: saved checkpoints/latest.pt at step 3, exiting; resume with: python" in output
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 3



# -- evaluation examples ---------------------------------------------------------------------------
def test_examples_are_spread_over_files_and_named_with_their_folders(tmp_path: Path) -> None:
    from transcoder.evaluation.evaluate import example_name, example_windows

    class Windows:  # 4 speakers of 3 files x 5 windows, sorted as a folder listing is
        def eval_window_ends(self) -> np.ndarray:
            return np.arange(1, 13) * 5

    chosen = example_windows(Windows(), 4, 60)
    files = sorted(index // 5 for index in chosen)
    speakers = {f // 3 for f in files}
    assert len(chosen) == 4 and len(set(files)) == 4 and speakers == {0, 1, 2, 3}  # not the first windows
    assert chosen == example_windows(Windows(), 4, 60)  # deterministic
    assert max(example_windows(Windows(), 4, 12)) < 12  # only evaluated windows
    assert len(example_windows(Windows(), 20, 60)) == 20  # more examples than files: still 20
    assert example_windows(object(), 3, 9) == {1, 4, 7}  # no per-file counts: evenly spaced
    root = tmp_path / "corpus"
    a, b = example_name(str(root / "spk1" / "utt.flac"), str(root)), example_name(str(root / "spk2" / "utt.flac"),
                                                                                    str(root))
    assert a == "spk1__utt" and b == "spk2__utt"
