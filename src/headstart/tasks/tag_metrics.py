"""Multi-label scores: mean average precision, micro-/macro-F1, exact match, and per-tag thresholds.

mAP is macro: the mean over tags of scikit-learn's average precision (area under the tag's
precision-recall curve), over the tags with at least one positive in the split (a tag without
positives has no AP). F1 and exact match depend on thresholds: 0.5 per tag while training, the
per-tag thresholds chosen on val (`choose_thresholds`) after it. `acc` is label-wise accuracy
(1 - Hamming loss: the share of (image, tag) decisions that are right), fastai's accuracy_multi.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

from headstart.tasks.multi_label import DEFAULT_THRESHOLD, MULTI_LABEL

# Pseudo-positives pulling each tag's own threshold toward the shared one. On mosaics of textures and
# cat_breeds (80 val images, 15-30 positives per tag) a tag's own F1-best cut overfit val: test
# micro-F1 0.735 / 0.643 with each tag's own, 0.760 / 0.647 with one shared cut, 0.760 / 0.650 at
# prior 100 (BENCHMARKS.md, multi-label). With thousands of positives a tag keeps its own.
THRESHOLD_PRIOR = 100.0


def thresholds_or_default(thresholds: list[float] | None, count: int) -> np.ndarray:
    """A model's per-tag thresholds, or DEFAULT_THRESHOLD for each of its `count` tags where it has none."""
    return np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * count, dtype=np.float64)


def tag_scores(probabilities: np.ndarray, targets: np.ndarray, thresholds=None) -> dict[str, float]:
    """acc, map, f1_micro, f1_macro and exact_match of [images, tags] probabilities against 0/1 targets."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(np.int64)
    if not len(targets):
        return {k: float("nan") for k in ("acc", "map", "f1_micro", "f1_macro", "exact_match")}
    decided = MULTI_LABEL.decide(probabilities, thresholds)
    present = targets.sum(0) > 0
    f1 = {
        average: float(precision_recall_fscore_support(targets, decided, average=average, zero_division=0)[2])
        for average in ("micro", "macro")
    }
    return {
        "acc": float((decided == targets).mean()),
        "map": float(np.mean(per_tag_ap(probabilities, targets)[present])) if present.any() else float("nan"),
        "f1_micro": f1["micro"],
        "f1_macro": f1["macro"],
        "exact_match": float((decided == targets).all(1).mean()),
    }


def per_tag_ap(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision per tag (NaN for a tag without positives)."""
    return np.array(
        [
            average_precision_score(targets[:, k], probabilities[:, k]) if targets[:, k].any() else np.nan
            for k in range(targets.shape[1])
        ]
    )


def per_tag_table(probabilities: np.ndarray, targets: np.ndarray, thresholds, tags: list[str]) -> list[dict]:
    """One row per tag: its threshold, precision, recall, F1, average precision and support (positives)."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(np.int64)
    decided = MULTI_LABEL.decide(probabilities, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, decided, average=None, labels=list(range(len(tags))), zero_division=0
    )
    ap = per_tag_ap(probabilities, targets)
    return [
        {
            "label": tag,
            "threshold": float(thresholds[k]),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "average_precision": None if np.isnan(ap[k]) else float(ap[k]),
            "support": int(support[k]),
        }
        for k, tag in enumerate(tags)
    ]


def choose_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, prior: float = THRESHOLD_PRIOR, shared: float | None = None
) -> np.ndarray:
    """Per tag, the probability threshold with the best F1 on these images, shrunk toward one shared threshold.

    The shared threshold is the one best for micro-F1 over every (image, tag); a tag's own is
    pulled toward it by `prior` pseudo-positives: t = (n * own + prior * shared) / (n + prior) for
    a tag with n positives here (prior 0: each tag's own; a tag without positives, or with nothing
    but positives, takes the shared one; `shared` is shared_cut's, where the caller has it). A cut is
    placed halfway between the chosen score and the next lower one, so an image near the boundary
    is not decided by a tie.
    """
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(np.int64)
    shared = shared_cut(probabilities, targets) if shared is None else shared
    chosen = np.full(targets.shape[1], shared)
    for k in range(targets.shape[1]):
        positives = int(targets[:, k].sum())
        if 0 < positives < len(targets):
            own = best_cut(probabilities[:, k], targets[:, k])
            chosen[k] = (positives * own + prior * shared) / (positives + prior)
    return chosen


def shared_cut(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The one threshold best for micro-F1 over every (image, tag)."""
    return best_cut(np.asarray(probabilities).reshape(-1), np.asarray(targets).reshape(-1))


def best_cut(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold with the best F1 of `scores` against 0/1 `truth` (0.5 without both kinds)."""
    if truth.min() == truth.max():
        return DEFAULT_THRESHOLD
    precision, recall, cuts = precision_recall_curve(truth, scores)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    scored = f1[:-1]  # the last point (recall 0) has no threshold
    best = int(np.flatnonzero(scored == scored.max())[0])
    below = scores[scores < cuts[best]]
    return float((cuts[best] + below.max()) / 2 if len(below) else cuts[best])
