"""The DataLoader the trainer (and the throughput benchmark) read audio batches through."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch.utils.data import DataLoader

from transcoder.data import collate_audio


def build_loader(dataset: Any, sampler: Any, batch_size: int, *, workers: int, device: torch.device, seed: int,
                 persistent: bool, pin_memory: bool = True, prefetch_factor: int = 2) -> DataLoader:
    """Batches of ``collate_audio`` dicts (``audio`` (B, S)) drawn in ``sampler`` order.

    The loader has its own generator, so creating an iterator never advances the global RNG (exact
    resume), and its workers run single-threaded and ignore SIGTERM/SIGINT (see :func:`worker_init`).
    """
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_audio,
        pin_memory=pin_memory and device.type == "cuda", drop_last=False,
        persistent_workers=persistent and workers > 0, prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=worker_init, generator=torch.Generator().manual_seed(seed),
    )


def worker_init(_worker_id: int) -> None:
    # Loader workers only decode and crop: one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # torchrun and schedulers signal every process; a worker that died of SIGTERM would make the loader
    # raise before the main process could write its checkpoint. The main process shuts workers down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
