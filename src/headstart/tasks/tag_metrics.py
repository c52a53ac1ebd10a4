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

DEFAULT_THRESHOLD = 0.5


def tag_scores(probabilities: np.ndarray, targets: np.ndarray, thresholds=None) -> dict[str, float]:
    """acc, map, f1_micro, f1_macro and exact_match of [images, tags] probabilities against 0/1 targets."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(np.int64)
    if not len(targets):
        return {k: float("nan") for k in ("acc", "map", "f1_micro", "f1_macro", "exact_match")}
    limit = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds)
    decided = (probabilities >= limit).astype(np.int64)
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
    decided = (probabilities >= np.asarray(thresholds)).astype(np.int64)
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


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per tag, the probability threshold with the best F1 on these images (0.5 for a tag without positives).

    The threshold is placed halfway between the chosen score and the next lower one, so a slightly
    different image near the boundary is not decided by a tie.
    """
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(np.int64)
    chosen = np.full(targets.shape[1], DEFAULT_THRESHOLD)
    for k in range(targets.shape[1]):
        if not targets[:, k].any() or targets[:, k].all():
            continue
        precision, recall, cuts = precision_recall_curve(targets[:, k], probabilities[:, k])
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
        )
        scored = f1[:-1]  # the last point (recall 0) has no threshold
        best = int(np.flatnonzero(scored == scored.max())[0])
        below = probabilities[:, k][probabilities[:, k] < cuts[best]]
        chosen[k] = (cuts[best] + below.max()) / 2 if len(below) else cuts[best]
    return chosen
