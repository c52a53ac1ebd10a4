"""A CSV of path,label[,split]: paths relative to the CSV's folder; rows without a split are split as class folders are.

A CSV with several tags per image (a labels column, or one 0/1 column per label) is tags_csv's.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component, user_path
from headstart.data import tags_csv
from headstart.data.splits import (
    SINGLE,
    DataSplit,
    ListedOnce,
    carve,
    check_classes,
    csv_image_and_split,
    merge_splits,
    split_here,
)

log = logging.getLogger("headstart")


def is_csv(path: Path) -> bool:
    """By name: a missing FILE.csv is the CSV layout's own error ('CSV file not found'), not 'folder not found'."""
    return path.suffix.lower() == ".csv"


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


def read_csv(path: Path, rows: list[list[str]]) -> tuple[dict[str, dict[str, list[Path]]], bool]:
    """split -> class -> files ('' holds rows without a split), and whether any row named a split.

    A row repeated exactly is kept once, with a warning (it would land in train and val both);
    the same image under two labels is an error.
    """
    columns, first = csv_columns(rows)
    seen = ListedOnce(path, "label")
    unlabelled = 0
    for number, row in enumerate(rows[first:], start=first + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns["path"], columns["label"]):
            raise HeadstartError(f"{path}, line {number}: expected 'path,label[,split]', got {','.join(row)!r}")
        if first and row[columns["path"]].strip() and not row[columns["label"]].strip():
            unlabelled += 1  # a to_label.csv (headstart suggest) not filled in to the end
            continue
        image, split = csv_image_and_split(row, columns, path, number)
        label = safe_component(row[columns["label"]].strip(), f"{path}, line {number}: label")
        seen.add(image, label, split, number)
    seen.warn_repeats()
    if unlabelled:
        log.info("%s: %d row(s) have no label yet: left out", path, unlabelled)
    splits: dict[str, dict[str, list[Path]]] = {}
    for image, (label, split, _) in seen.rows.items():
        splits.setdefault(split, {}).setdefault(label, []).append(image)
    return splits, any(split for _, split, _ in seen.rows.values())


def list_csv(path: Path, cfg: DataConfig) -> DataSplit:
    if not path.is_file():
        raise HeadstartError(f"CSV file not found: {path}")
    rows = read_csv_rows(path)
    form = tags_csv.detect(rows, cfg, path)
    if form is not None:
        return tags_csv.list_tags(path, rows, form, cfg)
    by_split, named = read_csv(path, rows)
    unsplit = by_split.pop("", {})
    if not named:
        check_classes(unsplit, str(path), csv=True)
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
    check_classes(by_split["train"], f"{path} (train rows)", csv=True)
    layout = "CSV path,label,split"
    where = {split: f"{path} ({split} rows)" for split in by_split}
    if "val" not in by_split:
        by_split["train"], by_split["val"] = carve(
            by_split["train"], cfg.val_fraction, np.random.default_rng(cfg.split_seed)
        )
        layout += f" (val {cfg.val_fraction:g} of train rows)"
    return merge_splits(by_split, where, path.stem, layout, path)


def with_added_labels(split: DataSplit, csv_files: list[str]) -> DataSplit:
    """Add the rows of more path,label CSVs (suggest's to_label.csv, filled in) to the train split.

    A label that is not one of the data's classes is an error (the sheet came from other data); an
    image the splits already list keeps its place and its label there.
    """
    if not csv_files:
        return split
    if split.task != SINGLE:
        raise HeadstartError("data.add_labeled adds single-label rows; this data set is multi-label")
    listed = {path.resolve() for samples in (split.train, split.val, split.test) for path, _ in samples}
    index = {name: k for k, name in enumerate(split.classes)}
    added = 0
    for name in csv_files:
        path = user_path(name)
        if not path.is_file():
            raise HeadstartError(f"added labels: CSV file not found: {path}")
        by_split, _ = read_csv(path, read_csv_rows(path))
        for classes in by_split.values():
            for label, files in classes.items():
                if label not in index:
                    raise HeadstartError(
                        f"{path}: label {label!r} is not a class of {split.name} (classes: {', '.join(split.classes)})"
                    )
                fresh = [f for f in files if f.resolve() not in listed]
                split.train.extend((f, index[label]) for f in fresh)
                listed.update(f.resolve() for f in fresh)
                added += len(fresh)
    split.layout += f" + {added:,} added train labels"
    return split
