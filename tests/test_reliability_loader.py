"""A loader worker that blocks without dying (e.g. on a full /dev/shm) ends the run with an error naming the
cause instead of hanging forever."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from test_training import make_trainer

from transcoder.training.loader import LoaderStalledError, live_worker_pids, shutdown_loaders
from transcoder.utils.targets import ConfigError


def test_a_stalled_worker_stops_training_with_the_cause(tmp_path: Path, monkeypatch) -> None:
    def blocks(*_args, **_kwargs):
        time.sleep(120)  # in the worker (forked after the patch): alive, never delivering

    trainer = make_trainer(tmp_path, "data.num_workers=1", "data.loader_timeout=1.5", "training.max_steps=2",
                           "data.val=null")
    monkeypatch.setattr("transcoder.data.base.AudioClipDataset.__getitem__", blocks)
    start = time.monotonic()
    with pytest.raises(LoaderStalledError, match=r"no batch from the 1 data loader worker\(s\) in 1.5 s "
                                                 r"\(data.loader_timeout; .*/dev/shm\).*full /dev/shm"):
        trainer.fit()
    assert time.monotonic() - start < 30
    assert multiprocessing.active_children() == []  # the stalled worker is gone, not left to block the exit
    shutdown_loaders(timeout=0.5)
    assert live_worker_pids() == []
    assert isinstance(LoaderStalledError("x"), OSError)  # the training CLI reports it in one line, exit 1


def test_loader_timeout_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.loader_timeout=0: expected null or a positive number"):
        make_trainer(tmp_path, "data.loader_timeout=0")
