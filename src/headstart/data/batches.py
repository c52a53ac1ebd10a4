"""Batches: which images each training step sees, the same for any number of processes, and the DataLoader.

GlobalBatches orders one epoch's images from (seed, epoch) alone, optionally drawing with
per-image weights (data.balance: sampler), then deals each global batch out across processes;
so a run's batch order does not depend on how many processes share it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from headstart.core.errors import HeadstartError


def default_workers() -> int:
    # Decoded images make transforms cheap; on a 2-core machine worker processes only steal the model's cores.
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


class GlobalBatches(Sampler[list[int]]):
    """Batches of indices whose order depends only on (seed, epoch), each global batch cut into equal rank shares.

    One process (world=1) and N data-parallel processes see the same global batches, so their
    histories agree; a resumed run sees the same order as an uninterrupted one. A last batch
    shorter than `batch_size` is dropped when shuffling: a batch of one image breaks BatchNorm in
    train mode (timm drops it too), and ranks must take the same number of steps.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
        weights: torch.Tensor | None = None,
    ):
        if shuffle and batch_size % world:
            raise HeadstartError(
                f"batch size {batch_size} does not split over {world} processes; use a multiple of {world}"
            )
        self.length, self.batch_size, self.seed, self.shuffle = length, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        # Per-index drawing weights (data.balance: sampler): each epoch draws `length` indices with replacement.
        self.weights = weights
        self.epoch = 1
        self.drop_last = shuffle and length > batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's indices: a permutation, or a weighted draw; a function of (seed, epoch) alone either way."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.length, replacement=True, generator=generator)
        return torch.randperm(self.length, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = self.order()
            share = self.batch_size // self.world
            for start in range(0, len(self) * self.batch_size, self.batch_size):
                batch = order[start : start + self.batch_size]
                yield batch[self.rank * share : (self.rank + 1) * share].tolist()
        else:
            # Evaluation: every index exactly once, spread over the ranks; sums are reduced afterwards.
            mine = list(range(self.rank, self.length, self.world))
            for start in range(0, len(mine), self.batch_size):
                yield mine[start : start + self.batch_size]

    def __len__(self) -> int:
        if self.shuffle:
            return self.length // self.batch_size if self.drop_last else math.ceil(self.length / self.batch_size)
        return math.ceil(len(range(self.rank, self.length, self.world)) / self.batch_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int | None,
    seed: int,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """Batches of `dataset`; call loader.batch_sampler.set_epoch(epoch) before each training epoch."""
    workers = default_workers() if workers is None else workers
    return DataLoader(
        dataset,
        # torch's Dataset declares no __len__ (iterable datasets have none); every dataset here is map-style.
        batch_sampler=GlobalBatches(len(dataset), batch_size, seed, shuffle, rank, world, weights),  # type: ignore[arg-type]
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
