"""Which out-of-distribution score tells a run's own images from foreign ones (issue 21, "None of these").

For each data set: train the default recipe (`headstart.train`, data.test_fraction 0.2 where the
folder is one pool of class folders, so some own images are neither trained on nor used for the
threshold), then take the penultimate features (the input of the head's last Linear) and the
logits of the run's train, val and test images and of foreign images:

    other     up to 200 images from the other data sets given (an even share of each)
    noise     50 images of uniform RGB noise
    flat      50 images of one random colour each
    photos    40 random crops of scikit-learn's two sample photos (china, flower): held out,
              not used to choose the method
    digits    50 of scikit-learn's 8x8 handwritten digits, enlarged: held out too

Each method's threshold is the ceil((n + 1) * 0.95)-th smallest of its n val scores (what training
fits, headstart.tasks.unknown.threshold_for). Printed per
method: the val flagged rate (5-fold: threshold from four folds, counted on the fifth), the test
flagged rate, the flagged rate of each foreign group, and the AUROC of own (val + test) vs foreign.

Usage:
    python benchmarks/unknown.py --out /tmp/unknown-bench DATA [DATA ...]   (trained runs are reused)
    python benchmarks/unknown.py --table /tmp/unknown-bench/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.covariance import ledoit_wolf
from sklearn.datasets import load_digits, load_sample_images
from sklearn.metrics import roc_auc_score

import headstart
from headstart.core.checkpoint import load_checkpoint
from headstart.data.images import build_transforms, decode_all, short_side_for
from headstart.data.layouts import list_images
from headstart.model.build import model_from_checkpoint
from headstart.tasks.unknown import fit_unknown, threshold_for

FOREIGN_OTHER = 200


# ----------------------------------------------------------------------------- images


def generated(kind: str, count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(count)]
    if kind == "flat":
        return [Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(count)]
    if kind == "photos":
        photos = [Image.fromarray(a) for a in load_sample_images().images]
        crops = []
        for i in range(count):
            photo = photos[i % len(photos)]
            side = int(rng.integers(120, min(photo.size)))
            x, y = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
            crops.append(photo.crop((x, y, x + side, y + side)))
        return crops
    digits = load_digits().images[:count]  # 0..16 grey levels
    return [Image.fromarray((d * 255 / 16).astype(np.uint8)).convert("RGB").resize((256, 256)) for d in digits]


def other_images(data: Path, others: list[Path], count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    share = count // max(1, len(others))
    picked: list[Path] = []
    for other in others:
        files = sorted(p for p in other.rglob("*") if p.is_file() and not p.name.startswith("."))
        picked += [files[i] for i in rng.choice(len(files), min(share, len(files)), replace=False)]
    return picked


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def features_and_logits(model, transform, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (the head's last Linear's input) and logits, in batches of 32."""
    feats, logits = [], []
    for start in range(0, len(images), 32):
        batch = torch.stack([transform(image.convert("RGB")) for image in images[start : start + 32]])
        penultimate = model.head[:-1](model.features(batch))
        feats.append(penultimate.numpy())
        logits.append(model.head[-1](penultimate).numpy())
    return np.concatenate(feats), np.concatenate(logits)


def decoded(paths: list[Path], preprocessing: dict) -> list[Image.Image]:
    arrays, _, bad = decode_all([(p, 0) for p in paths], short_side_for(preprocessing), "bicubic", 2)
    if bad:
        print(f"  skipped {len(bad)} unreadable files")
    return [Image.fromarray(a) for a in arrays]


# ----------------------------------------------------------------------------- scores (higher: more foreign)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mahalanobis(train: np.ndarray, labels: np.ndarray, normalise: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Min over classes of the squared Mahalanobis distance; class means, shared covariance with Ledoit-Wolf shrinkage."""
    train = normalised(train) if normalise else train
    means = np.stack([train[labels == c].mean(0) for c in np.unique(labels)])
    centred = train - means[np.searchsorted(np.unique(labels), labels)]
    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    precision = np.linalg.inv(covariance)

    def score(x: np.ndarray) -> np.ndarray:
        x = normalised(x) if normalise else x
        d = x[:, None, :] - means[None]
        return np.einsum("ncd,de,nce->nc", d, precision, d).min(1)

    return score


def knn(train: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """1 - cosine similarity to the k-th nearest training feature (Sun et al. 2022)."""
    bank = normalised(train)

    def score(x: np.ndarray) -> np.ndarray:
        similarity = normalised(x) @ bank.T
        return 1 - np.sort(similarity, axis=1)[:, -k]

    return score


def energy(logits: np.ndarray) -> np.ndarray:
    top = logits.max(1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(1)))


def max_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return 1 - (e / e.sum(1, keepdims=True)).max(1)


def threshold(val: np.ndarray) -> float:
    """What headstart uses: the ⌈(n + 1) · 0.95⌉-th smallest val score (headstart.tasks.unknown.threshold_for)."""
    return threshold_for(torch.from_numpy(np.asarray(val, dtype=np.float64)))


def heldout_val_rate(val: np.ndarray, folds: int = 5) -> float:
    """Flagged rate on val when each fold's threshold comes from the other folds."""
    order = np.random.default_rng(0).permutation(len(val))
    flagged = 0
    for held in np.array_split(order, folds):
        rest = np.setdiff1d(order, held)
        flagged += int((val[held] > threshold(val[rest])).sum())
    return flagged / len(val)


# ----------------------------------------------------------------------------- one data set


def train_run(data: Path, out: Path) -> Path:
    run = out / data.name
    if (run / "best.pt").is_file():
        return run
    split_folders = (data / "train").is_dir()
    recipe = {
        "data": {"path": str(data), "test_fraction": 0.0 if split_folders else 0.2},
        "run": {"out_dir": str(out), "name": data.name},
    }
    return headstart.train(recipe, quiet=True).run_dir


def measure(data: Path, others: list[Path], out: Path) -> dict:
    run = train_run(data, out)
    checkpoint = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(checkpoint)
    preprocessing = checkpoint.preprocessing
    _, transform = build_transforms(preprocessing, "none")
    split = list_images(headstart.Recipe.from_dict(checkpoint.recipe).data)
    groups: dict[str, list[Image.Image]] = {
        "train": decoded([p for p, _ in split.train], preprocessing),
        "val": decoded([p for p, _ in split.val], preprocessing),
        "test": decoded([p for p, _ in split.test], preprocessing),
        "other": decoded(other_images(data, others, FOREIGN_OTHER, 0), preprocessing),
        "noise": generated("noise", 50, 1),
        "flat": generated("flat", 50, 2),
        "photos": generated("photos", 40, 3),
        "digits": generated("digits", 50, 4),
    }
    computed = {name: features_and_logits(model, transform, images) for name, images in groups.items() if images}
    train_labels = np.array([label for _, label in split.train])
    train_feats = computed["train"][0]
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
    maha, maha_n = mahalanobis(train_feats, train_labels, False), mahalanobis(train_feats, train_labels, True)
    knn10, knn1 = knn(train_feats, min(10, len(train_feats))), knn(train_feats, 1)
    methods["mahalanobis"] = lambda f, _: maha(f)
    methods["mahalanobis-l2"] = lambda f, _: maha_n(f)
    methods["knn10"] = lambda f, _: knn10(f)
    methods["knn1"] = lambda f, _: knn1(f)
    # What headstart ships (headstart.tasks.unknown): mahalanobis-l2 with a ridge, in float64, in torch.
    shipped = fit_unknown(
        torch.from_numpy(train_feats), torch.from_numpy(train_labels), torch.from_numpy(computed["val"][0])
    )
    methods["headstart"] = lambda f, _: shipped.score(torch.from_numpy(f)).numpy()
    methods["energy"] = lambda _, logit: energy(logit)
    methods["max-softmax"] = lambda _, logit: max_softmax(logit)
    row: dict = {"data": data.name, "classes": len(split.classes), "acc_val": None, "methods": {}}
    val_logits = computed["val"][1]
    row["acc_val"] = float((val_logits.argmax(1) == np.array([label for _, label in split.val])).mean())
    for name, method in methods.items():
        scores = {group: method(*fl) for group, fl in computed.items()}
        cut = threshold(scores["val"])
        own = np.concatenate([scores["val"]] + ([scores["test"]] if "test" in scores else []))
        foreign_main = np.concatenate([scores[g] for g in ("other", "noise", "flat")])
        foreign_all = np.concatenate([scores[g] for g in ("other", "noise", "flat", "photos", "digits")])
        result = {
            "val": heldout_val_rate(scores["val"]),
            "test": float((scores["test"] > cut).mean()) if "test" in scores else None,
            **{g: float((scores[g] > cut).mean()) for g in ("other", "noise", "flat", "photos", "digits")},
            "foreign": float((foreign_main > cut).mean()),
            "auroc": float(
                roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(foreign_main))], np.r_[own, foreign_main])
            ),
            "auroc_all": float(
                roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(foreign_all))], np.r_[own, foreign_all])
            ),
        }
        row["methods"][name] = result
    return row


# ----------------------------------------------------------------------------- table

COLUMNS = ("val", "test", "other", "noise", "flat", "foreign", "auroc", "photos", "digits", "auroc_all")


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [
        "| data | method | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    methods = list(rows[0]["methods"])
    for row in rows:
        for method in methods:
            values = row["methods"][method]
            lines.append(f"| {row['data']} | {method} | " + " | ".join(cell(values[c]) for c in COLUMNS) + " |")
    lines.append("")
    lines.append("| method (mean of the sets) | " + " | ".join(COLUMNS) + " |")
    lines.append("|---|" + "---|" * len(COLUMNS))
    for method in methods:
        means = []
        for column in COLUMNS:
            values = [row["methods"][method][column] for row in rows if row["methods"][method][column] is not None]
            means.append(statistics.mean(values) if values else None)
        lines.append(f"| {method} | " + " | ".join(cell(v) for v in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/unknown-bench"))
    parser.add_argument("--table", type=Path, help="print the table of a results.jsonl and stop")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.data:
        print(f"{data.name}: training and scoring", flush=True)
        row = measure(data, [d for d in args.data if d != data], args.out)
        rows.append(row)
        with (args.out / "results.jsonl").open("a") as results:
            results.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
