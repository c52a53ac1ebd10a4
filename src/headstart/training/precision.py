"""On a CPU, the precision (fp32 or bf16 autocast) and memory layout chosen by measuring the model, not by CPU flags.

CPU flags mislead: on an AVX-512 CPU without the avx512_bf16 flag a Lite0 forward pass ran 1.5x
faster under bf16 autocast than in fp32, where the flags said fp32. So each candidate runs a few
forward passes of the run's own model at its input size, and the fastest is kept. The result is
stored per CPU model, torch version, backbone, input size and thread count under
$HEADSTART_CACHE/speed/, so the measurement costs seconds once per machine. `--precision` and
`run.channels_last: true|false` fix either choice; BENCHMARKS.md ("Precision") checks that the
choice leaves accuracy within seed noise.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from headstart.core import cache
from headstart.core.distributed import Group
from headstart.core.fileio import writing
from headstart.core.hardware import Hardware
from headstart.data.datasets import cache_root
from headstart.model.build import Classifier

log = logging.getLogger("headstart")

BATCH = 8
REPEATS = 3


def cpu_name() -> str:
    """The CPU's model name (what a measurement holds for), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def candidates(precision: str, channels_last: bool | str) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs to measure: each setting left on 'auto' is tried both ways."""
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    layouts = [True, False] if channels_last == "auto" else [bool(channels_last)]
    return [(p, layout) for p in precisions for layout in layouts]


@torch.no_grad()
def seconds_per_image(model: Classifier, hw: Hardware, image_size: int) -> float:
    """The fastest of REPEATS forward passes of a batch of BATCH images, per image, after one warm-up pass."""
    model.eval()
    model.to(memory_format=torch.channels_last if hw.channels_last else torch.contiguous_format)
    # A generator of its own: a run that measures must draw the same random numbers as one that reads the figures.
    noise = torch.Generator().manual_seed(0)
    images = hw.to_input(torch.randn(BATCH, 3, image_size, image_size, generator=noise))
    times = []
    for _ in range(REPEATS + 1):
        tic = time.perf_counter()
        with hw.autocast():
            model(images)
        times.append(time.perf_counter() - tic)
    return min(times[1:]) / BATCH


def measured(
    model: Classifier, hw: Hardware, image_size: int, backbone: str, options: list[tuple[str, bool]], group: Group
) -> tuple[Hardware, str]:
    """The fastest of `options` for this model on this CPU (stored per machine), and the line that says so."""
    fields = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "backbone": backbone,
        "image_size": image_size,
        "threads": torch.get_num_threads(),
        "options": options,
    }
    path = cache_root() / "speed" / f"{cache.content_key(fields)}.json"
    timings = _read(path) if group.is_main else None
    fresh = timings is None
    if group.is_main and timings is None:
        timings = {
            f"{p} {'channels_last' if cl else 'NCHW'}": seconds_per_image(
                model, replace(hw, precision=p, channels_last=cl), image_size
            )
            for p, cl in options
        }
        with writing(path, "cache"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**fields, "seconds_per_image": timings}, indent=1))
    timings = group.share(timings)
    assert timings is not None
    best = min(timings, key=timings.__getitem__)
    precision, layout = best.split()
    chosen = replace(hw, precision=precision, channels_last=layout == "channels_last")
    model.to(memory_format=torch.channels_last if chosen.channels_last else torch.contiguous_format)
    figures = ", ".join(f"{name} {seconds * 1000:.1f}" for name, seconds in timings.items())
    source = "measured now" if fresh else f"measured earlier on this machine, {path}"
    return chosen, f"precision: {best} is the fastest forward pass here (ms per image: {figures}; {source})"


def _read(path: Path) -> dict[str, float] | None:
    try:
        timings = json.loads(path.read_text())["seconds_per_image"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return timings if isinstance(timings, dict) and timings else None
