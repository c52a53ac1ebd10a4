"""Which images are train, val and test: the layouts a data source may have, read into a DataSplit.

Accepted layouts (split folder names are matched case-insensitively):
    DATA/<split>/<class>/*     split folders: train|training, val|valid|validation|dev, test|testing|eval;
                               any subset with a train split. Without val, val is split from train
                               (stratified, seeded, val_fraction); test is kept as given.
    DATA/<class>/*             class folders: val (and, with test_fraction, test) split here
    FILE.csv                   columns path,label[,split]; paths relative to the CSV's folder;
                               rows without a split are split as class folders are
The listing is the public API other commands build on: list_images(cfg) -> DataSplit.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component, user_path

log = logging.getLogger("headstart")

Sample = tuple[Path, int]

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
    """The listed images of a data set: (path, label index) pairs per split, and how they were found.

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

    @property
    def held_out(self) -> tuple[str, list[Sample]]:
        """The split that scores a finished model honestly: test if there is one, else val."""
        return ("test", self.test) if self.test else ("val", self.val)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(getattr(self, s)):,}" for s in SPLITS if s != "test" or self.test)
        return f"layout: {self.layout} \u2192 {sizes}"


# ----------------------------------------------------------------------------- files and folders


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


def check_classes(found: dict[str, list[Path]], where: str) -> None:
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


# ----------------------------------------------------------------------------- folders


def split_folders(root: Path) -> dict[str, str]:
    """Split -> folder name when the top level holds split folders; {} for a class-folder tree.

    A top level mixing split names with other folders, or naming one split twice, is an error.
    """
    names = subfolders(root)
    splits = [n for n in names if n.lower() in SPLIT_NAMES]
    if not splits:
        return {}
    others = [n for n in names if n.lower() not in SPLIT_NAMES]
    if others:
        raise HeadstartError(
            f"{root} mixes split folders ({', '.join(splits)}) with other folders ({', '.join(others[:5])}); "
            "use DATA/<split>/<class>/ (splits: train, val, test) or DATA/<class>/, not both"
        )
    found: dict[str, str] = {}
    for name in splits:
        kind = SPLIT_NAMES[name.lower()]
        if kind in found:
            raise HeadstartError(f"{root} has two {kind} split folders ({found[kind]}, {name}); keep one")
        found[kind] = name
    if "train" not in found:
        raise HeadstartError(
            f"{root} has split folder(s) {', '.join(splits)} but no train split; add train/ (or training/)"
        )
    return found


def read_split_folder(folder: Path) -> dict[str, list[Path]]:
    found = list_class_folders(folder)
    nested = [name for name in found if name.lower() in SPLIT_NAMES]
    if nested:
        raise HeadstartError(
            f"{folder} has a class folder named like a split ({', '.join(nested)}); "
            "a split folder holds class folders: DATA/<split>/<class>/<image>"
        )
    if not any(found.values()):
        raise HeadstartError(f"split folder {folder} holds no images; it needs <class>/<image> inside")
    return found


def list_folder(root: Path, cfg: DataConfig) -> DataSplit:
    found = split_folders(root)
    if not found:
        by_class = list_class_folders(root)
        check_classes(by_class, str(root))
        carved = f"val {cfg.val_fraction:g}" + (f", test {cfg.test_fraction:g}" if cfg.test_fraction else "")
        layout = f"class folders, split here ({carved} per class, seed {cfg.split_seed})"
        return merge_splits(split_here(by_class, cfg), {}, root.name, layout, root)
    splits = {kind: read_split_folder(root / name) for kind, name in found.items()}
    check_classes(splits["train"], str(root / found["train"]))
    where = {kind: str(root / name) for kind, name in found.items()}
    layout = " ".join(f"{found[s]}/" for s in SPLITS if s in found)
    if "val" not in found:
        train, val = carve(splits["train"], cfg.val_fraction, np.random.default_rng(cfg.split_seed))
        splits["train"], splits["val"] = train, val
        layout += f" (val {cfg.val_fraction:g} of {found['train']}/)"
    elif cfg.test_fraction and "test" not in found:
        raise HeadstartError(
            f"data.test_fraction carves a test split from class folders; {root} already gives its splits: "
            "add a test/ folder instead, or set test_fraction to 0"
        )
    return merge_splits(splits, where, root.name, layout, root)


# ----------------------------------------------------------------------------- CSV


def read_csv_rows(path: Path) -> list[list[str]]:
    """Rows of a CSV; utf-8-sig drops the byte-order mark Excel's "CSV UTF-8" writes before the header."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError as err:
        raise HeadstartError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.object[err.start : err.start + 1]!r}); "
            "save it as UTF-8 (Excel: 'CSV UTF-8')"
        ) from None
    except csv.Error as err:
        raise HeadstartError(f"{path}: not a readable CSV ({err})") from None


def csv_columns(rows: list[list[str]]) -> tuple[dict[str, int], int]:
    """Column positions of path, label and split, and the first data row (1 after a header)."""
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "path" in header and "label" in header:
        return {c: header.index(c) for c in ("path", "label", "split") if c in header}, 1
    return {"path": 0, "label": 1, "split": 2}, 0


def read_csv(path: Path) -> tuple[dict[str, dict[str, list[Path]]], bool]:
    """split -> class -> files ('' holds rows without a split), and whether any row named a split.

    A row repeated exactly is kept once, with a warning (it would land in train and val both);
    the same image under two labels is an error.
    """
    rows = read_csv_rows(path)
    columns, first = csv_columns(rows)
    seen: dict[Path, tuple[str, str, int]] = {}
    duplicates = 0
    for number, row in enumerate(rows[first:], start=first + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns["path"], columns["label"]):
            raise HeadstartError(f"{path}, line {number}: expected 'path,label[,split]', got {','.join(row)!r}")
        image = Path(row[columns["path"]].strip())
        image = image if image.is_absolute() else path.parent / image
        label = safe_component(row[columns["label"]].strip(), f"{path}, line {number}: label")
        given = row[columns["split"]].strip() if "split" in columns and len(row) > columns["split"] else ""
        split = SPLIT_NAMES.get(given.lower(), "?") if given else ""
        if split == "?":
            raise HeadstartError(
                f"{path}, line {number}: split {given!r} is not one of train, val, test "
                f"(or {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)})"
            )
        if image in seen:
            if seen[image][:2] != (label, split):
                raise HeadstartError(
                    f"{path}, line {number}: {image.name} is listed again with another label or split "
                    f"(line {seen[image][2]}: {seen[image][0]}); list each image once"
                )
            duplicates += 1
            continue
        seen[image] = (label, split, number)
    if duplicates:
        log.warning(
            "%s lists %d row(s) twice; each image is used once (a repeat could land in train and val)", path, duplicates
        )
    splits: dict[str, dict[str, list[Path]]] = {}
    for image, (label, split, _) in seen.items():
        splits.setdefault(split, {}).setdefault(label, []).append(image)
    return splits, any(split for _, split, _ in seen.values())


def list_csv(path: Path, cfg: DataConfig) -> DataSplit:
    if not path.is_file():
        raise HeadstartError(f"CSV file not found: {path}")
    by_split, named = read_csv(path)
    unsplit = by_split.pop("", {})
    if not named:
        check_classes(unsplit, str(path))
        layout = f"CSV path,label, split here (val {cfg.val_fraction:g}" + (
            f", test {cfg.test_fraction:g})" if cfg.test_fraction else ")"
        )
        return merge_splits(split_here(unsplit, cfg), {}, path.stem, layout, path)
    if unsplit:
        raise HeadstartError(
            f"{path}: {sum(map(len, unsplit.values()))} row(s) have no split while others do; give every row one"
        )
    if "train" not in by_split:
        raise HeadstartError(f"{path}: no row has split 'train'; a split column needs train rows")
    check_classes(by_split["train"], f"{path} (train rows)")
    layout = "CSV path,label,split"
    where = {split: f"{path} ({split} rows)" for split in by_split}
    if "val" not in by_split:
        by_split["train"], by_split["val"] = carve(
            by_split["train"], cfg.val_fraction, np.random.default_rng(cfg.split_seed)
        )
        layout += f" (val {cfg.val_fraction:g} of train rows)"
    return merge_splits(by_split, where, path.stem, layout, path)


# ----------------------------------------------------------------------------- entry point


def data_root(cfg: DataConfig) -> Path:
    """The folder or CSV a recipe's data path names, with the built-in sources written to the cache first."""
    from headstart.data.datasets import CIFAR, cifar_folder, cifar_kind, digits_folder, download_cifar

    if cfg.path is None:
        return digits_folder()
    if cfg.path in CIFAR:
        return cifar_folder(download_cifar(cfg.path))
    root = user_path(cfg.path)
    if root.is_dir() and cifar_kind(root):
        return cifar_folder(root)
    return root


def list_images(cfg: DataConfig) -> DataSplit:
    """List and split the images named by the recipe (see the module docstring for layouts)."""
    root = data_root(cfg)
    if root.suffix.lower() == ".csv":
        return list_csv(root, cfg)
    if not root.is_dir():
        raise HeadstartError(f"data folder not found: {root}")
    return list_folder(root, cfg)
