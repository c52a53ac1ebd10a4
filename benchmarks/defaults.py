"""The default recipe against the old default and a cached head alone, on several data sets and seeds.

Each run is its own process with a fresh, empty $HEADSTART_CACHE (what a user's first run pays),
holds out a test split (test_fraction 0.2 of class folders; hymenoptera's val/ becomes its test
rows through a CSV) and is scored there once with the weights the run chose. One JSON line per run
goes to --out; `--table` prints mean +- std per data set and variant from that file.

    old      the default before issue 10: 3 head epochs on the frozen backbone with light
             augmentation (so uncached), then 3 epochs of top:3 at 0.3x LR
    head     the cached head stage alone (no augmentation), early-stopped
    default  whatever `headstart train DATA` does in the code at hand
    ema, mixup, randaugment, randaugment-acc4
             the default with one of timm's pieces switched on (see knobs())
    fp32, bf16
             the default with its precision fixed (channels_last), whatever the measurement would pick

Usage:
    python benchmarks/defaults.py --variants old,default --seeds 0,1,2 --out defaults.jsonl DATA [DATA ...]
    python benchmarks/defaults.py --table defaults.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_DEFAULT = {
    "data": {"augment": "light"},
    "stages": [
        {"name": "head", "epochs": 3, "freeze": "backbone", "lr": 2e-3, "schedule": "cosine"},
        {"name": "finetune", "epochs": 3, "freeze": "top:3", "lr": 1e-3, "body_lr_mult": 0.3, "schedule": "cosine"},
    ],
}
HEAD_ALONE = {
    "data": {"augment": "none"},
    "stages": [
        {
            "name": "head",
            "epochs": "auto",
            "freeze": "backbone",
            "lr": 2e-3,
            "schedule": "constant",
            "early_stop": {"patience": 5},
        }
    ],
}
HEAD_AUTO = {
    "name": "head",
    "epochs": "auto",
    "max_epochs": 60,
    "freeze": "backbone",
    "lr": 2e-3,
    "schedule": "constant",
    "early_stop": {"patience": 5},
    "augment": "none",
}
FINETUNE_CACHED = {
    "name": "finetune",
    "epochs": "auto",
    "max_epochs": 20,
    "freeze": "top:3",
    "bn": "frozen",
    "lr": 5e-4,
    "body_lr_mult": 0.3,
    "schedule": "constant",
    "early_stop": {"patience": 3},
    "augment": "none",
}


# Candidates for the new default: the fine-tuning stage on cached outputs of the frozen lower blocks,
# on the plain images or on K cached augmented views of them, training the top 1 or 2 backbone stages.
def finetune(top: int, augment: str) -> dict:
    return {
        **FINETUNE_CACHED,
        "freeze": f"top:{top}",
        "augment": augment,
        "max_epochs": 10,
        "early_stop": {"patience": 2},
    }


CANDIDATES = {
    "cached-ft": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, FINETUNE_CACHED]},
    "views-ft": {
        "data": {"augment": "light", "feature_views": 4},
        "stages": [HEAD_AUTO, {**FINETUNE_CACHED, "augment": "light"}],
    },
    "t2-plain": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, finetune(2, "none")]},
    "t2-views": {"data": {"augment": "light", "feature_views": 2}, "stages": [HEAD_AUTO, finetune(2, "light")]},
    "t1-plain": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, finetune(1, "none")]},
    "t3-plain": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, finetune(3, "none")]},
    "t2-plain-lr1e-3": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, {**finetune(2, "none"), "lr": 1e-3}]},
    # The top stage at the head's own rate, or at twice the default's: does satellite want it moved more?
    "t1-body1": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, {**finetune(1, "none"), "body_lr_mult": 1.0}]},
    "t1-lr1e-3": {"data": {"augment": "none"}, "stages": [HEAD_AUTO, {**finetune(1, "none"), "lr": 1e-3}]},
    # The old default's fine-tuning (top:3, light augmentation, uncached) after a converged cached head.
    "t3-full": {
        "data": {"augment": "light"},
        "stages": [
            HEAD_AUTO,
            {**finetune(3, "light"), "lr": 1e-3, "max_epochs": 5, "schedule": "cosine"},
        ],
    },
}


# timm's pieces as recipe switches, each on top of the shipped default (issue 10: "with measured effect").
def default_with(head: dict | None = None, finetune_stage: dict | None = None, **sections: dict) -> dict:
    from headstart.config.recipe import default_stages

    head_stage, ft_stage = (s.model_dump(mode="json") for s in default_stages())
    return {"stages": [{**head_stage, **(head or {})}, {**ft_stage, **(finetune_stage or {})}], **sections}


def knobs() -> dict[str, dict]:
    randaugment = {"augment": "randaugment"}  # an image augmentation: the fine-tuning stage leaves the cache
    return {
        "ema": default_with(run={"ema_decay": 0.998}),
        "mixup": default_with(head={"mixup": 0.2}, finetune_stage={"mixup": 0.2}),  # cached features, both stages
        "randaugment": default_with(finetune_stage=randaugment),
        # The same effective batch (32) from batches of 8: what accumulation buys is memory.
        "randaugment-acc4": default_with(finetune_stage=randaugment, data={"batch_size": 8}, run={"accumulate": 4}),
    }


# The default under each precision the measurement can pick (issue 22: the choice must not cost accuracy).
PRECISIONS = {name: {"run": {"precision": name, "channels_last": True}} for name in ("fp32", "bf16")}

VARIANTS = {"old": OLD_DEFAULT, "head": HEAD_ALONE, "default": {}, **CANDIDATES, **knobs(), **PRECISIONS}


def data_path(data: str, work: Path) -> tuple[str, float]:
    """(the path to train on, its test_fraction): a train/val folder's val/ becomes the test rows of a CSV."""
    root = Path(data)
    if not (root / "train").is_dir():
        return str(root), 0.2
    rows = [("path", "label", "split")]
    for folder, split in (("train", "train"), ("val", "test")):
        for label in sorted(p.name for p in (root / folder).iterdir() if p.is_dir()):
            rows += [(str(f.resolve()), label, split) for f in sorted((root / folder / label).iterdir()) if f.is_file()]
    out = work / f"{root.name}.csv"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(out), 0.0


def merged(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


CHILD = """
import json, sys, time, headstart
recipe = json.loads(sys.argv[1])
tic = time.perf_counter()
result = headstart.train(recipe, quiet=True)
wall = time.perf_counter() - tic
test = result.test or {}
import resource
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"test_acc": test.get("acc"), "test_balanced_acc": test.get("balanced_acc"), "peak_mb": peak_mb,
                  "best_val_acc": result.best["val_acc"], "epochs": len(result.history), "wall_s": wall,
                  "stops": [r.get("stop") for r in result.history if r.get("stop")]}))
"""


def run_one(data: str, variant: str, seed: int, work: Path) -> dict:
    path, test_fraction = data_path(data, work)
    recipe = merged(
        VARIANTS[variant],
        {
            "data": {"path": path, "test_fraction": test_fraction, "split_seed": seed},
            "run": {"out_dir": str(work / "runs"), "seed": seed, "name": f"{Path(data).name}-{variant}-{seed}"},
        },
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HEADSTART_CACHE": cache}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        tic = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(recipe)], env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - tic
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{data} {variant} seed {seed} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    load = os.getloadavg()[0]
    return {
        "data": Path(data).name,
        "variant": variant,
        "seed": seed,
        "process_s": wall,
        "cpu_s": cpu,
        "load1": load,
        **row,
    }


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["variant"]), []).append(row)

    def peak(group: list[dict]) -> str:  # older result files did not record it
        values = [r["peak_mb"] for r in group if "peak_mb" in r]
        return spread(values, ".0f") if values else "-"

    def spread(values: list[float], fmt: str) -> str:
        if len(values) < 2:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    print("| data | variant | seeds | test acc | test balanced acc | wall s (process) | CPU s | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for (data, variant), group in sorted(groups.items()):
        print(
            f"| {data} | {variant} | {len(group)} | {spread([r['test_acc'] for r in group], '.3f')} | "
            f"{spread([r['test_balanced_acc'] for r in group], '.3f')} | {spread([r['process_s'] for r in group], '.0f')} | "
            f"{spread([r['cpu_s'] for r in group], '.0f')} | {peak(group)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*")
    parser.add_argument("--variants", default="old,head,default")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("defaults.jsonl"))
    parser.add_argument("--table", type=Path, help="print the table of a results file and stop")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    with tempfile.TemporaryDirectory() as work:
        for data in args.data:
            for seed in (int(s) for s in args.seeds.split(",")):
                for variant in args.variants.split(","):
                    row = run_one(data, variant, seed, Path(work))
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
