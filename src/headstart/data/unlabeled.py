"""Images nobody has labelled: a folder (searched recursively) or a CSV with a path column.

`list_unlabeled` finds them; `drop_known` removes those a labelled split already holds, the same
file or the same bytes (inspect's digests), so a pseudo-label can never be trained on a val or test
image and `suggest` never asks for a label the data set already has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.data.csv_layout import read_csv_rows
from headstart.data.duplicates import file_digest
from headstart.data.splits import DataSplit, regular_files

log = logging.getLogger("headstart")


def list_unlabeled(source: str | Path) -> list[Path]:
    """Every file under a folder (hidden names skipped), or the path column of a CSV (relative to its folder)."""
    root = user_path(source)
    if root.is_dir():
        paths = regular_files(root)
    elif root.is_file() and root.suffix.lower() == ".csv":
        paths = csv_paths(root)
    elif root.exists():
        raise HeadstartError(
            f"unlabelled images: {root} is neither a folder nor a .csv; give a folder of images or a CSV with a path column"
        )
    else:
        raise HeadstartError(
            f"unlabelled images not found: {root}; give a folder of images or a CSV with a path column"
        )
    if not paths:
        raise HeadstartError(f"unlabelled images: {root} holds no files")
    return paths


def csv_paths(csv_file: Path) -> list[Path]:
    rows = [row for row in read_csv_rows(csv_file) if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    column, first = (header.index("path"), 1) if "path" in header else (0, 0)
    paths = [Path(row[column].strip()) for row in rows[first:] if len(row) > column and row[column].strip()]
    return [path if path.is_absolute() else csv_file.parent / path for path in paths]


@dataclass
class Unlabeled:
    """The unlabelled images left to use, and how many were dropped as images the labelled splits hold."""

    paths: list[Path]
    listed: int
    labelled_files: int = 0  # the same file as a labelled image
    copies: int = 0  # the same bytes as a labelled image

    def describe(self) -> str:
        dropped = self.labelled_files + self.copies
        return f"{self.listed:,} unlabelled images" + (
            f" ({dropped:,} dropped: {self.labelled_files:,} labelled already, {self.copies:,} copies of labelled images)"
            if dropped
            else ""
        )


def drop_known(
    paths: list[Path], split: DataSplit, source: str | Path, why: str = "so no pseudo-label can leak into scoring"
) -> Unlabeled:
    """Drop unlabelled images that are labelled images (same file, or same bytes); warn for val/test copies.

    An unlabelled source that holds nothing but the labelled images is an error: the wrong folder was given.
    why: the warning's reason for dropping the copies (the caller's: pseudo-labels, or suggest's sheet).
    """
    splits = {"train": split.train, "val": split.val, "test": split.test}
    labelled = {path.resolve(): name for name, samples in splits.items() for path, _ in samples}
    fresh = [path for path in paths if path.resolve() not in labelled]
    if not fresh:
        raise HeadstartError(
            f"unlabelled images: every file in {source} is already a labelled image of the data set; "
            "give a folder of images that have no label"
        )
    held: dict[str, str] = {}
    for path, name in labelled.items():
        digest = file_digest(path)
        if digest is not None:
            held.setdefault(digest, name)
    kept, leaks = [], {"val": 0, "test": 0, "train": 0}
    for path in fresh:
        where = held.get(file_digest(path) or "")
        if where is None:
            kept.append(path)
        else:
            leaks[where] += 1
    if leaks["val"] or leaks["test"]:
        log.warning(
            "%d unlabelled image(s) are copies of val/test images (val %d, test %d): dropped, %s",
            leaks["val"] + leaks["test"],
            leaks["val"],
            leaks["test"],
            why,
        )
    if not kept:
        raise HeadstartError(f"unlabelled images: every file in {source} is a copy of a labelled image")
    return Unlabeled(kept, len(paths), len(paths) - len(fresh), sum(leaks.values()))
