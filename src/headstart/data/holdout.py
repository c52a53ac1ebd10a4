"""Honest evaluation: which images of a data source a run never trained on.

`evaluate RUN DATA` on the run's own data source scores the run's held-out split (test if it has
one, else val), listed exactly as training listed it; scoring the whole folder would count the
training images too (a run 0.71 accurate on its val split reported 0.964 that way). On any other
folder everything is scored, with a warning naming how many files are the run's training files,
matched by path or, where paths differ (a copy), by content digest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.duplicates import file_digest
from headstart.data.layouts import data_root, list_images
from headstart.data.splits import Sample

log = logging.getLogger("headstart")


def same_source(data: str | Path, cfg: DataConfig) -> bool:
    """Whether DATA names the folder or CSV the run was trained from."""
    if cfg.path is None:
        return False
    try:
        return Path(data).expanduser().resolve() == Path(cfg.path).expanduser().resolve()
    except OSError:
        return False


def held_out(cfg: DataConfig, classes: list[str]) -> tuple[str, list[Sample], str]:
    """The run's held-out split: its name (test or val), its (path, label) pairs and a line saying which it is."""
    split = list_images(cfg)
    if split.classes != classes:
        raise HeadstartError(
            f"{cfg.path} now has classes {', '.join(split.classes)}; the run was trained on {', '.join(classes)}"
        )
    name, samples = split.held_out
    total = len(split.train) + len(split.val) + len(split.test)
    note = (
        f"scored the run's held-out {name} split: {len(samples)} of the {total} images in {cfg.path} "
        f"({split.layout}); its {len(split.train)} training images are not scored"
    )
    return name, samples, note


def training_overlap(paths: list[Path], cfg: DataConfig) -> int:
    """How many of `paths` are the run's training files, by path or by content (sizes compared first)."""
    if cfg.path is None or not data_root(cfg).exists():
        return 0
    training = [path for path, _ in list_images(cfg).train]
    same_path = {p.resolve() for p in training}
    rest = [p for p in paths if p.resolve() not in same_path]
    by_size: dict[int, list[Path]] = {}
    for path in training:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    candidates = [p for p in rest if os.path.getsize(p) in by_size]
    # Each training file of a size some candidate has is read once, however many candidates share it.
    sizes = {os.path.getsize(p) for p in candidates}
    digests = {file_digest(t) for size in sizes for t in by_size[size]} - {None}
    return len(paths) - len(rest) + sum(file_digest(p) in digests for p in candidates)


def overlap_note(paths: list[Path], cfg: DataConfig) -> str | None:
    """A warning line when some of the scored files are the run's training files, else None."""
    try:
        count = training_overlap(paths, cfg)
    except (HeadstartError, OSError):  # the run's own data is gone or changed: nothing to compare with
        return None
    if not count:
        return None
    return (
        f"{count} of the {len(paths)} images scored are the run's training images (by path or content): "
        "the score is optimistic; evaluate on images the run never saw"
    )
