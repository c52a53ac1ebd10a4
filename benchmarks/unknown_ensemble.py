"""Unknown images from a `--budget` ensemble: its averaged detector against its own Lite0 member's.

For each data set, `headstart train DATA --budget 20m` with the [lite] extra installed (Lite0, Lite1
and Lite2: an ensemble), a held-out test split as in benchmarks/defaults.py (0.2 of a pool of
class folders; hymenoptera's val/ folder). Then the ensemble folder and its Lite0 member
(`members/tf_efficientnet_lite0`, an ordinary run trained by the same recipe) each predict the
run's test images (known, never used for a threshold) and the foreign images of
benchmarks/unknown.py: other (200 images from the other sets given), noise, flat, photos, digits.
Printed per model: the share of test images flagged, the share of each foreign group flagged, and
the AUROC of the unknown score, test against all foreign images.

    python benchmarks/unknown_ensemble.py --out /tmp/unknown-ensemble DATA [DATA ...]   (runs are reused)
    python benchmarks/unknown_ensemble.py --table /tmp/unknown-ensemble/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import data_path  # noqa: E402  # the same test splits as the default recipe's benchmark
from unknown import FOREIGN_OTHER, generated, other_images  # noqa: E402  # the same foreign images

import headstart  # noqa: E402
from headstart.config.recipe import Recipe  # noqa: E402
from headstart.data.layouts import list_images  # noqa: E402

GROUPS = {"noise": 50, "flat": 50, "photos": 40, "digits": 50}


def ensemble_run(data: Path, out: Path) -> tuple[Path, Recipe]:
    path, test_fraction = data_path(str(data), out)
    recipe = Recipe.from_dict(
        {
            "data": {"path": path, "test_fraction": test_fraction},
            "run": {"budget": "20m", "seed": 0, "out_dir": str(out / "runs"), "name": f"{data.name}-ensemble"},
        }
    )
    run = out / "runs" / f"{data.name}-ensemble"
    if not (run / "ensemble.json").is_file():
        run = headstart.train(recipe, quiet=True).run_dir
    if not (run / "ensemble.json").is_file():
        raise SystemExit(f"{data}: --budget 20m planned one model, not an ensemble; install the [lite] extra")
    return run, recipe


def flagged(model: Path, images: list) -> tuple[np.ndarray, np.ndarray]:
    """(unknown flags, unknown scores) of `model`'s predictions for `images`."""
    predictions = headstart.load(model).predict(images, top_k=1)
    return np.array([p.unknown for p in predictions]), np.array([p.unknown_score for p in predictions])


def measure(data: Path, others: list[Path], out: Path) -> list[dict]:
    run, recipe = ensemble_run(data, out)
    test = [path for path, _ in list_images(recipe.data).test]
    foreign = {"other": other_images(data, others, FOREIGN_OTHER, 0)}
    foreign |= {kind: generated(kind, count, 1) for kind, count in GROUPS.items()}
    rows = []
    for name, model in (("ensemble", run), ("its lite0 member", run / "members" / "tf_efficientnet_lite0")):
        own_flags, own_scores = flagged(model, test)
        row = {"data": data.name, "model": name, "test_images": len(test), "test_flagged": float(own_flags.mean())}
        all_scores = []
        for kind, images in foreign.items():
            flags, scores = flagged(model, images)
            row[f"{kind}_flagged"] = float(flags.mean())
            all_scores.append(scores)
        foreign_scores = np.concatenate(all_scores)
        truth = np.r_[np.zeros(len(own_scores)), np.ones(len(foreign_scores))]
        row["auroc"] = float(roc_auc_score(truth, np.r_[own_scores, foreign_scores]))
        rows.append(row)
    return rows


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kinds = ["other", *GROUPS]
    print("| data | model | test flagged | " + " | ".join(f"{k} flagged" for k in kinds) + " | AUROC |")
    print("|---|---|---|" + "---|" * len(kinds) + "---|")
    for row in rows:
        shares = " | ".join(f"{row[f'{k}_flagged']:.1%}" for k in kinds)
        print(f"| {row['data']} | {row['model']} | {row['test_flagged']:.1%} | {shares} | {row['auroc']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("unknown-ensemble"))
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    data = [d.resolve() for d in args.data]
    for one in data:
        for row in measure(one, [d for d in data if d != one], args.out):
            print(json.dumps(row), flush=True)
            with (args.out / "results.jsonl").open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
