"""Damaged checkpoints never stop or fool a resume; one trainer per run folder; a resume with another
config is refused unless asked; shape mismatches and failed writes are one clear line."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_training import _cli_env, make_trainer

from transcoder.training.run_dir import RunLock, RunLockedError
from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, save_atomic
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]


def zero_inside_largest_tensor(path: Path, count: int = 4096) -> None:
    """Overwrite ``count`` bytes in the middle of the largest tensor's data with zeros (the file still unpickles)."""
    with zipfile.ZipFile(path) as archive:
        tensors = [info for info in archive.infolist() if "/data/" in info.filename]
        entry = max(tensors, key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26: entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2 - count // 2
    data[start:start + count] = bytes(count)
    path.write_bytes(bytes(data))


def two_checkpoints(run: Path) -> Path:
    """A run stopped at step 4 with ``step_0000002.pt`` and ``latest.pt`` (step 4); returns latest."""
    make_trainer(run, "training.max_steps=6", "training.ckpt_every=2").fit(stop_at_step=4)
    ckpt_dir = run / "checkpoints"
    (ckpt_dir / "step_0000004.pt").unlink()
    return ckpt_dir / "latest.pt"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "zeros-inside"])
def test_damaged_latest_falls_back_to_newest_readable(tmp_path: Path, damage: str) -> None:
    latest = two_checkpoints(tmp_path)
    size = latest.stat().st_size
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[: size // 2])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "garbage":
        latest.write_bytes(os.urandom(size))
    else:
        zero_inside_largest_tensor(latest)
        torch.load(latest, weights_only=True)  # the damage is silent to a plain load...
        with pytest.raises(CheckpointError, match="checksum"):  # ...but not to the checksum
            load_checkpoint(latest)
    trainer = make_trainer(tmp_path, "training.max_steps=6", "training.ckpt_every=2")
    assert trainer.resumed_from == tmp_path / "checkpoints" / "step_0000002.pt" and trainer.state.step == 2
    kept = list((tmp_path / "checkpoints").glob("latest.pt.damaged-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == (0 if damage == "empty" else kept[0].stat().st_size)
    log = (tmp_path / "train.log").read_text()
    assert "latest.pt" in log and "trying the next newest checkpoint" in log
    assert trainer.fit().step == 6


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    latest = two_checkpoints(tmp_path)
    latest.write_bytes(b"garbage")
    (tmp_path / "checkpoints" / "step_0000002.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        make_trainer(tmp_path, "training.max_steps=6")


def test_stale_temporaries_are_removed_on_start(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    stale = ckpt_dir / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    make_trainer(tmp_path, "training.max_steps=2")
    assert not stale.exists()
    assert "removed" in (tmp_path / "train.log").read_text()


def test_one_trainer_per_run_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
        "from transcoder.training.run_dir import RunLock; lock = RunLock(Path(sys.argv[2]));"
        "print('locked', flush=True);"
        "time.sleep(60)"), str(REPO), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=_cli_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on "):
            make_trainer(tmp_path, "training.max_steps=2")
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking (kill -9): its lock is gone with it and the folder is free again.
    assert (tmp_path / ".lock").exists()
    make_trainer(tmp_path, "training.max_steps=2").release()
    RunLock(tmp_path).release()


def test_resume_with_another_config_is_refused_unless_asked(tmp_path: Path) -> None:
    make_trainer(tmp_path, "training.max_steps=4").fit(stop_at_step=2)
    with pytest.raises(ConfigError, match=r"optimizer.lr: 0.001 -> 0.002"):
        make_trainer(tmp_path, "training.max_steps=4", "optimizer.lr=0.002")
    # Monitoring settings may change on resume; a real change may when asked.
    make_trainer(tmp_path, "training.max_steps=4", "training.log_every=1").release()
    trainer = make_trainer(tmp_path, "training.max_steps=4", "optimizer.lr=0.002", allow_config_change=True)
    assert trainer.state.step == 2
    trainer.release()


def test_checkpoint_of_another_shape_is_one_line(tmp_path: Path) -> None:
    make_trainer(tmp_path / "a", "training.max_steps=2").fit()
    with pytest.raises(CheckpointError) as caught:
        make_trainer(tmp_path / "b", "training.max_steps=2", "model.params.audioconfig.width=48",
                     resume=tmp_path / "a" / "checkpoints" / "latest.pt", allow_config_change=True)
    message = str(caught.value)
    assert "\n" not in message and "has shape (" in message and "48)" in message, message


def test_failed_write_names_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    def full_disk(_state, file) -> None:
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transcoder.utils.checkpoint.torch.save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*latest.pt .*No space left.* MiB free"):
        save_atomic({"models": {}, "config": {}}, tmp_path / "latest.pt")
    assert list(tmp_path.iterdir()) == []


def test_missing_resume_file_leaves_no_run_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt: no such checkpoint"):
        make_trainer(tmp_path / "run", resume=tmp_path / "missing.pt")
    assert not (tmp_path / "run").exists()
