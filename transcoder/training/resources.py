"""The start-up resource check: will this run fit in memory, and how long will a step take?

Before the first step the trainer estimates what the run will add to the memory it already holds (the
parts' weights are built by then): gradients, AdamW's two moments, the activations a training forward
keeps for the backward, and the DataLoader workers. The activations are measured, not guessed: the task
runs a training forward of a single clip (:meth:`transcoder.tasks.Task.memory_probe`) while a
saved-tensors hook adds up the bytes autograd keeps (parameters excluded); that figure times
``data.batch_size`` is the batch's. The same forward is timed; times the batch size and tripled (forward
+ backward, the usual rule of thumb) it gives a rough, upper-end step time.

The estimate is rough (transient buffers of the backward and the allocator's slack are not counted), so
it is compared with the free memory with a margin (:data:`HEADROOM`). A run that cannot fit is refused
(:class:`ResourceError`, naming a smaller config); on a CPU a run whose steps would take long is started
with a one-line warning naming the config to use instead. ``training.skip_resource_check: true`` skips
the check (and the probe forward).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transcoder.utils.targets import ConfigError

__all__ = ["HEADROOM", "MemoryEstimate", "ResourceError", "SLOW_STEP_SECONDS", "WORKER_BYTES",
           "available_host_memory", "check_resources", "estimate_memory", "format_bytes", "gpu_free_memory",
           "measure_forward"]

#: The estimate must stay below this share of the free memory (room for what it does not count).
HEADROOM = 0.85
#: Resident memory assumed for one DataLoader worker besides its batches: a forked interpreter with torch
#: imported and the pages of the dataset it touches (an allowance, not a measurement of this machine).
WORKER_BYTES = 300 * 2**20
#: On a CPU, an estimated step longer than this is "very slow" (over 8 hours per thousand steps): warn.
SLOW_STEP_SECONDS = 30.0


class ResourceError(ConfigError):
    """The run cannot fit in the free memory (a usage error: exit code 2, no run folder)."""


def format_bytes(count: float) -> str:
    """``3.2 GB`` / ``850 MB`` (decimal units, as ``free -h`` shows them)."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def available_host_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes the kernel can give new allocations without swapping (``MemAvailable``), else the free
    pages (``os.sysconf``), else ``None`` when the platform says neither."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryEstimate:
    """What a run adds to the memory it holds once its models are built, in bytes, and the step time.

    ``activations`` is the batch's (the measured single-clip figure times ``batch_size``); ``workers`` is
    host memory of the loader workers (their own interpreters and ``prefetch_factor`` batches each).
    """

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    workers: int
    step_seconds: float | None = None

    @property
    def device_bytes(self) -> int:
        """What the training device must hold besides the weights already there."""
        return self.gradients + self.optimizer + self.activations

    def breakdown(self) -> str:
        return (f"weights {format_bytes(self.parameters)} (already allocated), gradients "
                f"{format_bytes(self.gradients)}, optimizer {format_bytes(self.optimizer)}, activations "
                f"{format_bytes(self.activations)}, loader workers {format_bytes(self.workers)}")


def measure_forward(probe: Callable[[int], None], modules: list[nn.Module]) -> tuple[int, float]:
    """``(bytes autograd saves for the backward, seconds)`` of a one-clip training forward (``probe(1)``).

    Saved tensors are counted once however often they are saved, parameters (counted apart) not at all.
    The time is the faster of two calls (the first pays one-time costs: thread pools, lazy buffers); a
    first call over 10 s is not repeated. The RNG and the modules' buffers (BatchNorm statistics)
    are restored after, so training is unchanged.
    """
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    buffers = [(buf, buf.detach().clone()) for m in modules for buf in m.buffers()]
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []

    def timed() -> float:
        seen.clear()
        start = time.perf_counter()
        probe(1)
        if devices:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        seconds = timed()
        if seconds < 10.0:
            seconds = min(seconds, timed())
        saved = sum(seen.values())
    with torch.no_grad():
        for buf, value in buffers:
            buf.copy_(value)
    return saved, seconds


def estimate_memory(models: list[nn.Module], ema_parts: int, probe: Callable[[int], None] | None,
                    batch_size: int, clip_samples: int, num_workers: int, prefetch_factor: int) -> MemoryEstimate:
    """The estimate of a run: ``models`` are the trained parts (AdamW keeps two fp32 moments per trained
    parameter, plus a copy for each of ``ema_parts`` EMAs), ``probe(clips)`` one training forward of that
    many clips (:meth:`transcoder.tasks.Task.memory_probe`); the step time is three one-clip forwards
    per clip of the batch (an upper-end figure: a batch runs more efficiently than its clips one by one)."""
    trained = sum(p.numel() * p.element_size() for m in models for p in m.parameters() if p.requires_grad)
    parameters = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    per_clip, seconds = measure_forward(probe, models) if probe is not None else (0, 0.0)
    workers = num_workers * (WORKER_BYTES + prefetch_factor * batch_size * clip_samples * 4)
    return MemoryEstimate(parameters=parameters, gradients=trained, optimizer=2 * trained + ema_parts * parameters,
                          activations=per_clip * batch_size, workers=workers,
                          step_seconds=3 * seconds * batch_size if probe is not None else None)


def check_resources(estimate: MemoryEstimate, device: torch.device, steps_left: int, smaller_config: str | None,
                    host_free: int | None, device_free: int | None = None) -> str | None:
    """Refuse a run that cannot fit; return a one-line warning for one that will be very slow on a CPU.

    Args:
        estimate: :func:`estimate_memory`'s figures.
        device: the training device (``cpu``: activations and workers share the host's memory).
        steps_left: steps this start will run (for the time estimate).
        smaller_config: a shipped config that fits a CPU, named in the messages (``None``: none to name).
        host_free: available host memory in bytes (:func:`available_host_memory`; ``None``: unknown).
        device_free: free accelerator memory in bytes (``None`` on a CPU).

    Raises:
        ResourceError: the estimate exceeds :data:`HEADROOM` of the free memory.
    """
    instead = f"use {smaller_config} on a CPU, or " if smaller_config else ""
    remedy = (f"{instead}lower data.batch_size / data.target_length / data.num_workers; "
              "training.skip_resource_check=true starts it anyway")
    on_cpu = device.type == "cpu"
    needs = [("the host", (estimate.device_bytes if on_cpu else 0) + estimate.workers, host_free)]
    if not on_cpu:
        needs.append((str(device), estimate.device_bytes, device_free))
    for where, need, free in needs:
        if free is not None and need > HEADROOM * free:
            raise ResourceError(f"this run needs about {format_bytes(need)} more memory on {where} but "
                                f"{format_bytes(free)} is free ({estimate.breakdown()}): {remedy}")
    if on_cpu and estimate.step_seconds is not None and estimate.step_seconds > SLOW_STEP_SECONDS:
        hours = estimate.step_seconds * steps_left / 3600
        instead = f"; for a CPU use {smaller_config}" if smaller_config else ""
        return (f"on the CPU this config takes about {estimate.step_seconds:.0f} s per step (~{hours:,.0f} h for "
                f"{steps_left:,} steps) and about {format_bytes(estimate.device_bytes + estimate.workers)} besides "
                f"the weights{instead}")
    return None


def gpu_free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (``None`` elsewhere)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
