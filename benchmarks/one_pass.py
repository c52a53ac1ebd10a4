"""The default recipe against one inference pass over the same images, measured in the same process.

For each data set and seed, a child process with a fresh, empty $HEADSTART_CACHE (what a user's
first run pays; the precision measurement, done once per machine, is kept in a shared folder and
its one-time cost printed apart) runs `headstart.train(DATA)` with the default recipe, then one
inference pass over the run's train and val images: each file opened and decoded, the eval
transform, the model forward in batches, with the precision and layout the run chose. Prints one
JSON line per run and, with --table, the ratio train / pass per data set.

    python benchmarks/one_pass.py --seeds 0,1,2 --out one_pass.jsonl DATA [DATA ...]
    python benchmarks/one_pass.py --no-test --seeds 0,1,2 --out as_given.jsonl DATA [DATA ...]
    python benchmarks/one_pass.py --table one_pass.jsonl

--no-test runs the default recipe exactly as given (no test split, so no test accuracy), which is
what issue 22's bar measures; without it a held-out test split (as in benchmarks/defaults.py) gives
the accuracy to compare, and the run also pays for its test images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import data_path  # noqa: E402  # the same test splits as the default recipe's benchmark

CHILD = """
import json, sys, time, torch
import headstart
from torch.utils.data import DataLoader, Dataset
from headstart.config.recipe import Recipe
from headstart.data.images import build_transforms, open_image
from headstart.data.layouts import list_images
from headstart.model.build import build_model, resolve_preprocessing
from headstart.core.hardware import pick_hardware
from headstart.core.runs import read_history

recipe = Recipe.from_dict(json.loads(sys.argv[1]))
tic = time.perf_counter()
result = headstart.train(recipe.model_copy(deep=True), quiet=True)
train_s = time.perf_counter() - tic
summary = (result.run_dir / "summary.txt").read_text()
hardware = next(line for line in summary.splitlines() if line.startswith("hardware: "))
device, precision, layout = hardware.removeprefix("hardware: ").split(",")[0].split()[:3]

class Files(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform
    def __len__(self):
        return len(self.samples)
    def __getitem__(self, i):
        with open_image(self.samples[i][0]) as image:
            return self.transform(image.convert("RGB"))

tic = time.perf_counter()
split = list_images(recipe.data)
preprocessing = resolve_preprocessing(recipe.data, recipe.model)
model = build_model(recipe.model, len(split.classes), preprocessing["image_size"]).eval()
hw = pick_hardware("cpu", precision, layout == "channels_last")
if hw.channels_last:
    model.to(memory_format=torch.channels_last)
files = Files(list(split.train) + list(split.val), build_transforms(preprocessing, "none")[1])
with torch.no_grad():
    for images in DataLoader(files, batch_size=recipe.data.batch_size, num_workers=0):
        with hw.autocast():
            model(hw.to_input(images))
pass_s = time.perf_counter() - tic
test = result.test or {}
print(json.dumps({"train_s": train_s, "pass_s": pass_s, "images": len(files), "precision": f"{precision} {layout}",
                  "test_acc": test.get("acc"), "best_val_acc": result.best["val_acc"], "epochs": len(result.history),
                  "paths": sorted({r["path"] for r in result.history})}))
"""


MEASURE = """
import time, torch
from headstart.config.recipe import Recipe
from headstart.core.distributed import SOLO
from headstart.core.hardware import pick_hardware
from headstart.model.build import build_model
from headstart.training.precision import candidates, measured
recipe = Recipe()
model = build_model(recipe.model, 2, 224)
tic = time.perf_counter()
hw, note = measured(model, pick_hardware("cpu"), 224, recipe.model.backbone, candidates("auto", "auto"), SOLO)
print(f"{note} ({time.perf_counter() - tic:.1f} s, once per machine)")
"""


def measure_once(speed: Path) -> None:
    """The precision measurement a first run on this machine pays, timed apart and kept for every run after."""
    env = {**os.environ, "HEADSTART_CACHE": str(speed.parent)}
    print(subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True, check=True).stdout)


def run_one(data: str, seed: int, work: Path, speed: Path, no_test: bool = False) -> dict:
    # --no-test: the default recipe exactly as a user runs it (no test split: train and val are every image).
    path, test_fraction = (str(Path(data).resolve()), 0.0) if no_test else data_path(data, work)
    recipe = {
        "data": {"path": path, "test_fraction": test_fraction, "split_seed": seed},
        "run": {"out_dir": str(work / "runs"), "seed": seed, "name": f"{Path(data).name}-{seed}"},
    }
    row = run_child(CHILD, recipe, speed, f"{data} seed {seed}")
    return {"data": Path(data).name, "seed": seed, "test_split": not no_test, "load": os.getloadavg()[0], **row}


def run_child(child: str, recipe: dict, speed: Path, what: str) -> dict:
    """`child`'s last stdout line as JSON, run on `recipe` in a fresh process with an empty cache (the speed figures kept)."""
    with tempfile.TemporaryDirectory() as cache:
        if speed.is_dir():
            shutil.copytree(speed, Path(cache) / "speed")
        env = {**os.environ, "HEADSTART_CACHE": cache}
        done = subprocess.run(
            [sys.executable, "-c", child, json.dumps(recipe)], env=env, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| data | images (train+val) | default s | one pass s | default / pass | test acc | precision |")
    print("|---|---|---|---|---|---|---|")
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        ratio = [r["train_s"] / r["pass_s"] for r in mine]
        acc = [r["test_acc"] for r in mine if r["test_acc"] is not None]
        spread = f" ± {statistics.stdev(ratio):.2f}" if len(ratio) > 1 else ""
        accuracy = (
            f"{statistics.mean(acc):.3f}" + (f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else "") if acc else "-"
        )
        print(
            f"| {data} | {mine[0]['images']} | {statistics.mean(r['train_s'] for r in mine):.1f} | "
            f"{statistics.mean(r['pass_s'] for r in mine):.1f} | {statistics.mean(ratio):.2f}{spread} | {accuracy} | "
            f"{mine[0]['precision']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("one_pass.jsonl"))
    parser.add_argument("--table", type=Path)
    parser.add_argument("--no-test", action="store_true", help="no held-out test split: the default recipe as given")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    with tempfile.TemporaryDirectory() as work:
        speed = Path(work) / "speed"
        measure_once(speed)
        for data in args.data:
            for seed in map(int, args.seeds.split(",")):
                row = run_one(data, seed, Path(work), speed, args.no_test)
                print(json.dumps(row), flush=True)
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
