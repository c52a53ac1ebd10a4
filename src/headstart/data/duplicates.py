"""Duplicates and leaks: exact copies by digest, near copies by cosine similarity of embeddings.

A finding is a `Finding(kind, path, other, score, extra)`. Exact duplicates are grouped by a
digest of the decoded pixels (so a PNG re-saved from a JPEG's pixels is the same picture), near
duplicates by the cosine similarity of frozen-backbone embeddings, searched exactly with blocked
matrix products so memory stays at one block of similarities whatever the number of images.
Pairs whose files sit in different user-given splits are also leaks: the held-out file is `path`.

`train_check` is the cheap version `headstart train` runs: a digest of the file bytes only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.splits import Sample

log = logging.getLogger(__name__)

# Held-out splits rank after train: a leak removes the copy on the later side.
SPLIT_ORDER = {"all": 0, "train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}

# Each threshold lets this share of generated copies fall below it.
CALIBRATION_QUANTILE = 0.01
SIGNATURE_SIDE = 16

# Similarities of one block of rows against one block of columns: 2048 x 8192 float32 = 64 MB.
ROW_BLOCK, COLUMN_BLOCK = 2048, 8192


@dataclass
class Item:
    """One listed image: its split ('all' where the user gave none), path relative to DATA, class name."""

    split: str
    path: Path
    relative: str
    label: str


@dataclass
class Finding:
    kind: str
    path: str
    other: str = ""
    score: float = 0.0
    extra: dict = field(default_factory=dict)


def split_rank(split: str) -> int:
    return SPLIT_ORDER.get(split.lower(), 1)


def keeper_first(items: list[Item], members: list[int]) -> list[int]:
    """The copy to keep first: the earliest split (train before val before test), then the path."""
    return sorted(members, key=lambda i: (split_rank(items[i].split), items[i].relative))


def pair_findings(items: list[Item], keep: int, copy: int, kind: str, score: float) -> list[Finding]:
    """The duplicate row for (copy of keep), plus a conflicting_label row and a leak row where they apply."""
    a, b = items[keep], items[copy]
    extra = {"label": b.label, "other_label": a.label, "split": b.split, "other_split": a.split}
    found = [Finding(kind, b.relative, a.relative, score, extra)]
    if a.label != b.label:
        found.append(Finding("conflicting_label", b.relative, a.relative, score, dict(extra, via=kind)))
    if a.split != b.split:
        found.append(Finding("leak", b.relative, a.relative, score, dict(extra, via=kind)))
    return found


def exact_groups(digests: list[str | None]) -> list[list[int]]:
    """Indices sharing a digest, groups of two or more (None: unreadable, never grouped)."""
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        if digest is not None:
            groups.setdefault(digest, []).append(index)
    return [members for members in groups.values() if len(members) > 1]


def exact_findings(items: list[Item], digests: list[str | None]) -> list[Finding]:
    found = []
    for members in exact_groups(digests):
        keep, *copies = keeper_first(items, members)
        for copy in copies:
            found += pair_findings(items, keep, copy, "exact_duplicate", 1.0)
    return found


def signature(rgb: Image.Image) -> np.ndarray:
    """The picture averaged down to 16x16 RGB, centred and L2-normalised (float16): its layout, not its meaning.

    Re-encoding, resizing and a 3 % crop barely move it, while two different photos of one kind of
    thing (which a classifier's embedding deliberately maps close together) differ in it.
    """
    small = np.asarray(rgb.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX), dtype=np.float32)
    small = (small - small.mean()).reshape(-1)
    return (small / max(float(np.linalg.norm(small)), 1e-6)).astype(np.float16)


def mean_colour(rgb: Image.Image) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32).reshape(-1, 3).mean(axis=0)


def similar_pairs(
    embeddings: np.ndarray,
    threshold: float,
    signatures: np.ndarray | None = None,
    signature_threshold: float = -1.0,
    colours: np.ndarray | None = None,
    colour_tolerance: float = np.inf,
) -> Iterator[tuple[int, int, float]]:
    """Every pair (i < j) with cosine similarity >= threshold, exactly, one block of similarities at a time.

    `embeddings` must be L2-normalised rows (float32); it may be a memory map. With `signatures`,
    a pair must also have signature similarity >= signature_threshold; with `colours`, mean colours
    no further apart than colour_tolerance in any channel (a recoloured variant is not a copy).
    """
    count = len(embeddings)
    for row in range(0, count, ROW_BLOCK):
        rows = np.asarray(embeddings[row : row + ROW_BLOCK], dtype=np.float32)
        # Only columns at or after this row block: each pair is computed once.
        for column in range(row, count, COLUMN_BLOCK):
            columns = np.asarray(embeddings[column : column + COLUMN_BLOCK], dtype=np.float32)
            similarity = rows @ columns.T
            close = similarity >= threshold
            if signatures is not None:
                # A second block product, not a per-hit check: a data set of look-alikes can put
                # most of a block above the embedding threshold.
                signature_rows = np.asarray(signatures[row : row + ROW_BLOCK], dtype=np.float32)
                signature_columns = np.asarray(signatures[column : column + COLUMN_BLOCK], dtype=np.float32)
                close &= signature_rows @ signature_columns.T >= signature_threshold
            hits_i, hits_j = np.nonzero(close)
            if colours is not None and len(hits_i):
                apart = np.abs(colours[row + hits_i] - colours[column + hits_j]).max(axis=1)
                hits_i, hits_j = hits_i[apart <= colour_tolerance], hits_j[apart <= colour_tolerance]
            for i, j in zip(hits_i.tolist(), hits_j.tolist()):
                if row + i < column + j:
                    yield row + i, column + j, float(similarity[i, j])


def near_findings(
    items: list[Item], embeddings: np.ndarray, digests: list[str | None], looks: Looks, thresholds: Thresholds
) -> list[Finding]:
    """near_duplicate rows (plus leak / conflicting_label rows) for pairs within every threshold that are not exact copies."""
    found = []
    pairs = similar_pairs(
        embeddings, thresholds.embedding, looks.signatures, thresholds.signature, looks.colours, thresholds.colour
    )
    for i, j, score in pairs:
        if digests[i] is not None and digests[i] == digests[j]:
            continue  # reported as an exact duplicate
        keep, copy = keeper_first(items, [i, j])
        found += pair_findings(items, keep, copy, "near_duplicate", round(score, 4))
    return found


# ----------------------------------------------------------------------------- generated copies


def degraded_copies(image: Image.Image, seed: int) -> list[Image.Image]:
    """The near copies a real folder holds: re-encoded as a lower-quality JPEG, resized 0.8x, cropped 3 %."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(40, 70)))
    reencoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    width, height = image.size
    resized = image.resize((max(1, round(width * 0.8)), max(1, round(height * 0.8))), Image.Resampling.BILINEAR)
    dx, dy = round(width * 0.03), round(height * 0.03)
    left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    cropped = image.crop((left, top, width - (dx - left), height - (dy - top)))
    return [reencoded, resized, cropped]


@dataclass
class Thresholds:
    """Near duplicates meet all three: cosine similarity of embeddings and of pixel signatures at least
    these, mean colours at most `colour` apart (0-255, largest channel difference)."""

    embedding: float
    signature: float
    colour: float


@dataclass
class Looks:
    """Pixel signatures (N, 768) and mean colours (N, 3) of the images, beside their embeddings."""

    signatures: np.ndarray
    colours: np.ndarray


def calibrated_threshold(original: np.ndarray, copies: np.ndarray, quantile: float = CALIBRATION_QUANTILE) -> float:
    """The similarity that `1 - quantile` of generated copies reach with their original (rows L2-normalised).

    `copies` holds len(copies) // len(original) copies per original, in order.
    """
    per = len(copies) // len(original)
    original = np.asarray(original, dtype=np.float32)
    similarity = np.einsum("nd,nd->n", np.repeat(original, per, axis=0), np.asarray(copies, dtype=np.float32))
    return float(np.quantile(similarity, quantile))


# ----------------------------------------------------------------------------- the cheap check in train


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def train_check(splits: dict[str, list[Sample]]) -> tuple[int, int]:
    """(byte-identical copies in all, of them copies across splits) for `headstart train`'s warning.

    Only files whose size another file shares are read: copies have equal sizes, so a folder
    without duplicates costs one stat per file, not a second read of every byte.
    """
    sizes: dict[int, list[tuple[str, Path]]] = {}
    for side, samples in splits.items():
        for path, _ in samples:
            try:
                sizes.setdefault(os.stat(path).st_size, []).append((side, path))
            except OSError:
                continue
    seen: dict[str, str] = {}
    copies = leaks = 0
    for group in sizes.values():
        if len(group) < 2:
            continue
        for side, path in group:
            digest = file_digest(path)
            if digest is None:
                continue
            if digest in seen:
                copies += 1
                leaks += seen[digest] != side
            else:
                seen[digest] = side
    return copies, leaks


def warn_duplicates(splits: dict[str, list[Sample]], data: str | None) -> tuple[int, int]:
    """Log one warning when the run's images hold byte-identical copies; returns (copies, leaks)."""
    copies, leaks = train_check(splits)
    if copies:
        where = f" {data}" if data else ""
        log.warning(
            "%d exact duplicate file(s) in the data, %d of them across splits (leaks inflate validation "
            "and test scores); headstart inspect%s finds near duplicates and label errors too and writes a clean.csv",
            copies,
            leaks,
            where,
        )
    return copies, leaks
