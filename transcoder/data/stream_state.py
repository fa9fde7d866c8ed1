"""Exact resume of a rank's stream consumers (one per DataLoader worker), shared by the iterable datasets.

Every item a consumer yields carries, under :data:`STATE_KEY`, the consumer's position after it:
``[worker, num_workers, cycle, *reader position, yielded]``, where ``cycle`` counts passes over the data
(a :class:`~transcoder.data.CodesDataset` epoch, a :class:`~transcoder.data.ShardStreamDataset` pass), a
reader position of zeros means "this cycle not started" and ``yielded`` counts items over all cycles.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch.distributed as dist

__all__ = ["STATE_KEY", "StreamResume"]

#: Batch key holding each item's position; :meth:`StreamResume.observe` removes it.
STATE_KEY = "stream_state"


class StreamResume:
    """``observe`` / ``state_dict`` / ``load_state_dict`` for an iterable dataset whose items carry
    :data:`STATE_KEY`. The dataset defines ``fingerprint()`` and calls
    :meth:`_init_stream_state` in ``__init__``; its reader starts at :meth:`_resume_position`.
    """

    #: What one cycle over the data is called in messages (``"epoch"``, ``"pass"``).
    _cycle_name = "epoch"
    #: How messages name the recorded positions and the data the fingerprint describes.
    _positions_name = "positions"
    _data_name = "data"
    #: Length of a position without its ``[worker, num_workers]`` head: cycle, reader fields, yielded.
    _position_width = 3

    rank: int
    world_size: int

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def _init_stream_state(self, rank: int | None, world_size: int | None) -> None:
        """Set this process's place (by default from ``torch.distributed``, else ``RANK`` / ``WORLD_SIZE``,
        else 0 / 1) and start with no recorded positions."""
        if rank is None or world_size is None:
            if dist.is_available() and dist.is_initialized():
                rank, world_size = dist.get_rank(), dist.get_world_size()
            else:
                rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if not 0 <= rank < world_size:
            raise ValueError(f"{type(self).__name__}: rank={rank} outside [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self._observed: dict[int, list[int]] = {}  # worker -> [num_workers, cycle, *reader, yielded]
        self._resume: dict[str, Any] | None = None

    def observe(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Record the positions of a batch training consumed; returns the batch without them."""
        for state in batch.pop(STATE_KEY, []):
            worker, rest = int(state[0]), [int(v) for v in state[1:]]
            previous = self._observed.get(worker)
            if previous is None or rest[0] != previous[0] or rest[-1] >= previous[-1]:
                self._observed[worker] = rest
        return batch

    def epoch_at(self, _position: int = 0) -> int:
        """The furthest cycle over the data (epoch, pass) training has consumed items from (for logging)."""
        return max((state[1] for state in self._observed.values()), default=0)

    def state_dict(self) -> dict[str, Any]:
        """This rank's positions: ``{"world_size", "rank", "fingerprint", "workers": {worker: [...]}}``."""
        return {"world_size": self.world_size, "rank": self.rank, "fingerprint": self.fingerprint(),
                "workers": {int(w): list(s) for w, s in self._observed.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` of the same rank (another world size or data starts the cycle
        after the furthest recorded one, with a warning)."""
        workers = {int(w): [int(v) for v in s] for w, s in dict(state.get("workers", {})).items()}
        # A reader position of zeros is "cycle c not started" (a cycle's last items carry it).
        next_cycle = max((s[1] + (0 if not any(s[2:-1]) else 1) for s in workers.values()), default=0)
        same = state.get("world_size") == self.world_size and state.get("fingerprint") == self.fingerprint()
        if not same:
            warnings.warn(f"{type(self).__name__}: the checkpoint's {self._positions_name} were written with world "
                          f"size {state.get('world_size')} and {self._data_name} {state.get('fingerprint')}, this run "
                          f"has {self.world_size} and {self.fingerprint()}: every consumer starts {self._cycle_name} "
                          f"{next_cycle}", stacklevel=2)
        self._observed = dict(workers) if same else {}
        self._resume = {"workers": workers, "next_cycle": next_cycle, "exact": same}

    def _resume_position(self, worker: int, num_workers: int) -> list[int]:
        """``[cycle, *reader position, yielded]`` where consumer ``worker`` of ``num_workers`` starts."""
        fresh = [0] * self._position_width
        if self._resume is None:
            return fresh
        workers, next_cycle = self._resume["workers"], self._resume["next_cycle"]
        if not self._resume["exact"]:
            return [next_cycle, *fresh[1:]]
        if workers and any(s[0] != num_workers for s in workers.values()):
            warnings.warn(f"{type(self).__name__}: the checkpoint's positions were written with a different number "
                          f"of loader workers than {num_workers}: starting {self._cycle_name} {next_cycle}",
                          stacklevel=2)  # the dataset's stream()
            return [next_cycle, *fresh[1:]]
        return list(workers[worker][1:]) if worker in workers else fresh
