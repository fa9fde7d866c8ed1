"""Fixtures shared by the tokenizer API, codes and streaming tests: one tiny checkpoint per module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_tokenize import _checkpoint

from transcoder.api import AudioTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny format-1 tokenizer checkpoint (random weights), see ``test_tokenize._checkpoint``."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def tok(ckpt: Path) -> AudioTokenizer:
    return load_tokenizer(ckpt, device="cpu", batch_size=4)


def assert_same_training_state(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical weights, EMA weights, optimizer moments, schedules and update
    counts for every part: the check behind every exact-resume test (stop + resume vs straight run)."""
    from transcoder.utils.checkpoint import load_checkpoint

    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"] and first["task"] == second["task"]
    for section in ("models", "ema"):
        assert first[section].keys() == second[section].keys(), section
        for part, weights in first[section].items():
            for name, tensor in weights.items():
                assert torch.equal(tensor, second[section][part][name]), f"{section}.{part}.{name} differs"
    for part, state in first["optim"].items():
        other = second["optim"][part]
        assert state["updates"] == other["updates"] and state["scheduler"] == other["scheduler"], part
        for index, moments in state["optimizer"]["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other["optimizer"]["state"][index][key])), \
                    (part, index, key)
