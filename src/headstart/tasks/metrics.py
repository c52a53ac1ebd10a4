"""Scores from a confusion matrix: accuracy, balanced accuracy (mean per-class recall) and macro-F1.

Plain accuracy hides a minority class (952 of one class and 32 of another score 0.97 by always
answering the first); the two class-averaged scores do not. A class absent from the labels has no
recall and is left out of both averages (scikit-learn's balanced_accuracy_score does the same).
"""

from __future__ import annotations

import numpy as np
import torch


def confusion(labels, predictions, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return counts


def scores(counts: np.ndarray) -> dict[str, float]:
    """acc, balanced_acc and f1 (macro) of a confusion matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    true_per_class = counts.sum(axis=1)
    predicted_per_class = counts.sum(axis=0)
    hits = np.diag(counts)
    present = true_per_class > 0
    recall = np.divide(hits, true_per_class, out=np.zeros_like(hits), where=present)
    precision = np.divide(hits, predicted_per_class, out=np.zeros_like(hits), where=predicted_per_class > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits), where=precision + recall > 0)
    return {
        "acc": float(hits.sum() / total) if total else float("nan"),
        "balanced_acc": float(recall[present].mean()) if present.any() else float("nan"),
        "f1": float(f1[present].mean()) if present.any() else float("nan"),
    }


# What "best" means (run.monitor): the lowest val loss, or the highest of the others.
LOWER_IS_BETTER = {"val_loss"}


def improved(row: dict, best: dict | None, monitor: str) -> bool:
    """Whether epoch `row` beats `best` on `monitor` (strictly: ties keep the earlier epoch)."""
    if not best:
        return True
    if monitor not in row or monitor not in best:  # a history from before the metric existed
        monitor = "val_loss"
    return row[monitor] < best[monitor] if monitor in LOWER_IS_BETTER else row[monitor] > best[monitor]


def best_index(history: list[dict], monitor: str) -> int:
    """Position of the best epoch of a history (the first among equals), as training chose it."""
    best = 0
    for index, row in enumerate(history):
        if improved(row, history[best], monitor):
            best = index
    return best


@torch.no_grad()
def score_batches(module, batches, task, hw, group, n_classes: int) -> tuple[dict[str, float], torch.Tensor]:
    """Mean loss, accuracy, balanced accuracy and macro-F1 over all processes' batches, in eval mode.

    Returns the scores and this process's predictions. Confusion counts are summed over the
    processes, so the class-averaged scores are those of the whole split.
    """
    module.eval()
    criterion = task.loss()
    total_loss, predictions = 0.0, []
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    for inputs, labels in batches:
        inputs, labels = hw.to_input(inputs), labels.to(hw.device)
        with hw.autocast():
            logits = module(inputs).float()
        total_loss += criterion(logits, labels).item() * len(labels)
        predicted = task.decide(logits)
        counts += confusion(labels.cpu().numpy(), predicted.cpu().numpy(), n_classes)
        predictions.append(predicted.cpu())
    summed = group.sum([total_loss, *counts.ravel().tolist()])
    totals = np.asarray(summed[1:], dtype=np.float64).reshape(counts.shape)
    result = scores(totals)
    result["loss"] = float(summed[0] / totals.sum()) if totals.sum() else float("nan")
    return result, torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
