"""Image folders: DATA/<split>/<class>/* (split folders) or DATA/<class>/* (class folders, split here).

Split folder names are matched case-insensitively: train|training, val|valid|validation|dev,
test|testing|eval; any subset with a train split. Without val, val is split from train (stratified,
seeded, val_fraction); test is kept as given. Class folders: val (and, with test_fraction, test)
are split here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.splits import (
    SPLIT_NAMES,
    SPLITS,
    DataSplit,
    carve,
    check_classes,
    list_class_folders,
    merge_splits,
    split_here,
    subfolders,
)


def is_folder(path: Path) -> bool:
    return path.is_dir()


def folder_name(root: Path) -> str:
    """The data's name, as runs are named after it: '.' or 'photos/..' is named by the folder it is."""
    return Path(os.path.abspath(root)).name


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
        return merge_splits(split_here(by_class, cfg), {}, folder_name(root), layout, root)
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
    return merge_splits(splits, where, folder_name(root), layout, root)
