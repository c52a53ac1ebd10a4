"""`headstart inspect`: what is wrong with a data set, found before any training, without changing a file.

    headstart inspect DATA [--out DIR] [--backbone NAME]  ->  DIR/findings.csv, clean.csv, inspect.html

Findings (one row each in findings.csv: kind, path, other, score, then extra columns; the kinds are
registered in headstart.inspection.findings):
    unreadable, odd_image      files Pillow cannot read; tiny, huge or extreme-aspect pictures
    exact_duplicate            the same decoded pixels (`path` is the copy, `other` the one kept)
    near_duplicate             nearest neighbours (by embedding or pixel layout) whose fine detail matches
                               once aligned (headstart.data.pixel_match), whatever the resize or crop
    leak                       a duplicate across user-given splits; `path` is the held-out copy
    conflicting_label          a duplicate filed under another class
    label_issue                confident learning on out-of-fold probabilities (headstart.inspection.label_issues)
    outlier                    far from every class in embedding space

Example:
    >>> result = headstart.inspect("photos/")
    >>> result.count("leak"), result.out
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.hardware import pick_hardware
from headstart.data.duplicates import (
    COPIES_FOUND_WARNING,
    MATCH_THRESHOLD,
    Item,
    Thresholds,
    calibrated_threshold,
    degraded_copies,
)
from headstart.data.images import decode_all, warn_skipped
from headstart.data.layouts import list_images
from headstart.data.pixel_match import looks
from headstart.data.splits import MULTI, DataSplit
from headstart.inspection.evidence import Evidence
from headstart.inspection.findings import find_all
from headstart.inspection.inventory import examine_all, inventory
from headstart.inspection.report import InspectResult, sorted_findings, summary, write_outputs
from headstart.model.build import resolve_preprocessing
from headstart.training.embeddings import Embedder

log = logging.getLogger(__name__)

# Label suspects whose margin p(suggested) - p(given) reaches this are left out of clean.csv.
LABEL_MARGIN = 0.5
CALIBRATION_IMAGES = 64


def split_items(split: DataSplit, root: Path) -> list[Item]:
    """(split, path, label) of every listed image: train, val and, where the listing has one, test.

    A split the user gave (DATA/train + DATA/val, ...) keeps its name; where `list_images` split a
    plain folder itself, every image is in the one split 'all', so no leak is reported inside it.
    """
    parts = {"train": split.train, "val": split.val, "test": list(getattr(split, "test", None) or [])}
    given = splits_given(parts, root)
    items = []
    for name, samples in parts.items():
        for path, label in samples:
            # A multi-label image's label is its tags joined by spaces: two copies with other tags conflict.
            named = " ".join(split.classes[k] for k in label) if isinstance(label, tuple) else split.classes[label]
            items.append(Item(name if given else "all", path, relative_to(path, root), named))
    return sorted(items, key=lambda item: item.relative)


def regular_only(items: list[Item]) -> list[Item]:
    """The items that are regular files, the others skipped with train's warning: opening a FIFO blocks forever.

    A missing file is kept: it is an `unreadable` finding, as a damaged one is.
    """
    kept: list[Item] = []
    skipped: list[Item] = []
    for item in items:
        special = item.path.exists() and not item.path.is_file()  # both follow symlinks
        (skipped if special else kept).append(item)
    warn_skipped([f"{item.path.name} (not a regular file)" for item in skipped])
    return kept


def relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return os.path.relpath(path, root) if path.is_absolute() == root.is_absolute() else str(path)


def splits_given(parts: dict[str, list], root: Path) -> bool:
    """True when each split lives in its own top folder (train/, val/, test/): the user made it, not a seeded split."""
    if parts["test"]:
        return True
    tops = [{relative_to(path, root).split("/")[0] for path, _ in samples} for samples in parts.values() if samples]
    return len(tops) > 1 and all(len(t) == 1 for t in tops) and len(set().union(*tops)) == len(tops)


def data_root(data: str | None, split: DataSplit) -> Path:
    if data is not None and Path(data).expanduser().is_dir():
        return Path(data).expanduser()
    if data is not None and Path(data).expanduser().is_file():
        return Path(data).expanduser().parent
    return Path(os.path.commonpath([str(p) for p, _ in split.train + split.val]))


def fit_thresholds(embedder: Embedder, items: list[Item], seed: int, match: float) -> Thresholds:
    """The near-duplicate threshold, and the share of generated copies of sampled images that reach it."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(CALIBRATION_IMAGES, len(items)), replace=False)
    samples = [(items[i].path, 0) for i in sorted(chosen)]
    pictures, _, _ = decode_all(samples, embedder.short_side, embedder.preprocessing["interpolation"], 2)
    if not pictures:
        raise HeadstartError("no readable image to calibrate the near-duplicate threshold on")
    originals = [Image.fromarray(p) for p in pictures]
    copies = [copy for number, picture in enumerate(originals) for copy in degraded_copies(picture, seed + number)]
    original_looks, copy_looks = [looks(p) for p in originals], [looks(c) for c in copies]
    return calibrated_threshold(
        (np.stack([t for t, _ in original_looks]), np.stack([c for _, c in original_looks])),
        (np.stack([t for t, _ in copy_looks]), np.stack([c for _, c in copy_looks])),
        match,
    )


def warn_if_copies_missed(thresholds: Thresholds) -> None:
    if thresholds.copies < COPIES_FOUND_WARNING:
        log.warning(
            "only %.0f %% of generated copies of these pictures (resized, cropped, re-encoded, recoloured) match "
            "at %.2f or more: near duplicates changed as much are missed here (small or noisy pictures lose the "
            "detail the match needs); --near-threshold lowers the bar",
            100 * thresholds.copies,
            thresholds.match,
        )


def warn_if_inseparable(pairs: int, images: int, thresholds: Thresholds) -> None:
    # More near-duplicate pairs than images: the set holds many pictures of one scene (one object under
    # several lightings, a burst of frames) or pictures whose fine detail matches by chance.
    if pairs > images:
        log.warning(
            "%d near-duplicate pairs among %d images (pixel match >= %.3f): many pictures here show the same "
            "scene; look at inspect.html's pairs before trusting them, or raise --near-threshold",
            pairs,
            images,
            thresholds.match,
        )


def embedding_recipe(data, backbone: str, weights: str | None, image_size: int | None, batch_size: int, device: str):
    """The recipe whose head-only stage's cached features are the embeddings: linear head, no augmentation."""
    from headstart.training.session import resolve

    return resolve(
        Recipe.from_dict(
            {
                "data": {
                    "path": None if data is None else str(data),
                    "image_size": image_size,
                    "augment": "none",
                    "batch_size": batch_size,
                },
                "model": {"backbone": backbone, "weights": weights, "head": {"kind": "linear"}},
                "run": {"device": device},
            }
        )
    )


def inspect(
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    near_threshold: float | None = None,
    label_margin: float = LABEL_MARGIN,
    seed: int = 0,
    quiet: bool = False,
) -> InspectResult:
    """Inspect DATA (any layout `train` accepts) and write findings.csv, clean.csv and inspect.html to `out`.

    Args:
        out: output folder (default runs/<data name>-inspect).
        near_threshold: pixel match (headstart.data.pixel_match) a near duplicate reaches; None: 0.88.
        label_margin: label suspects with p(suggested) - p(given) at or above it are left out of clean.csv.
    """
    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise HeadstartError(f"near threshold {near_threshold}: give a pixel match in (0, 1], or none for 0.88")
    if not 0 <= label_margin <= 1:
        raise HeadstartError(f"label margin {label_margin}: give a probability margin in [0, 1]")
    from headstart.training.session import ensure_console

    ensure_console(quiet)
    recipe = embedding_recipe(data, backbone, weights, image_size, batch_size, device)
    split = list_images(recipe.data)
    root = data_root(None if data is None else str(data), split)
    items = regular_only(split_items(split, root))
    out = Path(out) if out is not None else Path("runs") / f"{split.name}-inspect"
    log.info("inspect: %s, %d images in %d classes -> %s", root, len(items), len(split.classes), out)

    facts = examine_all(items)
    readable = [i for i, f in enumerate(facts) if not f.error]
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    embedder = Embedder(recipe, preprocessing, pick_hardware(device, "auto", True))
    embedded, ok = embedder.files([items[i].path for i in readable], quiet=quiet)
    rows = [readable[k] for k in np.nonzero(ok)[0]]
    vectors = np.asarray(embedded[np.nonzero(ok)[0]], dtype=np.float32)
    match = MATCH_THRESHOLD if near_threshold is None else near_threshold
    thresholds = fit_thresholds(embedder, [items[i] for i in rows], seed, match)
    warn_if_copies_missed(thresholds)
    findings = find_all(Evidence(items, facts, rows, vectors, thresholds, seed, split.task == MULTI))
    warn_if_inseparable(sum(f.kind == "near_duplicate" for f in findings), len(rows), thresholds)
    result = InspectResult(out, sorted_findings(findings), inventory(items, facts), thresholds)
    write_outputs(result, items, root, label_margin)
    log.info("%s", summary(result))
    return result
