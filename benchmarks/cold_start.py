"""Cold start (issue 23): how evenly `suggest` with no run covers the classes of an imbalanced set, against random picks.

The set's images (class folders, labels hidden) are listed in one CSV; `suggest` picks BUDGET of them
from the embeddings alone; the class of each pick is read back from its folder. Random picks of the
same count are drawn 1,000 times. Evenness: the entropy of the picked classes' shares (higher is
more even), and the number of classes covered.

Usage:
    python benchmarks/cold_start.py DATA --budgets 6,12,24
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np


def entropy(names: list[str], classes: list[str]) -> float:
    shares = np.array([names.count(c) for c in classes]) / len(names)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum())


def main() -> None:
    import headstart

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--budgets", default="6,12,24")
    args = parser.parse_args()
    paths = sorted(p for p in args.data.glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in paths})
    counts = {c: sum(p.parent.name == c for p in paths) for c in classes}
    print(f"{args.data.name}: {len(paths)} images, {counts}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "pool.csv"
        with listing.open("w", newline="") as handle:
            csv.writer(handle).writerows([("path",), *[(str(p),) for p in paths]])
        for budget in map(int, args.budgets.split(",")):
            picks = headstart.suggest(listing, budget, out=Path(tmp) / f"out{budget}", quiet=True).picks
            names = [pick.path.parent.name for pick in picks]
            draws = [[paths[i].parent.name for i in rng.choice(len(paths), budget, replace=False)] for _ in range(1000)]
            print(
                f"budget {budget}: suggest covers {len(set(names))}/{len(classes)} classes, entropy "
                f"{entropy(names, classes):.3f} {sorted(names)}; random covers "
                f"{np.mean([len(set(d)) for d in draws]):.2f} on average, entropy {np.mean([entropy(d, classes) for d in draws]):.3f}"
            )


if __name__ == "__main__":
    main()
