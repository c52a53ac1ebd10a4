"""Few labels, many images (issue 23): labelled-only against the same labels plus the rest as unlabelled images.

Every image of a dev set (all its splits pooled) is dealt, per seed, into a test split (25 %,
stratified), K labelled train images and K labelled val images per class (fewer where a class runs
out), and the rest, whose labels are hidden: the unlabelled folder. Both variants train the default
recipe on the same CSV and are scored once on the same test split; `ssl` adds `data.unlabeled`.
One JSON line per run goes to --out (appended, so an interrupted sweep resumes); --table prints
mean +- std per set, K and variant, and the paired gain (ssl - labelled) with its spread.

Usage:
    python benchmarks/few_labels.py --labels 10 --seeds 0,1,2 --out few.jsonl DATA [DATA ...]
    python benchmarks/few_labels.py --table few.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def pooled(data: Path) -> tuple[list[Path], list[str]]:
    """Every file of DATA with its class: class folders, or split folders of class folders."""
    from headstart import DataConfig, list_images

    # Absolute paths: the CSVs written from them live in temporary folders, and a CSV resolves relative paths from its own.
    split = list_images(DataConfig(path=str(data.resolve()), val_fraction=0.5))
    samples = split.train + split.val + split.test
    return [p for p, _ in samples], [split.classes[int(k)] for _, k in samples]


def deal(paths: list[Path], labels: list[str], k: int, seed: int, folder: Path) -> tuple[Path, Path, dict]:
    """(labelled CSV with train/val/test rows, unlabelled CSV of paths, counts) for one seed."""
    rng = np.random.default_rng(seed)
    rows, hidden, counts = [], [], {"train": 0, "val": 0, "test": 0, "unlabeled": 0}
    for name in sorted(set(labels)):
        members = [p for p, label in zip(paths, labels, strict=True) if label == name]
        members = [members[i] for i in rng.permutation(len(members))]
        n_test = max(1, round(0.25 * len(members)))
        test, rest = members[:n_test], members[n_test:]
        train, val, left = rest[:k], rest[k : 2 * k], rest[2 * k :]
        rows += [(p, name, "test") for p in test] + [(p, name, "train") for p in train]
        rows += [(p, name, "val") for p in val]
        hidden += left
        for split, part in (("test", test), ("train", train), ("val", val), ("unlabeled", left)):
            counts[split] += len(part)
    labelled, unlabelled = folder / "labelled.csv", folder / "unlabelled.csv"
    with labelled.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *[(str(p), n, s) for p, n, s in rows]])
    with unlabelled.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path",), *[(str(p),) for p in hidden]])
    return labelled, unlabelled, counts


def run_one(labelled: Path, unlabelled: Path | None, seed: int, out_dir: Path) -> dict:
    import headstart

    recipe = {
        "data": {"path": str(labelled), "unlabeled": str(unlabelled) if unlabelled else None},
        "run": {"seed": seed, "out_dir": str(out_dir)},
    }
    started = time.perf_counter()
    result = headstart.train(recipe, quiet=True)
    seconds = time.perf_counter() - started
    summary = (result.run_dir / "summary.txt").read_text()
    used = next((line for line in summary.splitlines() if line.startswith("pseudo-labels:")), "")
    return {"test_acc": result.test["acc"], "test_balanced_acc": result.test["balanced_acc"], "seconds": seconds,
            "pseudo": used}  # fmt: skip


def table(path: Path, metric: str) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for run in runs:
        groups.setdefault((run["data"], run["labels"]), {}).setdefault(run["variant"], {})[run["seed"]] = run[metric]
    print(metric)
    print(f"{'data':<12} {'K':>3}  {'labelled only':>15}  {'+ unlabelled':>15}  {'paired gain':>15}  seeds")
    for (data, k), variants in sorted(groups.items()):
        base, ssl = variants.get("labelled", {}), variants.get("ssl", {})
        seeds = sorted(set(base) & set(ssl))
        if not seeds:
            continue
        show = lambda v: f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"  # noqa: E731
        gains = [ssl[s] - base[s] for s in seeds]
        print(f"{data:<12} {k:>3}  {show([base[s] for s in seeds]):>15}  {show([ssl[s] for s in seeds]):>15}  "
              f"{show(gains):>15}  {len(seeds)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--labels", default="10", help="labelled images per class, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="labelled,ssl")
    parser.add_argument("--out", type=Path, default=Path("few_labels.jsonl"))
    parser.add_argument("--table", type=Path)
    parser.add_argument("--metric", default="test_acc", choices=["test_acc", "test_balanced_acc"])
    args = parser.parse_args()
    if args.table:
        table(args.table, args.metric)
        return
    done = set()
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            run = json.loads(line)
            done.add((run["data"], run["labels"], run["seed"], run["variant"]))
    for data in args.data:
        paths, labels = pooled(data)
        for k in map(int, args.labels.split(",")):
            for seed in map(int, args.seeds.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    labelled, unlabelled, counts = deal(paths, labels, k, seed, Path(tmp))
                    for variant in args.variants.split(","):
                        if (data.name, k, seed, variant) in done:
                            continue
                        extra = unlabelled if variant == "ssl" else None
                        row = {"data": data.name, "labels": k, "seed": seed, "variant": variant, **counts,
                               **run_one(labelled, extra, seed, Path(tmp) / "runs")}  # fmt: skip
                        print(json.dumps(row), flush=True, file=sys.stderr)
                        with args.out.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
