"""`headstart tune` with N trials against the default recipe, on the same data, split and seed (issue 24).

The default recipe trains once; then `headstart.tune` searches its default space (learning rates,
weight decay, label smoothing, Mixup, fine-tuning depth, the installed packaged backbones) with
Optuna's TPE sampler and median pruner, selecting on the val split. Both are scored on the same
held-out test split (`test_fraction` 0.2; hymenoptera's val/ as its test rows), which the search
never sees. One JSON line: the default's and the best trial's val loss, val and test accuracy,
the search's wall time and its trials by state.

    python benchmarks/tune.py --trials 30 --seed 0 [--budget 30m] [--out DIR] DATA
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import data_path  # noqa: E402  # the same test splits as the default recipe's benchmark

import headstart  # noqa: E402
from headstart.core.runs import read_history, read_test  # noqa: E402


def scores(run_dir: Path) -> dict:
    history = read_history(run_dir)
    best = min(history, key=lambda row: row["val_loss"])  # the default monitor: best.pt is this epoch
    return {"val_loss": best["val_loss"], "val_acc": best["val_acc"], "test_acc": (read_test(run_dir) or {})["acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", help="stop starting trials after this long (tune's --budget)")
    parser.add_argument("--out", type=Path, help="keep the runs and the tune folder here (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        path, test_fraction = data_path(args.data, work)
        recipe = {
            "data": {"path": path, "test_fraction": test_fraction, "split_seed": args.seed},
            "run": {"out_dir": str(work / "runs"), "seed": args.seed, "name": Path(args.data).name},
        }
        tic = time.perf_counter()
        default = headstart.train(recipe, quiet=True)
        default_s = time.perf_counter() - tic
        tic = time.perf_counter()
        found = headstart.tune(recipe, trials=args.trials, budget=args.budget, quiet=True)
        tune_s = time.perf_counter() - tic
        best = found.best
        print(
            json.dumps(
                {
                    "data": Path(args.data).name,
                    "seed": args.seed,
                    "default": {**scores(default.run_dir), "seconds": default_s},
                    "best": {**scores(Path(best["run_dir"])), "trial": best["number"], "params": best["params"]},
                    "tune_s": tune_s,
                    "trials": dict(Counter(t["state"] for t in found.trials)),
                }
            )
        )


if __name__ == "__main__":
    main()
