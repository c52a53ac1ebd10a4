"""Pictures: a run's learning curves with stage boundaries, its confusion matrix, and runs overlaid for comparison."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from headstart.core.fileio import atomic_write  # noqa: E402

# Where a plot goes: a file, or (for the HTML report) a buffer in memory.
Target = TypeVar("Target", Path, io.BytesIO)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "", best: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs val, a dashed line where each stage starts.

    best: the kept epoch (best.pt's, 1-based), starred on the val curves. Epoch ticks are whole
    numbers; the legends sit below the plots, never over the curves.
    """
    epochs = np.arange(1, len(history) + 1)
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 5))
    for axis, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        axis.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label=f"train {label}")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "s-", label=f"val {label}")
        if metric == "acc" and all("val_balanced_acc" in row for row in history):
            # Plain accuracy hides a neglected minority class; these two do not.
            axis.plot(epochs, [row["val_balanced_acc"] for row in history], "^--", label="val balanced accuracy")
            axis.plot(epochs, [row["val_f1"] for row in history], "v:", label="val macro-F1")
        if metric == "acc" and all("val_map" in row for row in history):
            # Multi-label: accuracy is per (image, tag) decision; these say how well the tags are found.
            axis.plot(epochs, [row["val_map"] for row in history], "^--", label="val mean average precision")
            axis.plot(epochs, [row["val_f1_micro"] for row in history], "v:", label="val micro-F1")
        if best is not None and 1 <= best <= len(history):
            value = history[best - 1][f"val_{metric}"]
            axis.plot(
                [best],
                [value],
                "*",
                color="gold",
                markeredgecolor="black",
                markersize=16,
                zorder=5,
                label=f"kept (best.pt): epoch {best}",
            )
        axis.set_xlabel("epoch (all stages)")
        axis.set_ylabel(label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        _mark_stages(axis, history)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=9, frameon=False)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _mark_stages(axis, history: list[dict[str, Any]]) -> None:
    previous = None
    for x, row in enumerate(history, start=1):
        if row["stage"] != previous:
            axis.axvline(x - 0.5, color="grey", linestyle="--", linewidth=1)
            axis.text(
                x - 0.45,
                0.98,
                row["stage"],
                transform=axis.get_xaxis_transform(),
                va="top",
                fontsize=10,
                color="dimgrey",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
            previous = row["stage"]


def plot_overlay(runs: list[tuple[str, list[dict[str, Any]]]], path: Path) -> Path:
    """Val loss and val accuracy of many runs: one colour per variant, each seed thin, the seeds' mean thick."""
    variants = list(dict.fromkeys(name for name, _ in runs))
    colours = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric, label in ((axes[0], "val_loss", "val loss"), (axes[1], "val_acc", "val accuracy")):
        for index, variant in enumerate(variants):
            curves = [[row[metric] for row in history] for name, history in runs if name == variant]
            colour = colours(index % colours.N)
            for curve in curves:
                axis.plot(range(1, len(curve) + 1), curve, color=colour, linewidth=0.8, alpha=0.45)
            length = min(len(curve) for curve in curves)
            mean = np.mean([curve[:length] for curve in curves], axis=0)
            axis.plot(range(1, length + 1), mean, color=colour, linewidth=2.4, label=f"{variant} (n={len(curves)})")
        stage_sequences = {tuple(row["stage"] for row in history) for _, history in runs}
        if len(stage_sequences) == 1:
            _mark_stages(axis, runs[0][1])
        axis.set_xlabel("epoch (all stages)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    figure.suptitle("thin: one seed; thick: mean over seeds")
    return _save(figure, path)


def plot_lr_find(
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    suggestion: float,
    minimum_tenth: float,
    path: Path,
    title: str = "",
    at_edge: bool = False,
) -> Path:
    """Loss against learning rate on a log axis, raw and smoothed, with the two suggestions marked.

    The y-axis holds the whole smoothed curve (raw spikes beyond it are cut); a steepest descent at
    the range's edge is drawn as a warning, not a suggestion."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot(lrs, losses, color="lightgrey", linewidth=1, label="loss per step")
    axis.plot(lrs, smoothed, linewidth=2, label="smoothed")
    label = "steepest descent at the range's edge: no suggestion" if at_edge else "suggested (steepest descent)"
    axis.axvline(
        suggestion, color="tab:orange" if at_edge else "tab:green", linestyle="--", label=f"{label}: {suggestion:.2g}"
    )
    axis.axvline(minimum_tenth, color="tab:red", linestyle=":", label=f"minimum/10: {minimum_tenth:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    low, high = min(smoothed), max(smoothed)
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    axis.set_ylim(min(low, min(losses)) - margin, high + margin)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return _save(figure, path)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Target, title: str = "") -> Target:
    """Counts with true classes as rows and predictions as columns."""
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    limit = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axis.text(
            col, row, str(count), ha="center", va="center", color="white" if count > limit else "black", fontsize=8
        )
    if title:
        axis.set_title(title)
    return _save(figure, path)


def plot_precision_recall(
    probabilities: np.ndarray, truth: np.ndarray, classes: list[str], path: Target, title: str = ""
) -> Target:
    """A multi-label model's precision-recall curve per tag (legend: its average precision)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure, axis = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(classes):
        if truth[:, k].any():
            precision, recall, _ = precision_recall_curve(truth[:, k], probabilities[:, k])
            ap = average_precision_score(truth[:, k], probabilities[:, k])
            # A step: precision holds until recall next rises (average precision sums these rectangles).
            axis.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AP {ap:.3f})")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    if title:
        axis.set_title(title, fontsize=9)
    return _save(figure, path)


def plot_reliability(calibration, path: Path) -> Path:
    """Accuracy against confidence per bin (equal counts, each marked with its count), before and after the temperature."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    applied = getattr(calibration, "applied", True)
    curves = [(calibration.bins_before, calibration.ece_before, "before" if applied else "T = 1 (kept)")]
    if applied:
        curves.append((calibration.bins_after, calibration.ece_after, f"after (T = {calibration.temperature:.2f})"))
    for bins, ece, label in curves:
        used = [i for i, count in enumerate(bins["count"]) if count]
        x, y = [bins["confidence"][i] for i in used], [bins["accuracy"][i] for i in used]
        axis.plot(x, y, marker="o", label=f"{label}, ECE {ece:.3f}")
        if bins is calibration.bins_before:
            for cx, cy, text in count_labels(x, y, [bins["count"][i] for i in used]):
                right = cx > 0.8  # near the right edge the label goes left of its point, inside the axes
                offset, align = ((-3, -10), "right") if right else ((3, -10), "left")
                axis.annotate(text, (cx, cy), xytext=offset, textcoords="offset points", fontsize=7, ha=align)
    forecast = getattr(calibration, "forecast", "top class")
    counted = "images" if forecast == "top class" else "(image, tag) pairs"  # what one binned confidence is
    axis.set(xlabel=f"confidence ({forecast})", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    shown = len([c for c in calibration.bins_before["count"] if c])
    why = "it did not lower held-out NLL" if getattr(calibration, "folds", 0) else "too few val images to tell"
    kept = "" if applied else f"\nno temperature applied: {why}"
    axis.set_title(
        f"reliability on {calibration.images} val images, {shown} bins (numbers: {counted} per bin){kept}", fontsize=9
    )
    axis.legend(loc="upper left")
    return _save(figure, path)


def count_labels(
    x: list[float], y: list[float], counts: list[int], near: float = 0.03
) -> list[tuple[float, float, str]]:
    """One label per group of bins drawn on top of each other (a confident model's bins pile up at 1.0).

    A group is the bins within `near` of its first bin on both axes; it reads "167 in 14 bins".
    """
    labels: list[tuple[float, float, list[int]]] = []
    for cx, cy, count in zip(x, y, counts):
        if labels and abs(cx - labels[-1][0]) < near and abs(cy - labels[-1][1]) < near:
            labels[-1][2].append(count)
        else:
            labels.append((cx, cy, [count]))
    return [(cx, cy, f"{sum(c)} in {len(c)} bins" if len(c) > 1 else str(c[0])) for cx, cy, c in labels]


def plot_trials(trials: list[dict[str, Any]], path: Path, metric: str, lower_is_better: bool, title: str = "") -> Path:
    """A search's history: each trial's value (complete: dots, pruned: crosses at their last report), the best so far."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    scored = [t for t in trials if t["value"] is not None and t["state"] in ("complete", "pruned")]
    for state, marker in (("complete", "o"), ("pruned", "x")):
        shown = [t for t in scored if t["state"] == state]
        axis.plot([t["number"] for t in shown], [t["value"] for t in shown], marker, linestyle="", label=state)
    complete = sorted((t["number"], t["value"]) for t in scored if t["state"] == "complete")
    if complete:
        pick = min if lower_is_better else max
        best = [pick(v for _, v in complete[: i + 1]) for i in range(len(complete))]
        axis.step([n for n, _ in complete], best, where="post", label="best so far")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="trial", ylabel=metric)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    axis.set_title(title, fontsize=9)
    return _save(figure, path)


def _save(figure, path: Target) -> Target:
    try:
        figure.tight_layout()
        if isinstance(path, io.BytesIO):  # the HTML report renders into memory
            figure.savefig(path, format="png", dpi=110)
        else:  # rendered in memory, then written atomically: a full disk leaves no half-written picture
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            atomic_write(Path(path), buffer.getvalue())
    finally:
        plt.close(figure)  # pyplot keeps every open figure alive otherwise
    return path
