"""Scores per epoch: from a confusion matrix (single-label), or from all probabilities (multi-label: tag_metrics).

Single-label: accuracy, balanced accuracy (mean per-class recall) and macro-F1.

Plain accuracy hides a minority class (952 of one class and 32 of another score 0.97 by always
answering the first); the two class-averaged scores do not. A class absent from the labels has no
recall and is left out of both averages (scikit-learn's balanced_accuracy_score does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from headstart.config.recipe import MonitorName
from headstart.core.errors import HeadstartError
from headstart.tasks.tag_metrics import per_tag_table, tag_scores


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


def choose_monitor(monitor: MonitorName | Literal["auto"], task) -> MonitorName:
    """run.monitor for this task: 'auto' is the task's own (task.monitor); a score the task lacks is a one-line error.

    E.g. val_map on single-label data.
    """
    if monitor == "auto":
        return task.monitor
    if monitor.removeprefix("val_") not in task.metrics:
        valid = ", ".join(f"val_{name}" for name in task.metrics)
        raise HeadstartError(f"run.monitor {monitor} is not a {task.name} score; valid: {valid}")
    return monitor


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
def score_batches(
    module, batches, task, hw, group, n_classes: int, kind: str = "", decision: TagDecision | None = None
) -> dict[str, Any]:
    """Mean loss and the task's scores (task.metrics) over all processes' batches, in eval mode.

    Single-label: confusion counts summed over the processes, so the class-averaged scores are
    those of the whole split. Multi-label: every process's probabilities gathered (mean average
    precision needs all of them), decided at 0.5 per tag, or by `decision` (the temperature and
    per-tag thresholds chosen on val), which also adds the per-tag table ("per_label").
    """
    module.eval()
    criterion = task.loss(kind=kind)
    total_loss, seen = 0.0, 0
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    outputs, targets = [], []
    for inputs, labels in batches:
        inputs, labels = hw.to_input(inputs), labels.to(hw.device)
        with hw.autocast():
            logits = module(inputs).float()
        total_loss += criterion(logits, labels).item() * len(labels)
        seen += len(labels)
        if task.name == "multi-label":
            outputs.append(task.probabilities(logits, decision.temperature if decision else None).cpu())
            targets.append(labels.cpu())
        else:
            counts += confusion(labels.cpu().numpy(), task.decide(logits).cpu().numpy(), n_classes)
    summed = group.sum([total_loss, seen, *counts.ravel().tolist()])
    result: dict[str, Any]
    if task.name == "multi-label":
        empty = torch.zeros(0, n_classes)
        probabilities = group.gather(torch.cat(outputs) if outputs else empty).numpy()
        truth = group.gather(torch.cat(targets) if targets else empty).numpy()
        result = dict(tag_scores(probabilities, truth, decision.thresholds if decision else None))
        if decision is not None:
            result["per_label"] = per_tag_table(probabilities, truth, decision.thresholds, decision.tags)
    else:
        result = scores(np.asarray(summed[2:], dtype=np.float64).reshape(counts.shape))
    result["loss"] = float(summed[0] / summed[1]) if summed[1] else float("nan")
    return result


@dataclass(frozen=True)
class TagDecision:
    """How a multi-label model's outputs become tags: its temperature (None: none) and per-tag thresholds."""

    temperature: float | None
    thresholds: list[float]
    tags: list[str]
