"""Do two pictures show the same pixels, whatever the resize, crop, re-encoding or mild colour change?

Each picture is kept as a 64x64 grayscale thumbnail squashed to the square (aspect ignored), so a
copy resized to 224x224 from a 4:3 original has the same thumbnail as the original. A crop is
found by alignment: for a pair (A, B) the window of A that B shows is estimated from their row
and column brightness profiles (each side cut 0-12 %, in 2 % steps), refined where it looks
promising (1 % then 0.5 % steps per side), and the score is the correlation of the two 32x32
windows after a high-pass filter (each thumbnail minus its Gaussian blur, sigma 1 px): fine
detail, not the layout or lighting that every X-ray or every tile of a set shares. Both ways
round are tried (A cropped from B, B cropped from A) and the better kept.

The high-pass correlation of a copy with its original is near 1 (0.9-1.0 for crops up to 10 %
per side, JPEG at quality 30, a squash to 224x224); two different photographs of one kind of
thing score near 0. What every picture of a set shares (a tile's edges, a chest's outline, the
frame of a microscope) is discounted first: the set's mean detail is subtracted from every
window's detail, which changes little where pictures vary and much where they look alike. Two different pictures of a look-alike set (magnetic tiles under one
lighting) then score up to about 0.8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB_SIDE = 64
COMPARE_SIDE = 32
SIGNATURE_SIDE = 16
MAX_CROP = 0.12  # per side
COARSE_STEP = 0.02
REFINE_STEPS = (0.01, 0.005)
REFINE_FROM = 0.5  # pairs scoring below this after the coarse alignment are not refined
BLUR_SIGMA = 1.0
PAIR_BATCH = 2048


def looks(rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(64x64 grayscale thumbnail, uint8; mean colour, float32 RGB 0-255) of an RGB picture, from one small copy."""
    small = rgb.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    colour = np.asarray(small, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    return np.asarray(small.convert("L"), dtype=np.uint8), colour


def thumbnail(rgb: Image.Image) -> np.ndarray:
    """The picture in grayscale, squashed to 64x64 (uint8; Pillow's bilinear filter averages when it shrinks): what every comparison starts from."""
    return np.asarray(rgb.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR), dtype=np.uint8)


def zscore(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) centred and scaled to unit norm, float32: dot products are correlations."""
    x = np.asarray(x, dtype=np.float32)
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def coarse_signatures(thumbs: np.ndarray) -> np.ndarray:
    """(N, 256) 16x16 block means of the thumbnails, z-scored: the layout, to find candidate pairs by."""
    n, factor = len(thumbs), THUMB_SIDE // SIGNATURE_SIDE
    blocks = np.asarray(thumbs, dtype=np.float32).reshape(n, SIGNATURE_SIDE, factor, SIGNATURE_SIDE, factor)
    return zscore(blocks.mean(axis=(2, 4)).reshape(n, -1))


def area_weights(starts: np.ndarray, stops: np.ndarray, source: int, out: int) -> np.ndarray:
    """(P, out, source): row k averages source pixels over the k-th of `out` equal cells of [start, stop).

    `starts` and `stops` are fractions of the source side, one pair per row of the result.
    """
    starts, stops = np.asarray(starts, dtype=np.float32), np.asarray(stops, dtype=np.float32)
    cells = np.linspace(0.0, 1.0, out + 1, dtype=np.float32)
    edges = (starts[:, None] + (stops - starts)[:, None] * cells[None, :]) * source  # (P, out + 1)
    pixels = np.arange(source, dtype=np.float32)
    low = np.maximum(edges[:, :-1, None], pixels[None, None, :])
    high = np.minimum(edges[:, 1:, None], pixels[None, None, :] + 1)
    weights = np.clip(high - low, 0.0, None)
    return weights / np.maximum(weights.sum(axis=2, keepdims=True), 1e-6)


def blur_matrix(side: int, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """(side, side) Gaussian blur along one axis, edges reflected; rows sum to 1."""
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    matrix = np.zeros((side, side), dtype=np.float32)
    for row in range(side):
        for offset, weight in zip(offsets, kernel):
            column = row + offset
            column = -column - 1 if column < 0 else (2 * side - column - 1 if column >= side else column)
            matrix[row, column] += weight
    return matrix / matrix.sum(axis=1, keepdims=True)


BLUR = blur_matrix(COMPARE_SIDE)


def detail(windows: np.ndarray, shared: np.ndarray | None = None) -> np.ndarray:
    """(P, S, S) windows -> (P, S*S) high-pass (window minus its blur), z-scored, less the shared detail if given."""
    high = zscore((windows - BLUR @ windows @ BLUR.T).reshape(len(windows), -1))
    if shared is None:
        return high
    return zscore(high - shared)


def shared_detail(thumbs: np.ndarray, sample: int = 4096) -> np.ndarray:
    """(S*S,) the mean of the pictures' whole-picture detail (each z-scored): what most of them share, e.g. a
    tile's edges or a chest's outline. Near nothing in a set of varied photos, most of the detail in a look-alike set."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(thumbs), size=min(sample, len(thumbs)), replace=False)
    weights = area_weights(np.array([0.0]), np.array([1.0]), THUMB_SIDE, COMPARE_SIDE)[0]
    return detail(weights @ np.asarray(thumbs[chosen], dtype=np.float32) @ weights.T).mean(axis=0)


def spans(step: float = COARSE_STEP) -> np.ndarray:
    """(K, 2) [start, stop) intervals of a side with 0 to MAX_CROP cut off either end, in `step`s."""
    cuts = np.arange(0.0, MAX_CROP + 1e-6, step)
    return np.array([(left, 1.0 - right) for left in cuts for right in cuts], dtype=np.float32)


class Matcher:
    """Aligned high-pass correlation of pairs of thumbnails (N, 64, 64)."""

    def __init__(self, thumbs: np.ndarray, shared: np.ndarray | None = None):
        """`shared`: detail to discount (shared_detail of the data set's thumbnails), none to compare all of it."""
        self.thumbs = np.asarray(thumbs, dtype=np.float32)
        self.shared = shared
        self.spans = spans()
        self.to_compare = area_weights(np.array([0.0]), np.array([1.0]), THUMB_SIDE, COMPARE_SIDE)[0]
        self.span_weights = area_weights(self.spans[:, 0], self.spans[:, 1], THUMB_SIDE, COMPARE_SIDE)

    def scores(self, pairs: np.ndarray) -> np.ndarray:
        """(P,) the better of both directions for each pair (i, j) of thumbnail indices."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        best = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), PAIR_BATCH):
            chunk = pairs[start : start + PAIR_BATCH]
            forward = self.one_way(chunk[:, 0], chunk[:, 1])
            backward = self.one_way(chunk[:, 1], chunk[:, 0])
            best[start : start + len(chunk)] = np.maximum(forward, backward)
        return best

    def one_way(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """How well B matches some window of A (B a crop of A, or the same picture)."""
        pictures = self.thumbs[a]
        target = detail(self.to_compare @ self.thumbs[b] @ self.to_compare.T, self.shared)
        columns, rows = self.coarse_windows(pictures, self.thumbs[b])
        score = window_scores(pictures, columns, rows, target, self.shared)
        promising = np.nonzero(score >= REFINE_FROM)[0]
        if len(promising):
            score[promising] = refine(
                pictures[promising], columns[promising], rows[promising], target[promising], self.shared
            )
        return score

    def coarse_windows(self, pictures: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, 2) column and row spans of each picture whose brightness profiles best match the other's."""
        found = []
        for axis in (1, 2):  # the mean over rows is the column profile (x), over columns the row profile (y)
            other = zscore(others.mean(axis=axis) @ self.to_compare.T)
            windows = zscore(np.einsum("kcs,ps->pkc", self.span_weights, pictures.mean(axis=axis)))
            agreement = np.einsum("pkc,pc->pk", windows, other)
            found.append(self.spans[np.argpartition(-agreement, 0, axis=1)[:, 0]])  # the best span of each pair
        return found[0], found[1]


def window_scores(
    pictures: np.ndarray, columns: np.ndarray, rows: np.ndarray, target: np.ndarray, shared: np.ndarray | None
) -> np.ndarray:
    """Correlation of the detail of each picture's window (column and row spans) with the target's."""
    across = area_weights(columns[:, 0], columns[:, 1], THUMB_SIDE, COMPARE_SIDE)
    down = area_weights(rows[:, 0], rows[:, 1], THUMB_SIDE, COMPARE_SIDE)
    windows = np.einsum("pys,pst,pxt->pyx", down, pictures, across, optimize=True)
    return np.einsum("pd,pd->p", detail(windows, shared), target)


def refine(
    pictures: np.ndarray, columns: np.ndarray, rows: np.ndarray, target: np.ndarray, shared: np.ndarray | None
) -> np.ndarray:
    """Move each end of the window by -step, 0 or +step (1 %, then 0.5 %), one axis at a time, keeping the best."""
    best = window_scores(pictures, columns, rows, target, shared)
    columns, rows = columns.copy(), rows.copy()
    low, high = np.array([0.0, 1.0 - MAX_CROP - 0.02]), np.array([MAX_CROP + 0.02, 1.0])
    for step in REFINE_STEPS:
        moves = [np.array((left, right), dtype=np.float32) for left in (-step, 0, step) for right in (-step, 0, step)]
        for axis in ("columns", "rows"):
            fixed = rows if axis == "columns" else columns
            fixed_weights = area_weights(fixed[:, 0], fixed[:, 1], THUMB_SIDE, COMPARE_SIDE)
            moving = columns if axis == "columns" else rows
            for move in moves:
                trial = np.clip(moving + move, low, high)
                weights = area_weights(trial[:, 0], trial[:, 1], THUMB_SIDE, COMPARE_SIDE)
                if axis == "columns":
                    windows = np.einsum("pys,pst,pxt->pyx", fixed_weights, pictures, weights, optimize=True)
                else:
                    windows = np.einsum("pys,pst,pxt->pyx", weights, pictures, fixed_weights, optimize=True)
                score = np.einsum("pd,pd->p", detail(windows, shared), target)
                better = score > best
                best = np.where(better, score, best)
                moving[better] = trial[better]
    return best
