"""Device, precision and memory format: the fast path chosen from what the machine has."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from headstart.core.errors import HeadstartError


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run several times faster than fp32 there."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.device} {self.precision} {layout}{threads}"


def pick_hardware(device: str = "auto", precision: str = "auto", channels_last: bool = True) -> Hardware:
    """'auto' picks CUDA, then Apple MPS, then CPU; bf16 autocast where the device does bf16 fast."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise HeadstartError(f"unknown device '{device}'; valid: auto, cpu, cuda, cuda:N, mps") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise HeadstartError("device 'cuda' asked for, but no CUDA GPU is visible; use --device cpu or auto")
    if precision == "auto":
        if chosen.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif chosen.type == "cpu":
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            precision = "fp32"
    if precision == "fp16" and chosen.type == "cpu":
        raise HeadstartError("fp16 autocast is for GPUs; on a CPU use bf16 or fp32")
    return Hardware(chosen, precision, channels_last)


def busy_cpu_note(load: float | None, cores: int | None, threads: int, measure: str = "load average") -> str | None:
    """A warning when other processes already keep every core busy as a CPU run starts; None otherwise.

    torch's OpenMP threads spin while they wait for each other, so on a shared CPU they burn the
    time slices the other processes' threads need: three runs at once on 2 cores made each epoch
    9-30x slower, not 3x (BENCHMARKS.md, "Where a slow epoch's time goes").
    """
    if load is None or not cores or load < cores * BUSY_SHARE:
        return None
    busy = f"the CPU is already busy ({measure} {load:.1f} on {cores} cores) and this run adds {threads} threads"
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":  # the advice below is taken already
        return f"{busy}: epoch times will not be comparable with a run alone"
    return (
        f"{busy}: on a shared CPU torch's spinning threads slow each other several-fold, so epoch times "
        "will not be comparable; run one job at a time, or set OMP_WAIT_POLICY=PASSIVE before starting "
        "(proportional sharing, but slower alone)"
    )


# Busy from this share of the cores on: a sampled figure reads a little under the threads keeping them busy.
BUSY_SHARE = 0.9


def cores_busy_elsewhere(seconds: float = 0.25) -> float | None:
    """How many cores other processes keep busy, sampled over `seconds` (Linux /proc); None where unreadable.

    The load average cannot tell: it also counts this process's own recent work, as when a sweep
    starts its next run in the process that has just trained the last one.
    """
    try:
        before = _cpu_ticks()
        time.sleep(seconds)
        after = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    total, busy, own = (later - earlier for later, earlier in zip(after, before, strict=True))
    return max(busy - own, 0) / max(total, 1) * (os.cpu_count() or 1)


def _cpu_ticks() -> tuple[int, int, int]:
    """(all cores' ticks, their busy ticks, this process's own ticks) from /proc."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and waiting for I/O
    # /proc/self/stat after the command name: utime, stime, cutime, cstime are its 12th to 15th fields
    own = sum(int(value) for value in Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:15])
    return sum(ticks), sum(ticks) - idle, own


def load_average() -> float | None:
    """The 1-minute load average, where the system reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None
