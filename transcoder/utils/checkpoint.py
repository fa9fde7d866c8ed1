"""Checkpoint files: written atomically, holding plain data only, loaded without unpickling code.

Layout (``format`` 2, written by :class:`transcoder.training.Trainer`)::

    {
      "format": 2,
      "task": "tokenizer",                      # which task wrote it
      "models": {"model": state_dict, ...},     # raw weights of every trained model, by part name
      "ema": {"model": state_dict, ...},        # EMA weights of the parts that keep one
      "optim": {"model": {"optimizer", "scheduler", "scaler", "updates", "ema_updates"}, ...},
      "state": {...}, "step": int, "rng": [per-rank plain RNG states], "world_size": int,
      "train_files": {...}, "config": {...}, "mel": {...},
    }

Format 1 (the first release) kept the tokenizer's ``model`` / ``ema`` / ``optimizer`` at the top level;
:func:`model_weights` reads both.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 2

# Format-1 checkpoints hold NumPy's RNG state as an ndarray; these are the only non-tensor classes
# such a checkpoint needs, and none of them can run code when unpickled.
_NUMPY_SAFE_GLOBALS: list[Any] = [np.ndarray, np.dtype, np.dtypes.UInt32DType]
try:  # the private module moved in NumPy 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
_NUMPY_SAFE_GLOBALS.append(_reconstruct)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def content_checksum(value: Any) -> str:
    """BLAKE2b digest of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    leaf's ``repr``, in a fixed traversal order. Stored under ``"checksum"`` (which is itself excluded)."""
    digest = hashlib.blake2b(digest_size=16)

    def visit(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(node.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(node, dict):
            for key in sorted(node, key=repr):
                if key != "checksum":
                    digest.update(f"K{key!r}".encode())
                    visit(node[key])
        elif isinstance(node, list | tuple):
            digest.update(f"L{len(node)}".encode())
            for item in node:
                visit(item)
        else:
            digest.update(f"V{node!r}".encode())

    visit(value)
    return digest.hexdigest()


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    The content checksum (:func:`content_checksum`) is stored in the file, so a later load detects a
    damaged file that still unpickles. A failed write (full disk, read-only folder) raises ``OSError``
    naming the file and the free space, and leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "checksum": content_checksum(state)}
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as err:  # torch reports a short write as RuntimeError
        Path(tmp_name).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise OSError(f"could not write checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                      f"{free / 2**20:.0f} MiB free in {path.parent}") from err
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this repository with ``weights_only=True`` (no code runs while loading).

    Raises ``FileNotFoundError`` if the file is missing, :class:`CheckpointError` naming the file if it is
    unreadable, needs pickled objects other than tensors and plain containers, or is not an Audio BSQ-ViT
    checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip().startswith("Unsupported")]
        reason = lines[0] if lines else str(err).splitlines()[0]
        if "Unsupported global" not in reason:  # a damaged pickle, not a refused class
            raise CheckpointError(f"checkpoint {path} cannot be read (damaged: {reason})") from err
        raise CheckpointError(
            f"checkpoint {path} needs pickled Python objects to load, which could run arbitrary code; "
            f"refused ({reason}). Checkpoints of this repository hold only tensors and plain data") from err
    except Exception as err:  # noqa: BLE001 - truncated, empty or garbage files all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "config" not in state or not ("models" in state or "model" in state):
        raise CheckpointError(f"{path} is not an Audio BSQ-ViT checkpoint (expected keys 'models' and 'config')")
    if "checksum" in state and content_checksum(state) != state["checksum"]:
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match the checksum stored in it")
    return state


def model_weights(checkpoint: dict[str, Any], part: str = "model", use_ema: bool = True) -> tuple[dict, str]:
    """State dict of one trained model in a checkpoint: ``(weights, "ema" | "raw")``.

    EMA weights are returned when ``use_ema`` and the checkpoint has them for ``part``; reads format 1
    (top-level ``model`` / ``ema``) and format 2 (``models`` / ``ema`` by part name).
    """
    if "models" in checkpoint:
        models, emas = checkpoint["models"], checkpoint.get("ema") or {}
        if part not in models:
            raise CheckpointError(f"checkpoint has no model {part!r}; it holds {sorted(models)}")
        if use_ema and emas.get(part) is not None:
            return emas[part], "ema"
        return models[part], "raw"
    if part != "model":
        raise CheckpointError(f"a format-1 checkpoint holds only the tokenizer ('model'), not {part!r}")
    if use_ema and checkpoint.get("ema") is not None:
        return checkpoint["ema"], "ema"
    return checkpoint["model"], "raw"


def check_weights(expected: dict[str, torch.Tensor], weights: dict[str, Any], where: str,
                  allow_nonfinite: bool = False) -> None:
    """Weights that fit a model's state dict ``expected`` by dtype and hold only finite values.

    A tensor whose dtype differs from the model's (a float weight stored as int64 loads silently cast and
    gives other codes) raises :class:`CheckpointError` naming it. One NaN or Inf makes every code
    meaningless, so non-finite values raise too, naming the first such parameter; ``allow_nonfinite`` (an
    explicit override) loads them with a ``RuntimeWarning`` naming how many parameters hold them.
    """
    nonfinite: list[str] = []
    for key, tensor in expected.items():
        given = weights[key]
        if not isinstance(given, torch.Tensor):
            raise CheckpointError(f"{where}: parameter {key} is a {type(given).__name__}, expected a tensor")
        if given.dtype != tensor.dtype:
            raise CheckpointError(f"{where}: parameter {key} is {given.dtype} in the checkpoint but {tensor.dtype} "
                                  "in the model built from the config (a damaged or converted checkpoint)")
        if given.is_floating_point() or given.is_complex():
            if not bool(torch.isfinite(given).all()):
                nonfinite.append(key)
    if nonfinite and not allow_nonfinite:
        raise CheckpointError(f"{where}: parameter {nonfinite[0]} holds NaN or Inf values ({len(nonfinite)} "
                              "parameter(s) do): the codes of such a model are meaningless")
    if nonfinite:
        warnings.warn(f"{where}: loading {len(nonfinite)} parameter(s) with NaN or Inf values (first: "
                      f"{nonfinite[0]}) because non-finite weights were explicitly allowed", RuntimeWarning,
                      stacklevel=2)


def load_weights_strict(module: torch.nn.Module, weights: dict[str, Any], where: str,
                        allow_nonfinite: bool = False) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatching parameter:
    missing or unexpected names, another shape or dtype, or (unless ``allow_nonfinite``) non-finite values
    (:func:`check_weights`)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not fit the model built from its config "
                              f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: parameter {key} has shape {tuple(weights[key].shape)} in the checkpoint "
                                  f"but {tuple(tensor.shape)} in the model built from the config")
    check_weights(expected, weights, where, allow_nonfinite)
    module.load_state_dict(weights)
