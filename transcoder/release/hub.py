"""Where a tokenizer named to :func:`~transcoder.api.load_tokenizer` lives: a local file or folder, or a
Hugging Face Hub repository ``org/model`` downloaded (or found in the local cache) by ``huggingface_hub``."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["HUB_FILES", "is_hub_name", "resolve_source"]

#: The files of a release folder fetched from the Hub (weights, configs, model card, ONNX graphs).
HUB_FILES = ["*.json", "*.safetensors", "*.onnx", "README.md"]
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


def is_hub_name(source: str | Path) -> bool:
    """``org/model`` that is not an existing local path and does not look like a checkpoint file."""
    text = str(source)
    return (isinstance(source, str) and _HUB_NAME.fullmatch(text) is not None and not Path(text).exists()
            and Path(text).suffix not in _CHECKPOINT_SUFFIXES)


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint file or release folder for ``source``.

    A path is returned as it is (its loader reports a missing file); a name ``org/model`` is fetched with
    ``huggingface_hub.snapshot_download`` (the local cache first; ``HF_HUB_OFFLINE=1`` uses only the cache).

    Raises:
        FileNotFoundError: a Hub name not found on the Hub (or, offline, in its cache).
        ModuleNotFoundError: a Hub name while ``huggingface_hub`` is not installed.
    """
    if not is_hub_name(source):
        return Path(source)
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{source!r} is not a local path; loading it from the Hugging Face Hub needs "
                                  "huggingface_hub: pip install -e '.[hub]'") from err
    try:
        return Path(snapshot_download(repo_id=str(source), revision=revision, allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001 - offline cache misses, unknown repos and network errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"{source!r} is not a local path and could not be fetched from the Hugging Face "
                                f"Hub ({type(err).__name__}: {reason})") from err
