"""The one pass that fills feature cache entries: every cut's outputs from one forward pass, split over processes.

`fill` runs a data set through `forward`, which returns one output per cut (the default recipe's
`top:1` cut and, from it, the head's pooled features: training.features), and writes each output
into its own .npy. Data-parallel processes take every world-th batch (the eval sharding of
GlobalBatches), so N processes each compute about 1/N of the pass; rank 0 gathers the rows and
writes them, and the others read the published entry. Each image's random augmentation is drawn
from (seed, image index) alone, so the cached views are the same whatever the number of processes.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from headstart.core.distributed import Group
from headstart.core.hardware import Hardware
from headstart.core.progress import progress
from headstart.data.batches import GlobalBatches

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], list[torch.Tensor]]


def stored(chunk: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A batch of outputs as the numpy array the cache stores (numpy has no bfloat16: its raw 16-bit patterns)."""
    chunk = chunk.to("cpu", dtype).contiguous()
    return chunk.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else chunk.numpy()


def seeded_item(dataset: Dataset, index: int, seed: int):
    """dataset[index] with every random generator a transform may use (python, numpy, torch) seeded from (seed, index)."""
    draw = seed * 1_000_003 + index
    random.seed(draw)
    np.random.seed(draw % 2**32)
    torch.manual_seed(draw)
    return dataset[index]


def shares(count: int, world: int) -> list[int]:
    """How many images each process computes: GlobalBatches' evaluation split, every world-th image."""
    return [len(range(rank, count, world)) for rank in range(world)]


class _Rows:
    """One output's .npy, filled through a memory map as gathered rows arrive (RAM holds a batch of it)."""

    def __init__(self, path: Path, count: int):
        self.path, self.count = path, count
        self.array: np.memmap | None = None

    def write(self, indices: list[int], chunk: np.ndarray) -> None:
        if self.array is None:
            shape = (self.count, *chunk.shape[1:])
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=chunk.dtype, shape=shape)
        self.array[indices] = chunk

    def close(self) -> None:
        assert self.array is not None, f"no rows were written to {self.path}"
        self.array.flush()
        del self.array


@torch.no_grad()
def fill(
    forward: Forward,
    dataset: Dataset,
    targets: list[Path] | None,
    *,
    seed: int,
    batch_size: int,
    hw: Hardware,
    group: Group,
    dtype: torch.dtype,
    label: str,
) -> None:
    """Run every image of `dataset` through `forward` once (this process's share); rank 0 writes output i to targets[i].

    `targets` is None on every process but the writer (rank 0 while an entry is being built).
    """
    count = len(dataset)  # type: ignore[arg-type]  # every dataset here is map-style
    order = GlobalBatches(count, batch_size, seed, False, group.rank, group.world)
    # Every process takes part in every gather: as many steps as the process with the most batches.
    steps = math.ceil(math.ceil(count / group.world) / batch_size)
    batches = iter(order)
    rows = [_Rows(path, count) for path in targets] if targets is not None else None
    for _ in progress(range(steps), label, total=steps, unit="batch"):
        indices = next(batches, [])
        chunks: list[np.ndarray] = []
        if indices:
            items = [seeded_item(dataset, index, seed) for index in indices]
            inputs = default_collate([item[0] for item in items])
            with hw.autocast():
                chunks = [stored(output, dtype) for output in forward(hw.to_input(inputs))]
        parts = group.collect((indices, chunks))
        if rows is None or parts is None:
            continue
        for part in parts:
            part_indices, part_chunks = cast(tuple[list[int], list[np.ndarray]], part)  # the pairs sent above
            for output, chunk in zip(rows, part_chunks, strict=False):
                output.write(part_indices, chunk)
    for output in rows or []:
        output.close()
