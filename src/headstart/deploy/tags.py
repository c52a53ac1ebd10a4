"""A multi-label model's answers and scores: the tags at or above their thresholds, and evaluate's figures.

Each answer lists the tags the model gives the image (probability >= the tag's threshold, chosen
on the run's val split), each with its probability, the top-k tags whatever their thresholds, and
`unknown`: true when no tag reaches its threshold, the multi-label model's "none of these".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.plots import Target, plot_precision_recall
from headstart.tasks.multi_label import MULTI_LABEL
from headstart.tasks.tag_metrics import per_tag_table, tag_scores, thresholds_or_default


def given_tags(row: np.ndarray, classes: list[str], thresholds: np.ndarray) -> list[tuple[str, float]]:
    """(tag, probability) for every tag at or above its threshold, most probable first."""
    chosen = np.flatnonzero(MULTI_LABEL.decide(row, thresholds))
    return [(classes[k], float(row[k])) for k in sorted(chosen, key=lambda k: -row[k])]


def tag_entry(image: str, row: np.ndarray, classes: list[str], thresholds: np.ndarray, top_k: int) -> dict[str, Any]:
    """One image's entry in `predict --json` and the server's answer."""
    labels = given_tags(row, classes, thresholds)
    top = sorted(range(len(classes)), key=lambda k: -row[k])[:top_k]
    return {
        "image": image,
        "labels": [{"label": tag, "probability": round(p, 6)} for tag, p in labels],
        "unknown": not labels,  # no tag reached its threshold: none of these
        "top": [{"label": classes[k], "probability": round(float(row[k]), 6)} for k in top],
    }


def entry_line(entry: dict[str, Any]) -> str:
    """The entry as `predict` prints it: its tags, or 'none of these' with the closest tags."""
    if entry["labels"]:
        return "  ".join(f"{t['label']} {t['probability']:.3f}" for t in entry["labels"])
    closest = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in entry["top"])
    return f"none of these (no tag reaches its threshold; closest: {closest})"


@dataclass
class TagEvaluation:
    """evaluate's figures for a multi-label model: mAP, F1, exact match and the per-tag table at its thresholds."""

    classes: list[str]
    count: int
    scores: dict[str, float]  # acc (label-wise), map, f1_micro, f1_macro, exact_match
    per_label: list[dict[str, Any]]
    none_rate: float  # share of images given no tag
    tta: str | None = None
    paths: list[Path] | None = None
    probabilities: np.ndarray | None = None
    truth: np.ndarray | None = None  # [images, tags] of 0/1
    notes: list[str] = field(default_factory=list)
    scored: str = ""
    tag: str = ""

    @property
    def title(self) -> str:
        tta = f"TTA ({self.tta})" if self.tta else "no TTA"
        return f"{self.scored or 'evaluation'}, {tta}\nmAP {self.scores['map']:.3f} on {self.count} images"

    figure_kind = "precision-recall curves"

    @property
    def figure_name(self) -> str:
        """precision-recall-<what was scored>[-tta-<mode>].png."""
        return f"precision-recall-{self.tag or 'data'}" + (f"-tta-{self.tta}" if self.tta else "") + ".png"

    def plot(self, path: Target) -> Target:
        """Each tag's precision-recall curve."""
        assert self.probabilities is not None and self.truth is not None
        return plot_precision_recall(self.probabilities, self.truth, self.classes, path, title=self.title)

    @property
    def accuracy(self) -> float:
        """Label-wise accuracy: the share of (image, tag) decisions that are right."""
        return self.scores["acc"]

    def table(self) -> str:
        tta = f" with TTA ({self.tta})" if self.tta else ""
        lines = [
            *self.notes,
            f"mAP {self.scores['map']:.4f}, micro-F1 {self.scores['f1_micro']:.4f}, macro-F1 "
            f"{self.scores['f1_macro']:.4f}, exact match {self.scores['exact_match']:.4f} on {self.count} images{tta}; "
            f"{self.none_rate:.1%} given no tag",
            f"{'tag':<20} threshold  precision  recall  f1      AP      support",
        ]
        for row in self.per_label:
            ap = "  n/a " if row["average_precision"] is None else f"{row['average_precision']:.4f}"
            lines.append(
                f"{row['label']:<20} {row['threshold']:.3f}      {row['precision']:.4f}     {row['recall']:.4f}  "
                f"{row['f1']:.4f}  {ap}  {row['support']}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": "multi-label",
            "mean_average_precision": self.scores["map"],
            "f1_micro": self.scores["f1_micro"],
            "f1_macro": self.scores["f1_macro"],
            "exact_match": self.scores["exact_match"],
            "label_accuracy": self.scores["acc"],
            "none_rate": self.none_rate,
            "tta": self.tta,
            "scored": self.scored,
            "count": self.count,
            "per_label": self.per_label,
            "classes": self.classes,
            "notes": self.notes,
        }


def evaluate_tags(
    probabilities: np.ndarray, truth: np.ndarray, classes: list[str], thresholds: list[float] | None
) -> TagEvaluation:
    limits = thresholds_or_default(thresholds, len(classes))
    decided = MULTI_LABEL.decide(probabilities, limits).astype(bool)
    return TagEvaluation(
        classes=classes,
        count=len(truth),
        scores=tag_scores(probabilities, truth, limits),
        per_label=per_tag_table(probabilities, truth, limits, classes),
        none_rate=float((~decided.any(1)).mean()) if len(truth) else float("nan"),
        probabilities=probabilities,
        truth=truth,
    )
