"""evaluate's figures for a single-label model: accuracy, per-class precision/recall/F1, the confusion matrix.

(A multi-label model's are deploy.tags.TagEvaluation's.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from headstart.core.plots import plot_confusion
from headstart.deploy.unknown import unknown_line
from headstart.tasks.single_label import SINGLE_LABEL


@dataclass
class Evaluation:
    accuracy: float
    classes: list[str]
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion: np.ndarray
    count: int
    plain_accuracy: float | None = None  # without test-time augmentation, when it was used
    tta: str | None = None
    paths: list[Path] | None = None  # the images evaluated, in order
    probabilities: np.ndarray | None = None  # [images, classes]
    truth: np.ndarray | None = None  # true label index per image
    # Which images were scored, when that is not simply "all of DATA" (headstart.data.holdout), and warnings.
    notes: list[str] = field(default_factory=list)
    scored: str = ""  # what was scored, in words: "the run's held-out test split", "folder ants/val"
    tag: str = ""  # the same as a file name part: "test", "val", "folder-ants-val"
    unknown: dict[str, Any] | None = None  # flagged, rate, threshold, method, val_rate: with a detector
    unknown_scores: np.ndarray | None = None  # each image's unknown-image score: with a detector

    figure_kind = "confusion matrix"

    @property
    def title(self) -> str:
        """A figure's title: what was scored, with or without TTA, and the accuracy."""
        tta = f"TTA ({self.tta})" if self.tta else "no TTA"
        return f"{self.scored or 'evaluation'}, {tta}\naccuracy {self.accuracy:.3f} on {self.count} images"

    @property
    def figure_name(self) -> str:
        """confusion-<what was scored>[-tta-<mode>].png: never a run's or a Hub folder's own file name."""
        return f"confusion-{self.tag or 'data'}" + (f"-tta-{self.tta}" if self.tta else "") + ".png"

    def most_confident_mistakes(self, count: int) -> list[tuple[Path, str, str, float]]:
        """(image, true label, predicted label, its probability) for the wrong predictions made with the most confidence."""
        probabilities, truth, paths = self.probabilities, self.truth, self.paths
        assert probabilities is not None and truth is not None and paths is not None  # evaluate_samples keeps them
        predicted = SINGLE_LABEL.decide(probabilities)
        wrong = [i for i in range(len(predicted)) if predicted[i] != truth[i]]
        wrong.sort(key=lambda i: -probabilities[i, predicted[i]])
        return [
            (
                paths[i],
                self.classes[truth[i]],
                self.classes[predicted[i]],
                float(probabilities[i, predicted[i]]),
            )
            for i in wrong[:count]
        ]

    def table(self) -> str:
        headline = f"accuracy {self.accuracy:.4f} on {self.count} images"
        if self.plain_accuracy is not None:
            headline += f" with TTA ({self.tta}); without: {self.plain_accuracy:.4f}, change {self.accuracy - self.plain_accuracy:+.4f}"
        unknown = [unknown_line(self.unknown, self.count)] if self.unknown else []
        lines = [*self.notes, headline, *unknown, f"{'class':<20} precision  recall  f1      support"]
        for row in self.per_class:
            lines.append(
                f"{row['class']:<20} {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": "single-label",
            "accuracy": self.accuracy,
            "accuracy_without_tta": self.plain_accuracy,
            "tta": self.tta,
            "scored": self.scored,
            "count": self.count,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
            "classes": self.classes,
            "notes": self.notes,
            **({"unknown": self.unknown} if self.unknown is not None else {}),
        }

    def plot(self, path: Path) -> Path:
        """The confusion matrix PNG."""
        return plot_confusion(self.confusion, self.classes, path, title=self.title)


def evaluate_classes(
    probabilities: np.ndarray, truth: np.ndarray, classes: list[str], plain_accuracy: float | None = None
) -> Evaluation:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of [images, classes] probabilities."""
    predicted = SINGLE_LABEL.decide(probabilities)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    per_class = [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    return Evaluation(
        float((truth == predicted).mean()),
        classes,
        per_class,
        confusion_matrix(truth, predicted, labels=labels),
        len(truth),
        plain_accuracy,
        probabilities=probabilities,
        truth=truth,
    )
