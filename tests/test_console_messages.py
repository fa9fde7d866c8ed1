"""What a first run prints and leaves behind: warnings without source lines (each once), late streaming chunks,
a budget-limited run's bar, the nested-bits CPU route and no checkpoint from a run stopped in its first step."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from transcoder.streaming import late_chunks_line
from transcoder.training.config import load_config
from transcoder.training.monitor import Monitor
from transcoder.training.optim import BudgetClock
from transcoder.training.trainer import Trainer
from transcoder.utils.distributed import init_distributed
from transcoder.utils.messages import format_warning, install_console_warnings, warn_once

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tokenizer"
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
TINY = [f"data.train.params.root={DATA_ROOT}", "data.val=null", "data.target_length=64",
        "model.params.audioconfig.width=32", "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2",
        "data.batch_size=2", "data.num_workers=0", "training.image_every=0", "training.latest_every=1000",
        "training.ckpt_every=1000", "training.max_steps=5"]


# -- warnings ----------------------------------------------------------------------------------------------
def test_warnings_print_one_line_without_source_and_each_once(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    install_console_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what a second DataLoader or a forked worker does: the same warning again
        for _ in range(2):
            warnings.warn("AudioFolderDataset: skipping 'bad.wav': truncated", UserWarning, stacklevel=1)
        warnings.warn("This DataLoader will create 2 worker processes", UserWarning, stacklevel=1)
        warnings.warn("This DataLoader will create 2 worker processes", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: AudioFolderDataset: skipping 'bad.wav': truncated",
                                "warning: This DataLoader will create 2 worker processes"], err
    assert "warnings.warn" not in err and ".py:" not in err  # no file:line, no source line
    assert format_warning("x", RuntimeWarning) == "warning: RuntimeWarning: x\n"
    assert warn_once("dWER unreliable for source a") and not warn_once("dWER unreliable for source a")
    assert capsys.readouterr().err == "warning: dWER unreliable for source a\n"
    assert warn_once("finding x: 0.51", key="x") and not warn_once("finding x: 0.52", key="x")
    assert capsys.readouterr().err == "warning: finding x: 0.51\n"


# -- streaming ---------------------------------------------------------------------------------------------
def test_streaming_summary_counts_late_chunks_against_the_chunk_length() -> None:
    line = late_chunks_line([0.010, 0.0548, 0.021, 0.005], 0.020)
    assert line == "late chunks: 2 of 4 took longer than their 20 ms (worst 54.8 ms, 2.7x the chunk length)"
    assert late_chunks_line([0.010, 0.012], 0.020) == ("late chunks: none of 2 (worst 12.0 ms, 0.6x the 20 ms "
                                                      "chunk length)")


# -- a budget-limited run's bar ------------------------------------------------------------------------------
def test_a_budget_limited_run_shows_progress_against_the_budget(tmp_path: Path) -> None:
    clock = BudgetClock(600.0)
    monitor = Monitor(tmp_path, True, 10**8, 0, clock)
    try:
        clock.seconds = 150.0
        monitor.progress(1, {"loss": "0.5"})
        clock.seconds = 300.0
        monitor.progress(2)
        shown = str(monitor.bar)
    finally:
        monitor.close()
    assert monitor.bar.total == 600.0 and monitor.bar.n == 300.0
    assert "100000000" not in shown and "300/600 s" in shown and " 50%" in shown, shown
    assert "step 3" in shown and "loss=0.5" in shown, shown
    step_monitor = Monitor(tmp_path, True, 50, 10)
    try:
        step_monitor.progress(5)
        assert "15/50" in str(step_monitor.bar)
    finally:
        step_monitor.close()


# -- nested bits on a CPU ------------------------------------------------------------------------------------
def test_the_nested_cpu_config_is_the_cpu_model_with_nested_bits() -> None:
    nested = load_config(CONFIGS / "audio_simple_cpu_nested_b18.yaml", [])
    cpu = load_config(CONFIGS / "audio_simple_cpu_b18.yaml", [])
    assert nested["model"]["params"]["nested_bits"]["widths"] == [9, 12, 15, 18]
    assert nested["model"]["params"]["audioconfig"] == cpu["model"]["params"]["audioconfig"]
    assert nested["data"]["batch_size"] == cpu["data"]["batch_size"] == 8
    from transcoder.tasks.tokenizer import TokenizerTask

    task = TokenizerTask(load_config(CONFIGS / "audio_speech_nested_b18.yaml", []), _mel(), torch.device("cpu"))
    assert task.cpu_config == "configs/tokenizer/audio_simple_cpu_nested_b18.yaml"  # what the slow-run warning names
    assert (REPO / task.cpu_config).is_file()
    quickstart = (REPO / "QUICKSTART_AUDIO.md").read_text()
    assert "python scripts/main_audio_tokenizer.py configs/tokenizer/audio_simple_cpu_nested_b18.yaml" in quickstart


def _mel() -> object:
    from transcoder.audio.mel import MelConfig

    return MelConfig.from_dict(load_config(CONFIGS / "audio_speech_nested_b18.yaml", [])["data"], strict=False)


def test_a_run_stopped_in_its_first_step_writes_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(CONFIGS / "audio_simple_cpu_nested_b18.yaml", TINY)
    trainer = Trainer(config, tmp_path, init_distributed("cpu"))
    trainer.step_state.stop_requested = True  # Ctrl-C while the first (slow) step runs
    with pytest.raises(SystemExit) as stopped:
        trainer.fit()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert trainer.state.step == 1
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    assert "during the first step of this start: exiting without writing a checkpoint" in (
        tmp_path / "train.log").read_text()
    # A stop in a later step still saves (that is work the user would lose).
    from transcoder.training import trainer as trainer_module

    real_step, calls = trainer_module.train_step, []

    def second_step_stops(state: object, *args: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            state.stop_requested = True  # type: ignore[attr-defined]
        return real_step(state, *args)

    monkeypatch.setattr(trainer_module, "train_step", second_step_stops)
    later = Trainer(config, tmp_path / "later", init_distributed("cpu"))
    with pytest.raises(SystemExit):
        later.fit()
    assert torch.load(tmp_path / "later" / "checkpoints" / "latest.pt", weights_only=False)["step"] == 2


def test_evaluation_cli_prints_sources_and_progress_for_every_phase(tmp_path: Path) -> None:
    """The own-audio route's evaluation: a bar per phase and a line naming the sources covered."""
    import numpy as np
    import soundfile as sf
    from test_tokenize import _checkpoint

    ckpt = _checkpoint(tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    for voice in ("voice_a", "voice_b"):
        (tmp_path / "audio" / voice).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "audio" / voice / f"c{i}.wav", (0.1 * rng.standard_normal(24000)).astype("float32"),
                     16000)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_audio_tokenizer.py"), str(ckpt),
                           "--audio-dir", str(tmp_path / "audio"), "--output", str(tmp_path / "eval"),
                           "--max-batches", "1", "--batch-size", "2", "--num-workers", "0", "--metric-workers", "1",
                           "--anchors", "--report", "--report-examples", "2", "--gl-iters", "2"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for phase in ("tokenizer + renderings", "anchors: trivial-codec grids", "anchor griffin-lim ceiling",
                  "report: tokenizer examples", "report: page"):
        assert re.search(re.escape(phase) + r": 100%\|.*\| (\d+)/\1 ", done.stderr), (phase, done.stderr[-3000:])
    assert re.search(r"sources +2 of \d+ windows from 2 of 2 sources \(top-level folder\): voice_a 1, voice_b 1",
                     done.stdout), done.stdout
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "voice_a" in page and "voice_b" in page and 'class="duration"' in page
