"""Multi-label CSVs: several tags per image, in either of the two forms export tools write.

long   path,labels[,split]: the labels cell holds the image's tags separated by data.label_delim
       (a space by default: "dress hat"); an empty cell is an image with no tag. The column may be
       named labels, tags or label.
wide   path,<tag>,<tag>,...[,split]: one 0/1 column per tag (a header is required to name them).

The task is read from the data unless data.task names it: a 'labels'/'tags' column, a cell holding
the delimiter or a wide header is multi-label. Without a split column, val (and test) are carved
by iterative stratification (Sechidis et al. 2011, the iterative-stratification package), which keeps
every tag's share alike in each split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component
from headstart.data.splits import MULTI, SPLITS, DataSplit, Label, ListedOnce, csv_image_and_split, label_counts

log = logging.getLogger("headstart")

LIST_COLUMNS = ("labels", "tags")
FLAGS = {"1": True, "0": False, "true": True, "false": False, "": False}
# Separators people use between tags; one in a tag means the cell was written with another delimiter.
OTHER_DELIMITERS = (",", ";", "|")
# A tag with fewer training images than this is learned poorly and scored noisily: say so.
FEW_POSITIVES = 5


@dataclass(frozen=True)
class Form:
    kind: str  # "long" or "wide"
    columns: dict[str, int]  # path, label (long), split: positions
    tags: tuple[str, ...] = ()  # wide: the tag of each column in `flag_columns`
    flag_columns: tuple[int, ...] = ()
    first: int = 1  # the first data row


def detect(rows: list[list[str]], cfg: DataConfig, where: Path) -> Form | None:
    """How the CSV holds several tags per image, or None for a single-label CSV."""
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "path" in header:
        columns: dict[str, int] = {c: header.index(c) for c in ("path", "split") if c in header}
        named = next((c for c in (*LIST_COLUMNS, "label") if c in header), None)
        if named is None:
            return wide_form(rows[0], columns, cfg, where)
        columns["label"] = header.index(named)
        form = Form("long", columns)
        if named in LIST_COLUMNS and cfg.task == "single-label":
            raise HeadstartError(
                f"data.task is single-label but {where} has a '{named}' column (several tags per image); "
                "set data.task multi-label or auto, or name the column 'label'"
            )
        explicit = named in LIST_COLUMNS
    else:
        form, explicit = Form("long", {"path": 0, "label": 1, "split": 2}, first=0), False
    if cfg.task == "multi-label" or explicit:
        return form
    if cfg.task == "auto" and any(cfg.label_delim in cell.strip() for cell in label_cells(rows, form)):
        log.info(
            "%s: label cells hold several tags separated by %r: a multi-label task "
            "(set data.task single-label if such a cell is one class name)",
            where,
            cfg.label_delim,
        )
        return form
    return None


def label_cells(rows: list[list[str]], form: Form) -> list[str]:
    at = form.columns["label"]
    return [row[at] for row in rows[form.first :] if len(row) > at]


def wide_form(names: list[str], columns: dict[str, int], cfg: DataConfig, where: Path) -> Form:
    flag_columns = tuple(i for i in range(len(names)) if i not in columns.values())
    if not flag_columns:
        raise HeadstartError(
            f"{where}: the header has 'path' but no label column; give path,label or path,labels "
            "or one 0/1 column per label"
        )
    if cfg.task == "single-label":
        raise HeadstartError(
            f"data.task is single-label but {where} has one 0/1 column per label (the wide multi-label form); "
            "set data.task multi-label or auto, or give path,label"
        )
    tags = tuple(safe_component(names[i].strip(), f"{where}, header: label column") for i in flag_columns)
    return Form("wide", columns, tags, flag_columns)


def read_rows(
    rows: list[list[str]], form: Form, cfg: DataConfig, where: Path
) -> dict[Path, tuple[tuple[str, ...], str]]:
    """image -> (its tags, its split ('' when none)); a repeated identical row is kept once, a conflicting one refused."""
    seen = ListedOnce(where, "tags")
    needed = max(form.columns.values()) if form.kind == "wide" else max(form.columns["path"], form.columns["label"])
    for number, row in enumerate(rows[form.first :], start=form.first + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= needed:
            raise HeadstartError(f"{where}, line {number}: expected {len(rows[0])} columns, got {','.join(row)!r}")
        image, split = csv_image_and_split(row, form.columns, where, number)
        tags = wide_tags(row, form, where, number) if form.kind == "wide" else long_tags(row, form, cfg, where, number)
        seen.add(image, tags, split, number)
    seen.warn_repeats()
    return {image: (tags, split) for image, (tags, split, _) in seen.rows.items()}


def long_tags(row: list[str], form: Form, cfg: DataConfig, where: Path, number: int) -> tuple[str, ...]:
    cell = row[form.columns["label"]].strip()
    tokens = [t.strip() for t in cell.split(cfg.label_delim) if t.strip()]
    if len(tokens) > 1 and set(tokens) <= {"0", "1"}:
        raise HeadstartError(
            f"{where}, line {number}: labels {cell!r} look like 0/1 flags; the labels column holds tag names "
            "('dress hat'), or give one 0/1 column per label with a header naming them"
        )
    for tag in tokens:
        other = next((d for d in OTHER_DELIMITERS if d != cfg.label_delim and d in tag), None)
        if other is not None:
            raise HeadstartError(
                f"{where}, line {number}: tag {tag!r} holds {other!r} but tags are separated by {cfg.label_delim!r}; "
                f"set data.label_delim {other!r} if that is the separator"
            )
        safe_component(tag, f"{where}, line {number}: tag")
    return tuple(sorted(set(tokens)))


def wide_tags(row: list[str], form: Form, where: Path, number: int) -> tuple[str, ...]:
    tags = []
    for tag, at in zip(form.tags, form.flag_columns):
        value = row[at].strip().lower() if at < len(row) else ""
        if value not in FLAGS:
            raise HeadstartError(
                f"{where}, line {number}: column '{tag}' holds {row[at].strip()!r}; in the wide form every "
                "label column holds 0 or 1 (tag names go in one 'labels' column instead)"
            )
        if FLAGS[value]:
            tags.append(tag)
    return tuple(tags)


def stratified_carve(
    images: list[Path], tags: list[tuple[str, ...]], classes: list[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Row positions kept and carved: `fraction` of the rows, every tag's share kept alike (iterative stratification)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(images), len(classes)), dtype=np.int8)
    for row, image_tags in enumerate(tags):
        matrix[row, [index[t] for t in image_tags if t in index]] = 1
    carved = max(1, round(len(images) * fraction))
    if len(images) - carved < 1:
        raise HeadstartError(f"{len(images)} image(s) are too few to carve a {fraction:g} split from")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=carved, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(images)), matrix))
    return sorted(kept.tolist()), sorted(held.tolist())


def list_tags(path: Path, rows: list[list[str]], form: Form, cfg: DataConfig) -> DataSplit:
    """The multi-label DataSplit of a CSV: tags checked, splits as given or carved by iterative stratification."""
    listed = read_rows(rows, form, cfg, path)
    if not listed:
        raise HeadstartError(f"{path} lists no images")
    named = {split for _, split in listed.values()}
    if "" in named and len(named) > 1:
        raise HeadstartError(f"{path}: some rows have no split while others do; give every row one")
    if named != {""} and "train" not in named:
        raise HeadstartError(f"{path}: no row has split 'train'; a split column needs train rows")
    by_split: dict[str, list[Path]] = {s: sorted(i for i, (_, split) in listed.items() if split == s) for s in SPLITS}
    pool = sorted(listed) if named == {""} else by_split["train"]
    seen = sorted({t for image in pool for t in listed[image][0]})
    classes = list(form.tags) if form.kind == "wide" else seen
    if len(classes) < 2:
        raise HeadstartError(f"{path}: the training rows carry {len(classes)} distinct tag(s); need at least 2")
    layout = f"CSV multi-label ({'one 0/1 column per label' if form.kind == 'wide' else 'path,labels'})"
    if named == {""}:
        by_split["train"], by_split["val"] = carve_split(pool, listed, classes, cfg.val_fraction, cfg.split_seed)
        layout += f", split here by iterative stratification (val {cfg.val_fraction:g}"
        if cfg.test_fraction:
            by_split["train"], by_split["test"] = carve_split(
                by_split["train"], listed, classes, cfg.test_fraction, cfg.split_seed + 1
            )
            layout += f", test {cfg.test_fraction:g}"
        layout += ")"
    elif not by_split["val"]:
        by_split["train"], by_split["val"] = carve_split(pool, listed, classes, cfg.val_fraction, cfg.split_seed)
        layout += f", val {cfg.val_fraction:g} of train rows"
    samples = {s: labelled(by_split[s], listed, classes, path, s) for s in SPLITS}
    warn_few_positives(samples, classes)
    return DataSplit(
        path.stem, classes, samples["train"], samples["val"], samples["test"], layout=layout, root=path, task=MULTI
    )


def carve_split(
    pool: list[Path], listed: dict[Path, tuple[tuple[str, ...], str]], classes: list[str], fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    kept, carved = stratified_carve(pool, [listed[i][0] for i in pool], classes, fraction, seed)
    return [pool[i] for i in kept], [pool[i] for i in carved]


def labelled(
    images: list[Path], listed: dict[Path, tuple[tuple[str, ...], str]], classes: list[str], path: Path, split: str
) -> list[tuple[Path, Label]]:
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[Path, Label]] = []
    for image in images:
        unknown = [t for t in listed[image][0] if t not in index]
        if unknown:
            raise HeadstartError(
                f"{path}: {split} image {image.name} has tag '{unknown[0]}' that no training image has; "
                f"training tags: {', '.join(classes)}"
            )
        samples.append((image, tuple(sorted(index[t] for t in listed[image][0]))))
    return samples


def warn_few_positives(samples: dict[str, list[tuple[Path, Label]]], classes: list[str]) -> None:
    """One warning naming the tags with under FEW_POSITIVES training images or none in val."""
    train = label_counts([label for _, label in samples["train"]], len(classes))
    val = label_counts([label for _, label in samples["val"]], len(classes))
    few = [
        f"{c} ({train[i]} train, {val[i]} val)" for i, c in enumerate(classes) if train[i] < FEW_POSITIVES or not val[i]
    ]
    if few:
        shown = ", ".join(few[:10]) + (f", ... ({len(few) - 10} more)" if len(few) > 10 else "")
        log.warning(
            "%d tag(s) have under %d training images or none in val: their scores and thresholds are noisy: %s",
            len(few),
            FEW_POSITIVES,
            shown,
        )
