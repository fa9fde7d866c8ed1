"""Fixtures shared by the tokenizer API, codes and streaming tests: one tiny checkpoint per module."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tokenize import _checkpoint

from transcoder.api import AudioTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny format-1 tokenizer checkpoint (random weights), see ``test_tokenize._checkpoint``."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def tok(ckpt: Path) -> AudioTokenizer:
    return load_tokenizer(ckpt, device="cpu", batch_size=4)
