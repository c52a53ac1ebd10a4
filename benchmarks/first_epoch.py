"""Where the first fine-tuning epoch's time goes: per-batch data wait vs compute, epoch 1 vs epoch 2.

Runs the old default's two stages (3 head epochs with light augmentation, then top:3 fine-tuning)
on DATA and times every training batch of every epoch: the wait for the batch (the DataLoader and
its workers) and the step (forward, backward, optimizer), split into the first 5 batches and the
rest, so one-time costs (worker start-up, oneDNN kernel creation for the new backward shapes,
allocator growth) show apart from the steady state.

DATA `digits` runs the embedded job's own recipe instead (3 head epochs, then 4 of everything).

Usage: python benchmarks/first_epoch.py DATA|digits [--epochs 3] [--workers N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import headstart
from headstart.config.defaults import builtin_recipe
from headstart.training.loop import Loop

TIMES: list[dict] = []


class TimedBatches:
    """Wraps an epoch's batches: records how long each one took to arrive and how long its step took."""

    def __init__(self, batches, record: dict):
        self.batches, self.record = batches, record

    def __iter__(self):
        iterator = iter(self.batches)
        while True:
            tic = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            arrived = time.perf_counter()
            self.record["wait"].append(arrived - tic)
            yield batch
            self.record["step"].append(time.perf_counter() - arrived)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    real = Loop.epoch

    def timed(self, batches, count, first_step, where):
        record = {"where": where, "wait": [], "step": []}
        TIMES.append(record)
        tic = time.perf_counter()
        result = real(self, TimedBatches(batches, record), count, first_step, where)
        record["total"] = time.perf_counter() - tic
        return result

    Loop.epoch = timed
    stages = [
        {"name": "head", "epochs": args.epochs, "freeze": "backbone", "lr": 2e-3},
        {"name": "finetune", "epochs": args.epochs, "freeze": "top:3", "lr": 1e-3, "body_lr_mult": 0.3},
    ]
    with tempfile.TemporaryDirectory() as out:
        if args.data == "digits":  # the embedded job, with its own recipe (it fine-tunes everything)
            recipe = builtin_recipe("digits").to_dict()
            recipe["run"]["out_dir"] = out
        else:
            recipe = {"data": {"path": args.data, "augment": "light"}, "stages": stages, "run": {"out_dir": out}}
        if args.workers is not None:
            recipe["data"]["workers"] = args.workers
        result = headstart.train(recipe, quiet=True)
    print("| epoch | train s | batches | wait first 5 | step first 5 | wait rest | step rest | epoch s (history) |")
    print("|---|---|---|---|---|---|---|---|")
    for record, row in zip(TIMES, result.history):
        wait, step = record["wait"], record["step"]
        print(
            f"| {record['where']} | {record['total']:.1f} | {len(step)} | {sum(wait[:5]):.1f} | {sum(step[:5]):.1f} | "
            f"{sum(wait[5:]):.1f} | {sum(step[5:]):.1f} | {row['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
