"""Duplicates and leaks: exact copies by digest, near copies by an aligned comparison of their pixels.

A finding is a `Finding(kind, path, other, score, extra)`. Exact duplicates are grouped by a
digest of the decoded pixels (so a PNG re-saved from a JPEG's pixels is the same picture). Near
duplicates take two independent pieces of evidence: a pair is a candidate when either picture is
among the other's 10 nearest neighbours by frozen-backbone embedding or by a 16x16 squashed
grayscale layout (searched exactly with blocked matrix products, so memory stays at one block of
similarities whatever the number of images), and it is a near duplicate when the two pictures'
fine detail matches once one is aligned onto the other (headstart.data.pixel_match): whatever the
resize (aspect kept or changed), a crop up to about 10 % a side, re-encoding or a mild colour change.
Pairs whose files sit in different user-given splits are also leaks: the held-out file is `path`.

`train_check` is the cheap version `headstart train` runs: a digest of the file bytes only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from headstart.data.pixel_match import Matcher, coarse_signatures, shared_detail
from headstart.data.splits import Sample

log = logging.getLogger(__name__)

# Held-out splits rank after train: a leak removes the copy on the later side.
SPLIT_ORDER = {"all": 0, "train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}

# A near duplicate's pixels match at least this well (headstart.data.pixel_match). Measured on planted
# copies (benchmarks/planted_faults.py): copies reach 0.9 and more (crops up to 10 % a side, JPEG 30,
# squashes), different photographs under 0.8, different tiles of a look-alike set under 0.85.
MATCH_THRESHOLD = 0.88
# The share of generated copies of the set's own pictures that reach the threshold is measured too:
# under this (small or noisy pictures lose the detail the match needs), inspect warns that copies are missed.
COPIES_FOUND_WARNING = 0.9
# The colour tolerance: what this share of generated copies' mean colours stay within (brightness,
# contrast and saturation changed up to 15 % among them), and at least MIN_COLOUR levels.
COLOUR_QUANTILE, MIN_COLOUR = 0.99, 4.0
# Nearest neighbours by embedding, and by pixel layout, that each picture is compared with.
NEIGHBOURS = 10
# A near duplicate's mismatch (1 - match) is at most this share of each picture's typical mismatch with
# its candidates (their lower quartile): a tile's six photographs under other lights still count, a
# frame every picture shares does not.
STAND_OUT, TYPICAL_QUANTILE = 0.5, 0.25

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


def nearest(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """(N, k) indices of each row's k most similar other rows (dot product), exactly, one block at a time.

    `vectors` may be a memory map; rows are compared as float32.
    """
    count = len(vectors)
    k = min(neighbours, count - 1)
    found = np.zeros((count, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return found
    for row in range(0, count, ROW_BLOCK):
        rows = np.asarray(vectors[row : row + ROW_BLOCK], dtype=np.float32)
        best = np.full((len(rows), k), -np.inf, dtype=np.float32)
        where = np.zeros((len(rows), k), dtype=np.int64)
        for column in range(0, count, COLUMN_BLOCK):
            similarity = rows @ np.asarray(vectors[column : column + COLUMN_BLOCK], dtype=np.float32).T
            own = np.arange(len(rows)) + row - column  # each row's own column in this block, if there
            inside = (own >= 0) & (own < similarity.shape[1])
            similarity[np.nonzero(inside)[0], own[inside]] = -np.inf
            merged = np.concatenate([best, similarity], axis=1)
            indices = np.concatenate(
                [where, np.broadcast_to(np.arange(column, column + similarity.shape[1]), similarity.shape)], axis=1
            )
            top = np.argpartition(-merged, k - 1, axis=1)[:, :k]
            best, where = np.take_along_axis(merged, top, axis=1), np.take_along_axis(indices, top, axis=1)
        found[row : row + len(rows)] = where
    return found


def candidate_pairs(embeddings: np.ndarray, layouts: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """(P, 2) pairs i < j where either is among the other's nearest by embedding or by pixel layout."""
    pairs = []
    for vectors in (embeddings, layouts):
        near = nearest(vectors, neighbours)
        pairs.append(np.stack([np.repeat(np.arange(len(near)), near.shape[1]), near.reshape(-1)], axis=1))
    joined = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(joined, axis=0) if len(joined) else joined.reshape(0, 2)


def typical_match(pairs: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """(count,) each picture's lower-quartile match over the candidate pairs it is in (0 where it is in none)."""
    pictures = np.concatenate([pairs[:, 0], pairs[:, 1]])
    values = np.concatenate([scores, scores]).astype(np.float32)
    order = np.lexsort((values, pictures))
    pictures, values = pictures[order], values[order]
    typical = np.zeros(count, dtype=np.float32)
    present, starts, sizes = np.unique(pictures, return_index=True, return_counts=True)
    typical[present] = values[starts + (TYPICAL_QUANTILE * (sizes - 1)).astype(np.int64)]
    return typical


def near_findings(
    items: list[Item],
    embeddings: np.ndarray,
    digests: list[str | None],
    looks: tuple[np.ndarray, np.ndarray],
    thresholds: Thresholds,
) -> list[Finding]:
    """near_duplicate rows (plus leak / conflicting_label rows) for the pairs whose pixels match, exact copies aside.

    `looks`: (N, 64, 64) grayscale thumbnails and (N, 3) mean colours (headstart.data.pixel_match.looks).

    Only one picture of each exact-duplicate group is compared: its copies are already reported, and
    would otherwise fill each other's nearest-neighbour lists.
    """
    thumbs, colours = looks
    first: dict[str, int] = {}
    for index in keeper_first(items, list(range(len(items)))):
        first.setdefault(digests[index] or f"unread-{index}", index)
    unique = np.array(sorted(first.values()), dtype=np.int64)
    if len(unique) < 2:
        return []
    embedded = np.asarray(embeddings[unique], dtype=np.float32)
    pairs = unique[candidate_pairs(embedded, coarse_signatures(thumbs[unique]))]
    scores = Matcher(thumbs, shared_detail(thumbs[unique])).scores(pairs)
    typical = typical_match(pairs, scores, len(items))
    # A copy stands out from how well each of its pictures matches its other neighbours: in a set where
    # a cropped picture matches every other one at 0.9 (their shared frame, shifted), 0.9 is no evidence.
    mismatch = 1.0 - scores
    stands_out = (mismatch <= STAND_OUT * (1.0 - typical[pairs[:, 0]])) & (
        mismatch <= STAND_OUT * (1.0 - typical[pairs[:, 1]])
    )
    # A recoloured variant (the same stripes in other colours) is not a copy: mean colours stay within
    # what a mild colour change of the set's own pictures moves them. Checked after `typical`, which
    # is over all of a picture's candidates.
    close = np.abs(colours[pairs[:, 0]] - colours[pairs[:, 1]]).max(axis=1) <= thresholds.colour
    found = []
    for (i, j), score, clear in zip(pairs.tolist(), scores.tolist(), (stands_out & close).tolist()):
        if score >= thresholds.match and clear:
            keep, copy = keeper_first(items, [i, j])
            found += pair_findings(items, keep, copy, "near_duplicate", round(score, 4))
    return found


# ----------------------------------------------------------------------------- generated copies


def degraded_copies(image: Image.Image, seed: int) -> list[Image.Image]:
    """The near copies real folders hold, one of each: re-encoded as JPEG (quality 40-70), downscaled
    0.5-0.8x, squashed to 224x224 (aspect changed), each side cropped 0-10 %, brightness, contrast and
    saturation changed 0-15 %, and 3 % a side cropped + 0.8x + JPEG 70."""
    rng = np.random.default_rng(seed)
    image = image.convert("RGB")
    width, height = image.size
    square = (224, 224) if abs(width / height - 1) > 0.1 else (224, 168)
    copies = [
        jpeg(image, int(rng.integers(40, 71))),
        resized(image, float(rng.uniform(0.5, 0.8))),
        image.resize(square, Image.Resampling.BILINEAR),
        cut(image, rng.uniform(0.0, 0.10, 4).tolist()),
        recoloured(image, rng.uniform(0.85, 1.15, 3).tolist()),
        jpeg(resized(cut(image, [0.03] * 4), 0.8), 70),
    ]
    return copies


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def resized(image: Image.Image, factor: float) -> Image.Image:
    return image.resize(
        (max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.BILINEAR
    )


def cut(image: Image.Image, sides: list[float]) -> Image.Image:
    """`image` with these fractions of its width or height cut off the left, top, right and bottom."""
    width, height = image.size
    left, top, right, bottom = (round(f * side) for f, side in zip(sides, (width, height, width, height)))
    return image.crop((left, top, max(left + 1, width - right), max(top + 1, height - bottom)))


def recoloured(image: Image.Image, factors: list[float]) -> Image.Image:
    for enhance, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
        image = enhance(image).enhance(factor)
    return image


@dataclass
class Thresholds:
    """A near duplicate's pixel match (headstart.data.pixel_match) reaches `match` and its mean colours differ
    by at most `colour` (0-255, largest channel); `copies` is the share of generated copies of the data set's
    own pictures (degraded_copies) that pass both."""

    match: float
    copies: float
    colour: float = 255.0


def calibrated_threshold(
    originals: tuple[np.ndarray, np.ndarray], copies: tuple[np.ndarray, np.ndarray], match: float = MATCH_THRESHOLD
) -> Thresholds:
    """Thresholds from the looks (thumbnails, mean colours) of originals and of their copies, len(copies) // N
    each, in order: the colour tolerance is what 99 % of the copies' mean colours stay within."""
    (thumbs, colours), (copy_thumbs, copy_colours) = originals, copies
    per = len(copy_thumbs) // len(thumbs)
    everything = np.concatenate([thumbs, copy_thumbs])
    pairs = np.stack([np.repeat(np.arange(len(thumbs)), per), len(thumbs) + np.arange(len(copy_thumbs))], axis=1)
    scores = Matcher(everything, shared_detail(thumbs)).scores(pairs)
    apart = np.abs(np.repeat(colours, per, axis=0) - copy_colours).max(axis=1)
    colour = max(MIN_COLOUR, float(np.quantile(apart, COLOUR_QUANTILE)))
    return Thresholds(match, round(float(np.mean((scores >= match) & (apart <= colour))), 4), round(colour, 2))


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
