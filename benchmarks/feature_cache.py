"""A stage over a frozen prefix: cached vs uncached wall time per epoch (issue 3, benchmarks 2 and 5).

For each setup the same recipe runs twice, with the frozen-prefix feature cache on and off, in a
fresh cache folder (so the cached run pays for extracting the features in its first epoch).
Epoch 2 onward is where the cache pays; epoch 1 is shown too.

    lite0   packaged tf_efficientnet_lite0, linear head, 224 px, hymenoptera
    vgg16   article 003's first stage: VGG16 body frozen, Flatten-Dense(256)-Dropout(0.5) head, 150 px
            (random weights: offline there are no VGG16 weights; timing does not depend on them)
    vgg16-block5  article 003's second stage: blocks 1-4 frozen (cached), block 5 + head train

Usage: python benchmarks/feature_cache.py [DATA] [--epochs 4] [--setups lite0,vgg16,vgg16-block5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import headstart

SETUPS = {
    "lite0": {"model": {"backbone": "tf_efficientnet_lite0", "weights": "package"}, "data": {}},
    "vgg16": {
        "model": {
            "backbone": "vgg16",
            "weights": "none",
            "head": {"kind": "flatten-dense", "hidden": 256, "dropout": 0.5},
        },
        "data": {"image_size": 150, "crop_pct": 1.0},
    },
    # Article 003's second stage: blocks 1-4 frozen, block 5 + head train with SGD(1e-4, 0.9).
    "vgg16-block5": {
        "model": {
            "backbone": "vgg16",
            "weights": "none",
            "head": {"kind": "flatten-dense", "hidden": 256, "dropout": 0.5},
        },
        "data": {"image_size": 150, "crop_pct": 1.0},
        "stage": {"freeze": "features.24", "optimizer": "sgd", "lr": 0.0001, "momentum": 0.9},
    },
}


def run(setup: dict, data: Path, epochs: int, cache: bool, out: Path) -> list[dict]:
    recipe = {
        "data": {"path": str(data), "augment": "none", "batch_size": 32, **setup["data"]},
        "model": setup["model"],
        "stages": [
            {
                "name": "head",
                "epochs": epochs,
                "freeze": "backbone",
                "lr": 0.001,
                "schedule": "constant",
                **setup.get("stage", {}),
            }
        ],
        "run": {"out_dir": str(out), "name": f"{'cached' if cache else 'uncached'}", "feature_cache": cache},
    }
    return headstart.train(recipe, quiet=True).history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default=str(Path(__file__).parents[2] / "shared/data/hymenoptera"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--setups", default="lite0,vgg16")
    args = parser.parse_args()
    for name in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["HEADSTART_CACHE"] = str(Path(tmp) / "cache")
            cached = run(SETUPS[name], Path(args.data), args.epochs, True, Path(tmp))
            uncached = run(SETUPS[name], Path(args.data), args.epochs, False, Path(tmp))
        later_cached = sum(r["seconds"] for r in cached[1:]) / (len(cached) - 1)
        later_uncached = sum(r["seconds"] for r in uncached[1:]) / (len(uncached) - 1)
        print(f"{name}: epoch 1  cached {cached[0]['seconds']:.2f}s  uncached {uncached[0]['seconds']:.2f}s")
        print(
            f"{name}: epoch 2+ cached {later_cached:.3f}s  uncached {later_uncached:.2f}s  speed-up {later_uncached / later_cached:.0f}x"
        )
        print(
            f"{name}: final val_acc cached {cached[-1]['val_acc']:.4f}  uncached {uncached[-1]['val_acc']:.4f}  "
            f"val_loss cached {cached[-1]['val_loss']:.4f}  uncached {uncached[-1]['val_loss']:.4f}"
        )


if __name__ == "__main__":
    main()
