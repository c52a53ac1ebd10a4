"""A data set's listed images (DataSplit) and the helpers every layout shares: class folders, carving val and test.

Each layout (folder_layout.py, csv_layout.py, ...) reads its source into split -> class -> files and
hands it to `merge_splits`, which checks the classes and labels the files into a DataSplit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError

log = logging.getLogger("headstart")

# A class index, or for a multi-label data set the sorted indices of the image's tags (empty: none).
Label = int | tuple[int, ...]
Sample = tuple[Path, Label]
SINGLE, MULTI = "single-label", "multi-label"

# Folder name (lower case) -> the split it holds. Export tools name them differently:
# Roboflow/Kaggle/Ultralytics train/valid/test, Hugging Face train/validation/test, others Training/Testing.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "eval": "test",
}
SPLITS = ("train", "val", "test")


@dataclass
class DataSplit:
    """The listed images of a data set: (path, label) pairs per split, and how they were found.

    `task` says what a label is: a class index (single-label) or a tuple of tag indices (multi-label).
    `layout` is the one line the log prints (`layout: train/ valid/ test/ -> train 1,800, val 200, test 2,000`);
    `root` is the folder or CSV the images came from (None for in-memory sources).
    """

    name: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    layout: str = ""
    root: Path | None = None
    task: str = SINGLE

    @property
    def held_out(self) -> tuple[str, list[Sample]]:
        """The split that scores a finished model honestly: test if there is one, else val."""
        return ("test", self.test) if self.test else ("val", self.val)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(getattr(self, s)):,}" for s in SPLITS if s != "test" or self.test)
        return f"layout: {self.layout} \u2192 {sizes}"


def label_counts(labels: Sequence[Label], n_classes: int) -> np.ndarray:
    """Images per class: of that class (single-label) or carrying that tag (multi-label)."""
    if any(isinstance(label, tuple) for label in labels):
        labels = [k for label in labels for k in (label if isinstance(label, tuple) else (label,))]
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def label_tensor(labels: list[Label], n_classes: int, task: str) -> torch.Tensor:
    """What the loss compares outputs with: class indices, or rows of 0/1 per tag (multi-label)."""
    if task == SINGLE:
        return torch.tensor(labels, dtype=torch.long)
    hot = torch.zeros(len(labels), n_classes)
    for row, label in enumerate(labels):
        hot[row, list(label) if isinstance(label, tuple) else [label]] = 1.0
    return hot


def csv_image_and_split(row: list[str], columns: dict[str, int], where: Path, number: int) -> tuple[Path, str]:
    """A CSV row's image (relative to the CSV's folder) and split ('' when the row names none)."""
    image = Path(row[columns["path"]].strip())
    at = columns.get("split")
    given = row[at].strip() if at is not None and len(row) > at else ""
    split = SPLIT_NAMES.get(given.lower(), "?") if given else ""
    if split == "?":
        raise HeadstartError(
            f"{where}, line {number}: split {given!r} is not one of train, val, test "
            f"(or {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)})"
        )
    return (image if image.is_absolute() else where.parent / image), split


class ListedOnce:
    """A CSV's rows by image: a row repeated exactly is kept once (one warning for all), one that differs is an error.

    `what` names the value in messages ("label", "tags"); a repeat could otherwise land in train and val.
    """

    def __init__(self, where: Path, what: str):
        self.where, self.what = where, what
        self.rows: dict[Path, tuple[Any, str, int]] = {}  # image -> (value, split, line)
        self.repeats = 0

    def add(self, image: Path, value: Any, split: str, number: int) -> None:
        if image in self.rows:
            if self.rows[image][:2] != (value, split):
                raise HeadstartError(
                    f"{self.where}, line {number}: {image.name} is listed again with another {self.what} or split "
                    f"(line {self.rows[image][2]}: {self.rows[image][0]}); list each image once"
                )
            self.repeats += 1
            return
        self.rows[image] = (value, split, number)

    def warn_repeats(self) -> None:
        if self.repeats:
            log.warning(
                "%s lists %d row(s) twice; each image is used once (a repeat could land in train and val)",
                self.where,
                self.repeats,
            )


# ----------------------------------------------------------------------------- class folders


def regular_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` (sorted, hidden names skipped), without following symlinked folders.

    Only regular files (or symlinks to them): opening a FIFO or a device would block or read forever.
    DirEntry answers from the directory listing itself, so this costs no stat per file on Linux.
    """
    files, pending = [], [folder]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif _is_regular(entry):
                files.append(Path(entry.path))
    return sorted(files)


def _is_regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows a symlink; False for FIFOs, sockets, devices and dangling links
    except OSError:  # a symlink loop
        return False


def subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_class_folders(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise HeadstartError(f"data folder not found: {root}")
    return {name: regular_files(root / name) for name in subfolders(root)}


def check_classes(found: dict[str, list[Path]], where: str, csv: bool = False) -> None:
    """At least two classes, none empty; `csv`: the classes are a CSV's labels, not folders."""
    if len(found) < 2 and csv:
        raise HeadstartError(
            f"{where} labels {len(found)} class(es){' (' + ', '.join(found) + ')' if found else ''}; need at least 2 "
            "(rows with an empty label are not labelled yet and are left out)"
        )
    if len(found) < 2:
        raise HeadstartError(
            f"{where} has {len(found)} class folder(s){' (' + ', '.join(found) + ')' if found else ''}; "
            "need at least 2: DATA/<class>/<image> or DATA/train/<class>/<image> (+ val/, test/)"
        )
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise HeadstartError(f"{where}: class folder '{empty[0]}' has no files ({len(empty)} empty class folder(s))")


# ----------------------------------------------------------------------------- splitting


def carve(by_class: dict[str, list[Path]], fraction: float, rng: np.random.Generator):
    """Per class (sorted), a shuffle puts round(n * fraction) files (at least 1, at most n - 1, where n >= 2) aside.

    A class of one file keeps it: train needs every class, the split it would go to can do without.
    Returns (kept, carved), both class -> files.
    """
    kept, carved = {}, {}
    for name in sorted(by_class):
        files = sorted(by_class[name])
        order = rng.permutation(len(files))
        n = min(len(files) - 1, max(1, round(len(files) * fraction))) if len(files) >= 2 else 0
        carved[name] = [files[i] for i in order[:n]]
        kept[name] = [files[i] for i in order[n:]]
    return kept, carved


def labelled(by_class: dict[str, list[Path]], classes: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    return [(path, index[name]) for name in sorted(by_class) for path in by_class[name]]


def stratified_split(
    by_class: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded shuffle puts round(n * val_fraction) images (at least 1, at most n - 1) in val."""
    classes = sorted(by_class)
    kept, carved = carve(by_class, val_fraction, np.random.default_rng(seed))
    return labelled(kept, classes), labelled(carved, classes)


def split_here(by_class: dict[str, list[Path]], cfg: DataConfig) -> dict[str, dict[str, list[Path]]]:
    """Train/val (and test with test_fraction) from one pool of class -> files, stratified and seeded.

    Val is carved exactly as before test splits existed, so runs without test_fraction keep their splits;
    test comes out of what is left, from its own seeded stream.
    """
    train, val = carve(by_class, cfg.val_fraction, np.random.default_rng(cfg.split_seed))
    test: dict[str, list[Path]] = {}
    if cfg.test_fraction:
        train, test = carve(train, cfg.test_fraction, np.random.default_rng([cfg.split_seed, 1]))
    return {"train": train, "val": val, "test": test}


def merge_splits(
    splits: dict[str, dict[str, list[Path]]], where: dict[str, str], name: str, layout: str, root: Path
) -> DataSplit:
    """Check every split's classes against train's and label them; splits not in `where` were carved here."""
    classes = sorted(c for c, files in splits["train"].items() if files)
    carved = {s: f"the {s} split carved from {root}" for s in ("val", "test") if s not in where}
    where = {**carved, **where}
    if not any(splits["val"].values()):
        sizes = ", ".join(f"{c} {len(splits['train'][c])}" for c in classes[:5])
        raise HeadstartError(
            f"{where['val']} is empty: no class has the 2 images it takes to give val one ({sizes}); "
            "add images or give a val/ folder"
        )
    for split in ("val", "test"):
        present = {c for c, files in splits.get(split, {}).items() if files}
        if not splits.get(split):
            continue
        extra = sorted(present - set(classes))
        if extra:
            raise HeadstartError(
                f"{where[split]} has class '{extra[0]}' that the train split lacks; train classes: {', '.join(classes)}"
            )
        missing = sorted(set(classes) - present)
        if missing:
            # Carving leaves a class of one image (two, with a test split too) wholly in train.
            few = f" (too few images: {2 if split == 'val' else 3} per class to reach it)" if split in carved else ""
            log.warning(
                "%s lacks class(es) %s that train has%s: their %s metrics are undefined",
                where[split],
                ", ".join(missing),
                few,
                split,
            )
    samples = {split: labelled(splits.get(split, {}), classes) for split in SPLITS}
    return DataSplit(name, classes, samples["train"], samples["val"], samples["test"], layout=layout, root=root)
