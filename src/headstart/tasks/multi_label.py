"""The multi-label task: each image carries any number of N tags (none included).

One sigmoid per tag, trained with binary cross-entropy (or timm's asymmetric loss), and a decision
per tag: its probability at or above that tag's threshold. Thresholds default to 0.5 while
training and are chosen per tag on the val split afterwards (tasks.tag_metrics.choose_thresholds).
An image with no tag above its threshold is this task's "none of these".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel
from torch import nn

from headstart.config.recipe import MonitorName
from headstart.tasks.single_label import Scores

DEFAULT_THRESHOLD = 0.5  # a tag's threshold while training, and for a model without chosen ones


class SmoothedBCE(nn.Module):
    """Binary cross-entropy on logits, the targets moved towards 0.5 by `smoothing`, positives weighted per tag."""

    def __init__(self, pos_weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = smoothing
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        if self.smoothing:
            targets = targets * (1 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)


class MultiLabel:
    name = "multi-label"
    # What each epoch's val scoring reports (history's val_<name> columns), at a 0.5 threshold per tag.
    metrics = ("loss", "acc", "map", "f1_micro", "f1_macro", "exact_match")
    # run.monitor 'auto': mean average precision. The val BCE is mostly the many easy negatives and
    # rose early in fine-tuning while mAP still climbed (BENCHMARKS.md, multi-label).
    monitor: MonitorName = "val_map"

    def loss(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, kind: str = "bce") -> nn.Module:
        """BCE, or the asymmetric loss (Ridnik et al. 2021) on its paper's defaults; `weight` weighs each tag's positives."""
        if kind == "asymmetric":
            return AsymmetricLossMultiLabel(smoothing=label_smoothing, reduction="mean", pos_weight=weight)
        return SmoothedBCE(weight, label_smoothing)

    def nll(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over every (image, tag): what calibration minimises."""
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        logits = logits.float()
        return (logits / temperature if temperature else logits).sigmoid()

    def decide(self, probabilities: Scores, thresholds: Scores | None = None) -> Scores:
        """0/1 per (image, tag): the probability at or above the tag's threshold (0.5 where none is given)."""
        if isinstance(probabilities, torch.Tensor):
            limit = thresholds if thresholds is not None else torch.full((probabilities.shape[-1],), DEFAULT_THRESHOLD)
            return (probabilities >= limit.to(probabilities.device)).long()
        limit = np.asarray(thresholds) if thresholds is not None else DEFAULT_THRESHOLD
        return (np.asarray(probabilities) >= limit).astype(np.int64)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        """Images whose every tag is right at 0.5 (a logit of 0): the exact-match count."""
        return int(((logits > 0).long() == labels.long()).all(1).sum())

    def confidence_and_correct(self, probabilities: torch.Tensor, labels: torch.Tensor):
        """Every (image, tag) is one yes/no forecast: its probability against whether the tag is there."""
        return probabilities.reshape(-1), labels.reshape(-1).double()


MULTI_LABEL = MultiLabel()
