"""Data-parallel training on PyTorch's own engine: torch.distributed process groups and DDP.

Started by any standard launcher (`torchrun`, `accelerate launch`) or by `headstart train
--devices N`, which runs torchrun. The launcher sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; each process joins the group here (gloo on CPU, NCCL on CUDA). Rank 0 alone
writes files and prints. Decoded images are cached by rank 0 first and then read by the others; the
feature pass is split between all processes and written by rank 0 (headstart.training.feature_pass).
The cache folder must be one every process can read: on several machines, set HEADSTART_CACHE to
shared storage.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place among the data-parallel processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so counts and loss sums stay exact)."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's rows, concatenated in rank order (for scores that need all outputs: mean AP)."""
        if not self.active:
            return tensor
        parts: list[torch.Tensor | None] = [None] * self.world
        dist.all_gather_object(parts, tensor.cpu())
        return torch.cat([part for part in parts if part is not None])

    def collect(self, value: object) -> list[object] | None:
        """Every process's `value` in rank order, on rank 0 alone (None on the others): one writer, no copies elsewhere."""
        if not self.active:
            return [value]
        parts: list[object] | None = [None] * self.world if self.is_main else None
        dist.gather_object(value, parts, dst=0)
        return parts

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0 if self.active else flag

    def share(self, value):
        """Rank 0's value, on every process."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building a cache on disk); the others run it after, finding the cache.

        Meanwhile the others wait in a barrier, so rank 0 borrows every core of the machine
        (launchers give each CPU process one thread).
        """
        if not self.is_main:
            self.barrier()
        threads = torch.get_num_threads()
        if self.is_main and self.active:
            torch.set_num_threads(os.cpu_count() or threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            if self.is_main:
                self.barrier()


SOLO = Group()


def join(device_type: str) -> Group:
    """Join the process group a launcher prepared; SOLO when this process runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SOLO
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()


def launch(argv: list[str], processes: int) -> int:
    """Run `headstart ARGV` in `processes` data-parallel processes on this machine, through torchrun."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "headstart.cli",
        *argv,
    ]
    return subprocess.call(command)
