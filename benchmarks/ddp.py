"""Data-parallel on one machine: wall time of the default recipe in 1 vs 2 processes (`--devices N`).

Each run starts from an empty cache (a fresh HEADSTART_CACHE), so both pay the decode and the
feature extraction; in the 2-process run rank 0 builds those once and rank 1 reads them. The
2-process run has the same global batch size, so each process computes half of every batch.

Usage: python benchmarks/ddp.py [DATA] [--processes 1,2] [--head-epochs 3 --finetune-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default="../shared/data/hymenoptera")
    parser.add_argument("--processes", default="1,2")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    print(f"data {args.data}, {os.cpu_count()} CPUs, default recipe (head 3 epochs cached, top:3 3 epochs)")
    for processes in [int(p) for p in args.processes.split(",")]:
        env = dict(os.environ, HEADSTART_CACHE=tempfile.mkdtemp(prefix="ddp-cache-"))
        name = f"p{processes}"
        tic = time.perf_counter()
        subprocess.run(
            [
                "headstart",
                "train",
                args.data,
                "--out",
                str(out),
                "--name",
                name,
                "--devices",
                str(processes),
                "--quiet",
            ],
            env=env,
            check=True,
        )
        seconds = time.perf_counter() - tic
        history = json.loads((out / name / "history.json").read_text())
        stages = {}
        for row in history:
            stages[row["stage"]] = stages.get(row["stage"], 0.0) + row["seconds"]
        best = min(history, key=lambda row: row["val_loss"])
        timings = ", ".join(f"{stage} epochs {secs:.1f}s" for stage, secs in stages.items())
        print(
            f"{processes} process(es): wall {seconds:.1f}s ({timings}); best val_loss {best['val_loss']:.4f} "
            f"val_acc {best['val_acc']:.4f}; final val_acc {history[-1]['val_acc']:.4f}"
        )


if __name__ == "__main__":
    main()
