"""What a training checkpoint holds, and how it is gathered from (and given back to) every rank."""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class TrainState:
    """Counters that, with the weights, optimizer and RNG states, define where a run stands."""

    step: int = 0
    best_val_loss: float = math.inf
    nonfinite_in_row: int = 0
    skipped_steps: int = 0
    skipped_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**values)


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain data (tensors, numbers,
    lists), so checkpoints load with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: call it on all ranks)."""
    return gather_from_ranks(capture_rng_state())


def gather_from_ranks(local: Any) -> list[Any]:
    """Every rank's ``local`` (picklable plain data), in rank order (a collective: call it on all ranks)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def file_list_fingerprint(dataset: Any) -> dict[str, Any]:
    """Number of files and a hash of their relative paths in dataset order (no file is opened); a dataset
    with a ``fingerprint()`` method (e.g. a shard stream) gives its own."""
    if callable(getattr(dataset, "fingerprint", None)):
        return dataset.fingerprint()
    count = int(getattr(dataset, "num_files", len(dataset)))
    digest = hashlib.sha1()
    if hasattr(dataset, "path"):
        root = getattr(dataset, "root", os.sep)
        for index in range(count):
            digest.update(os.path.relpath(dataset.path(index), root).encode())
            digest.update(b"\0")
    return {"count": count, "sha1": digest.hexdigest()[:16]}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators of this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
