"""An endless, resumable, rank-sharded sampler that also fixes each clip's random crop.

Training is counted in steps, not epochs: the sampler walks through epoch after epoch (a new
shuffle per epoch, the same on every rank, each rank taking every ``world_size``-th item), and
yields ``(index, crop_seed)`` pairs. The crop seed is a function of (seed, epoch, index), so a
run resumed from ``start`` items reproduces exactly the clips the uninterrupted run would have
seen, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableTrainSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, crop seed)`` forever, starting after ``start`` items of this rank."""

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, start: int = 0) -> None:
        if num_items < 1:
            raise ValueError("the training dataset is empty")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        # Every rank gets the same number of items per epoch (the shuffled order is padded by wrapping).
        self.per_rank = -(-num_items // world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        total = self.per_rank * self.world_size
        order = (order * (total // self.num_items + 1))[:total]
        return order[self.rank::self.world_size]

    def crop_seed(self, epoch: int, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])

    def epoch_at(self, position: int) -> int:
        """Epoch of this rank's ``position``-th item."""
        return position // self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            for index in self.epoch_order(epoch)[offset:]:
                yield index, self.crop_seed(epoch, index)
            position = (epoch + 1) * self.per_rank

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.per_rank
