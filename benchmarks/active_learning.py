"""Active learning, simulated (issue 23): rounds of `headstart suggest` against random picks, the hidden labels as oracle.

Per data set and seed, every image (splits pooled) is dealt into a test split (25 %, stratified),
a fixed labelled val split (VAL_PER_CLASS per class, the same for every strategy) and a pool whose
labels are hidden. Each strategy starts with nothing labelled and adds STEP labels a round:

    suggest  round 1 `suggest(pool, STEP)` with no run (cold start: typical images), then
             `suggest(pool, STEP, run=last round's run)`, the oracle labelling what it picks
    random   STEP more pool images drawn at random (the same seed for both strategies' test split)

After each round the default recipe trains on the labels so far and is scored once on the test
split; `full` trains on the whole pool labelled. One JSON line per trained model goes to --out
(appended; an interrupted sweep resumes). --table prints test accuracy against labels used, and
the labels each strategy needed to reach random's accuracy at --target labels and the full model's.

Usage:
    python benchmarks/active_learning.py --steps 6 --seeds 0,1 --out al.jsonl DATA [DATA ...]
    python benchmarks/active_learning.py --table al.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from few_labels import pooled  # noqa: E402  (benchmarks/ is not a package)

STEP = 25
VAL_PER_CLASS = 10


def deal(paths: list[Path], labels: list[str], seed: int) -> tuple[list, list, list]:
    """(test rows, val rows, pool rows) of (path, label), stratified by class."""
    rng = np.random.default_rng(seed)
    test, val, pool = [], [], []
    for name in sorted(set(labels)):
        members = [p for p, label in zip(paths, labels, strict=True) if label == name]
        members = [members[i] for i in rng.permutation(len(members))]
        n_test = max(1, round(0.25 * len(members)))
        test += [(p, name) for p in members[:n_test]]
        val += [(p, name) for p in members[n_test : n_test + VAL_PER_CLASS]]
        pool += [(p, name) for p in members[n_test + VAL_PER_CLASS :]]
    return test, val, pool


def train_on(train: list, val: list, test: list, seed: int, folder: Path) -> tuple[Path, float]:
    """The default recipe on `train`; test accuracy over the whole test split.

    headstart refuses val/test classes that train lacks, so early rounds that have not yet seen a
    class leave it out of val and test, and its test images count as mistakes.
    """
    import headstart

    seen = {name for _, name in train}
    scored = len(test)
    val, test = [r for r in val if r[1] in seen], [r for r in test if r[1] in seen]
    folder.mkdir(parents=True, exist_ok=True)
    sheet = folder / "labelled.csv"
    with sheet.open("w", newline="") as handle:
        rows = [(p, n, s) for s, part in (("train", train), ("val", val), ("test", test)) for p, n in part]
        csv.writer(handle).writerows([("path", "label", "split"), *[(str(p), n, s) for p, n, s in rows]])
    result = headstart.train(
        {"data": {"path": str(sheet)}, "run": {"seed": seed, "out_dir": str(folder / "runs")}}, quiet=True
    )
    return result.run_dir, result.test["acc"] * len(test) / scored


def rounds(strategy: str, test, val, pool, seed: int, steps: int, folder: Path):
    """Yield (labels used, test accuracy) after each round."""
    import headstart

    truth = {str(p.resolve()): n for p, n in pool}
    labelled: list = []
    run = None
    rng = np.random.default_rng(seed + 1000)
    for step in range(1, steps + 1):
        left = [(p, n) for p, n in pool if str(p.resolve()) not in {str(q.resolve()) for q, _ in labelled}]
        if strategy == "random":
            picked = [left[i] for i in rng.choice(len(left), STEP, replace=False)]
        else:
            listing = folder / f"pool{step}.csv"
            with listing.open("w", newline="") as handle:
                csv.writer(handle).writerows([("path",), *[(str(p),) for p, _ in left]])
            found = headstart.suggest(listing, STEP, run=run, out=folder / f"ask{step}", seed=seed, quiet=True)
            picked = [(pick.path, truth[str(pick.path.resolve())]) for pick in found.picks]
        labelled += picked
        if len({n for _, n in labelled}) < 2:
            yield len(labelled), None  # one class seen so far: nothing to train
            continue
        run, accuracy = train_on(labelled, val, test, seed, folder / f"{strategy}{step}")
        yield len(labelled), accuracy


def table(path: Path, target: int) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[tuple, dict[int, list[float]]] = {}
    for run in runs:
        if run["test_acc"] is not None:
            by.setdefault((run["data"], run["strategy"]), {}).setdefault(run["labels"], []).append(run["test_acc"])
    for data in sorted({d for d, _ in by}):
        full = statistics.mean([v for values in by.get((data, "full"), {}).values() for v in values] or [float("nan")])
        print(f"\n{data}: full pool labelled {full:.3f}")
        for strategy in ("random", "suggest"):
            curve = by.get((data, strategy), {})
            print(f"  {strategy:<8}" + "  ".join(f"{k}:{statistics.mean(v):.3f}" for k, v in sorted(curve.items())))
        goal = statistics.mean(by.get((data, "random"), {}).get(target, [float("nan")]))
        for strategy in ("random", "suggest"):
            curve = {k: statistics.mean(v) for k, v in by.get((data, strategy), {}).items()}
            reach = min((k for k, v in curve.items() if v >= goal), default=None)
            reach_full = min((k for k, v in curve.items() if v >= full), default=None)
            print(
                f"  {strategy}: reaches random@{target} ({goal:.3f}) at {reach} labels, the full model at {reach_full}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--strategies", default="full,random,suggest")
    parser.add_argument("--out", type=Path, default=Path("active_learning.jsonl"))
    parser.add_argument("--table", type=Path)
    parser.add_argument("--target", type=int, default=150)
    args = parser.parse_args()
    if args.table:
        table(args.table, args.target)
        return
    done = {(r["data"], r["seed"], r["strategy"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.is_file() else set()  # fmt: skip
    for data in args.data:
        paths, labels = pooled(data)
        for seed in map(int, args.seeds.split(",")):
            test, val, pool = deal(paths, labels, seed)
            for strategy in args.strategies.split(","):
                if (data.name, seed, strategy) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    if strategy == "full":
                        points = [(len(pool), train_on(pool, val, test, seed, Path(tmp))[1])]
                    else:
                        points = list(rounds(strategy, test, val, pool, seed, args.steps, Path(tmp)))
                with args.out.open("a") as handle:
                    for labels_used, accuracy in points:
                        row = {
                            "data": data.name,
                            "seed": seed,
                            "strategy": strategy,
                            "labels": labels_used,
                            "test_acc": accuracy,
                        }
                        handle.write(json.dumps(row) + "\n")
                print(data.name, seed, strategy, points, flush=True, file=sys.stderr)


if __name__ == "__main__":
    main()
