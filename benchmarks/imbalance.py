"""data.balance on an imbalanced folder: none vs weights vs sampler, several seeds (issue 9).

Each run: the packaged tf_efficientnet_lite0, frozen, a linear head trained on cached features
(augment none, so the head stage is exact and cached: the backbone runs once per seed), val and
test carved per class from the folder (split_seed = seed, so splits vary with the seed too).
best.pt is chosen by val loss (the default monitor); the test split is scored once at the end.
Prints one row per run and the mean per remedy, as Markdown.

Usage: nice -n 10 python benchmarks/imbalance.py [DATA] [--seeds 0,1,2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import headstart

REMEDIES = ("none", "weights", "sampler")


def run(data: str, balance: str, seed: int, epochs: int, out: str) -> dict:
    recipe = {
        "data": {"path": data, "augment": "none", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": seed}
        | {"balance": balance},
        "model": {"backbone": "tf_efficientnet_lite0", "weights": "package"},
        "stages": [{"name": "head", "epochs": epochs, "freeze": "backbone", "lr": 2e-3, "schedule": "cosine"}],
        "run": {"out_dir": out, "name": f"{balance}-seed{seed}", "seed": seed, "device": "cpu", "precision": "fp32"},
    }
    tic = time.perf_counter()
    result = headstart.train(recipe, quiet=True)
    return {"balance": balance, "seed": seed, "seconds": time.perf_counter() - tic, **result.test}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default="../shared/data/tiles")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        print("| balance | seed | test acc | test balanced acc | test macro-F1 | test images | wall s |")
        print("|---|---|---|---|---|---|---|")
        for seed in (int(s) for s in args.seeds.split(",")):
            for balance in REMEDIES:
                row = run(args.data, balance, seed, args.epochs, out)
                rows.append(row)
                print(
                    f"| {balance} | {seed} | {row['acc']:.4f} | {row['balanced_acc']:.4f} | {row['f1']:.4f} "
                    f"| {row['images']} | {row['seconds']:.0f} |",
                    flush=True,
                )
    print("\n| balance | mean test acc | mean test balanced acc | mean test macro-F1 | seeds |")
    print("|---|---|---|---|---|")
    for balance in REMEDIES:
        mine = [r for r in rows if r["balance"] == balance]
        means = [statistics.mean(r[k] for r in mine) for k in ("acc", "balanced_acc", "f1")]
        spread = statistics.pstdev(r["balanced_acc"] for r in mine)
        print(f"| {balance} | {means[0]:.4f} | {means[1]:.4f} ± {spread:.4f} | {means[2]:.4f} | {len(mine)} |")


if __name__ == "__main__":
    main()
