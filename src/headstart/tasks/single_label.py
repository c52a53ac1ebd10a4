"""The single-label task: each image is one of N classes.

The only place where the task's rules live: the loss (cross-entropy, optionally class-weighted
and label-smoothed), the output activation (softmax, after dividing by a fitted temperature) and
the decision (the class of the highest score). Training, scoring, calibration, prediction and
inspection ask this object rather than calling torch's functions themselves, so another task
(several labels per image, say) is another object with the same methods.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.config.recipe import MonitorName

# Scores and decisions come as the same kind: tensors in training, arrays in prediction and inspection.
Scores = TypeVar("Scores", torch.Tensor, np.ndarray)


class SingleLabel:
    name = "single-label"
    # What each epoch's val scoring reports (history's val_<name> columns).
    metrics = ("loss", "acc", "balanced_acc", "f1")
    monitor: MonitorName = "val_loss"  # what run.monitor 'auto' means for this task

    def loss(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, kind: str = "") -> nn.Module:
        """The training criterion; it also takes soft targets (Mixup/CutMix) as rows of probabilities.

        `kind` names a multi-label loss; one class per image has the one criterion.
        """
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def nll(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the true labels: what calibration minimises."""
        return F.cross_entropy(logits, labels)

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Class probabilities per row, the logits divided by `temperature` first when one was fitted."""
        logits = logits.float()
        return (logits / temperature if temperature else logits).softmax(1)

    def decide(self, scores: Scores, thresholds: Scores | None = None) -> Scores:
        """The predicted class of each row of logits or probabilities (a tensor or an array); no thresholds here."""
        return scores.argmax(1) if isinstance(scores, torch.Tensor) else np.asarray(scores).argmax(axis=1)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        """Images whose top class is their label (soft Mixup targets are not labels: pass the hard ones)."""
        return int((logits.argmax(1) == labels).sum())

    def confidence_and_correct(self, probabilities: torch.Tensor, labels: torch.Tensor):
        """The top class's probability per image, and whether that class is the label: what reliability bins."""
        confidence, predicted = probabilities.max(1)
        return confidence, (predicted == labels).double()


SINGLE_LABEL = SingleLabel()
