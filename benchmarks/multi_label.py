"""Multi-label on mosaics of a single-label set: the default recipe against a linear probe, BCE against ASL.

Each image of the set is a 2x2 mosaic of photos from one to three of its classes; its tags are the
classes it shows. The photos are split into train/val/test pools first (70/10/20, per class,
seeded), and each split's mosaics are made from its own pool only, so no photo is seen in
training and scored in test. The CSV (path,labels,split) and mosaics are written once into --work.

    probe       the default recipe's cached head stage alone: a linear layer on the frozen,
                pooled backbone features, early-stopped (the linear probe)
    default     whatever `headstart train tags.csv` does in the code at hand
    asymmetric  the default with run.multi_label_loss asymmetric (timm's ASL)

Each run is scored once on the test mosaics with the thresholds it chose on val. One JSON line per
run goes to --out; `--table` prints mean +- std of test mAP, micro-F1, macro-F1 and exact match.

Usage:
    python benchmarks/multi_label.py --seeds 0,1,2 --work /tmp/ml --out ml.jsonl ../shared/data/textures
    python benchmarks/multi_label.py --table ml.jsonl
    python benchmarks/multi_label.py --calibration /tmp/ml/runs/textures-default-*
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
from defaults import HEAD_ALONE  # benchmarks/ is on the path when this script runs
from PIL import Image

import headstart

TILE = 160  # each photo's share of a 320 x 320 mosaic
# The default recipe's cached head stage alone (benchmarks/defaults.py's, capped at 60 epochs as the default caps it).
PROBE = {"stages": [{**HEAD_ALONE["stages"][0], "augment": "none", "bn": "frozen", "max_epochs": 60}]}
VARIANTS = {"probe": PROBE, "default": {}, "asymmetric": {"run": {"multi_label_loss": "asymmetric"}}}
MOSAICS = {"train": 420, "val": 80, "test": 160}
PRIORS = (0, 10, 30, 100)  # pseudo-positives pulling a tag's threshold toward the shared one


def photos(root: Path) -> dict[str, list[Path]]:
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
        if files:
            found[folder.name] = files
    return found


def tile(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((TILE, TILE), Image.BICUBIC)


def build(data: Path, work: Path, seed: int = 0) -> Path:
    """Mosaics and tags.csv under work/<data name>/ (reused when present)."""
    folder = work / data.name
    table = folder / "tags.csv"
    if table.is_file():
        return table
    rng = np.random.default_rng(seed)
    pools: dict[str, dict[str, list[Path]]] = {s: {} for s in MOSAICS}
    for name, files in photos(data).items():
        order = [files[i] for i in rng.permutation(len(files))]
        cut = [round(len(order) * 0.7), round(len(order) * 0.8)]
        pools["train"][name], pools["val"][name], pools["test"][name] = (
            order[: cut[0]],
            order[cut[0] : cut[1]],
            order[cut[1] :],
        )
    rows = []
    for split, count in MOSAICS.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        classes = sorted(pools[split])
        for index in range(count):
            shown = list(rng.choice(classes, size=int(rng.integers(1, 4)), replace=False))
            cells = shown + list(rng.choice(shown, size=4 - len(shown)))
            mosaic = Image.new("RGB", (2 * TILE, 2 * TILE))
            for place, name in zip(rng.permutation(4), cells):
                photo = pools[split][name][int(rng.integers(len(pools[split][name])))]
                mosaic.paste(tile(photo), ((place % 2) * TILE, (place // 2) * TILE))
            target = folder / split / f"{index:04d}.jpg"
            mosaic.save(target, quality=92)
            rows.append([f"{split}/{target.name}", " ".join(sorted(set(shown))), split])
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "labels", "split"], *rows])
    return table


def run(table: Path, variant: str, seed: int, out_dir: Path) -> dict:
    overrides = VARIANTS[variant]
    recipe: dict = {"data": {"path": str(table)}}  # every other field at its default, as `headstart train` has it
    for section, values in overrides.items():
        recipe[section] = values if section == "stages" else {**recipe.get(section, {}), **values}
    recipe.setdefault("run", {}).update(seed=seed, out_dir=str(out_dir), name=f"{table.parent.name}-{variant}-{seed}")
    tic = time.perf_counter()
    result = headstart.train(recipe, quiet=True)
    test = result.test or {}
    return {
        "data": table.parent.name,
        "variant": variant,
        "seed": seed,
        "seconds": round(time.perf_counter() - tic, 1),
        "epochs": len(result.history),
        **{k: test.get(k) for k in ("map", "f1_micro", "f1_macro", "exact_match", "loss")},
    }


def val_and_test(run_dir: Path, temperature: bool = True) -> dict:
    """split -> (probabilities, 0/1 targets) of a run's val and test mosaics, through headstart.load in fp32."""
    from headstart.config.recipe import DataConfig
    from headstart.core.checkpoint import load_checkpoint
    from headstart.data.layouts import list_images
    from headstart.data.splits import label_tensor

    checkpoint = load_checkpoint(run_dir / "best.pt")
    predictor = headstart.load(run_dir)
    predictor.temperature = predictor.temperature if temperature else None
    split = list_images(DataConfig.model_validate(checkpoint.recipe["data"]))
    scored = {}
    for name, samples in (("val", split.val), ("test", split.test)):
        probabilities = predictor.probabilities([Image.open(path).convert("RGB") for path, _ in samples])
        scored[name] = probabilities, label_tensor([y for _, y in samples], len(split.classes), "multi-label")
    return scored


def print_row(name: str, *groups: list[float]) -> None:
    print(f"| {name} | " + " | ".join(" / ".join(f"{v:.4f}" for v in group) for group in groups) + " |")


def calibration(run_dirs: list[Path]) -> None:
    """Test NLL and ECE of each run's sigmoids: uncalibrated, one temperature, one temperature per tag (fitted on val)."""
    import torch

    from headstart.tasks.calibration import expected_calibration_error, fit_temperature
    from headstart.tasks.multi_label import MULTI_LABEL

    print("| run | test NLL: none / one T / per-tag T | test ECE: none / one T / per-tag T |")
    print("|---|---|---|")
    for run_dir in run_dirs:
        logits, targets = {}, {}
        for name, (p, y) in val_and_test(run_dir, temperature=False).items():
            p = p.clamp(1e-6, 1 - 1e-6)
            logits[name], targets[name] = torch.log(p / (1 - p)).double(), y.double()
        one = fit_temperature(logits["val"], targets["val"], MULTI_LABEL)
        per_tag = torch.tensor(
            [
                fit_temperature(
                    logits["val"][:, k : k + 1].repeat(1, 2), targets["val"][:, k : k + 1].repeat(1, 2), MULTI_LABEL
                )
                for k in range(targets["val"].shape[1])
            ],
            dtype=torch.float64,
        )
        nll, ece = [], []
        for t in (torch.tensor(1.0, dtype=torch.float64), torch.tensor(one, dtype=torch.float64), per_tag):
            scaled = logits["test"] / t
            nll.append(float(MULTI_LABEL.nll(scaled, targets["test"])))
            ece.append(expected_calibration_error(scaled.sigmoid(), targets["test"], task=MULTI_LABEL))
        print_row(f"{run_dir.name} (T {one:.2f})", nll, ece)


def thresholds(run_dirs: list[Path]) -> None:
    """Test micro-/macro-F1 at 0.5, at one threshold for all tags and at one per tag, both chosen on val for F1."""
    from headstart.tasks.tag_metrics import choose_thresholds, tag_scores

    rules = "0.5 / one for all / " + " / ".join(f"per tag, prior {p:g}" for p in PRIORS)
    print(f"| run | test micro-F1: {rules} | test macro-F1: {rules} |")
    print("|---|---|---|")
    for run_dir in run_dirs:
        scored = {name: (p.numpy(), y.numpy()) for name, (p, y) in val_and_test(run_dir).items()}
        val_p, val_y = scored["val"]
        flat = choose_thresholds(val_p, val_y, prior=1e9)[0]  # one cut for every (image, tag)
        rules = [0.5, np.full(val_p.shape[1], flat)] + [choose_thresholds(val_p, val_y, prior) for prior in PRIORS]
        results = [tag_scores(*scored["test"], rule) for rule in rules]
        print_row(
            f"{run_dir.name} (one cut {flat:.2f})", [r["f1_micro"] for r in results], [r["f1_macro"] for r in results]
        )


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| data | variant | runs | test mAP | test micro-F1 | test macro-F1 | test exact match |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted({(r["data"], r["variant"]) for r in rows}):
        group = [r for r in rows if (r["data"], r["variant"]) == key]
        cells = []
        for metric in ("map", "f1_micro", "f1_macro", "exact_match"):
            values = [r[metric] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {key[0]} | {key[1]} | {len(group)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--variants", default="probe,default,asymmetric")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/headstart-multi-label"))
    parser.add_argument("--out", type=Path, default=Path("multi_label.jsonl"))
    parser.add_argument("--table", type=Path)
    parser.add_argument(
        "--calibration", type=Path, nargs="+", help="run folders: compare one temperature with one per tag"
    )
    parser.add_argument("--thresholds", type=Path, nargs="+", help="run folders: compare threshold rules")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    if args.calibration:
        calibration(args.calibration)
        return
    if args.thresholds:
        thresholds(args.thresholds)
        return
    for data in args.data:
        csv_path = build(data, args.work)
        for seed in map(int, args.seeds.split(",")):
            for variant in args.variants.split(","):
                record = run(csv_path, variant, seed, args.work / "runs")
                print(json.dumps(record), flush=True)
                with args.out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
