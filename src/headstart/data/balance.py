"""Class imbalance: the warning, and the two remedies `data.balance` offers.

weights   cross-entropy weighted by inverse class frequency (n / (k * n_c)), so every class
          carries the same total weight in an epoch
sampler   class-balanced batches: each epoch draws len(train) indices with probability 1/(k * n_c)
          each, with replacement, from a generator seeded by (seed, epoch) alone, so the order is
          the same on resume and the same global batches are cut for any number of processes
Multi-label data: `weights` is per-label positive weights (negatives / positives) in the BCE loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from headstart.config.recipe import BalanceName
from headstart.core.errors import HeadstartError
from headstart.data.splits import MULTI, SINGLE, Label, label_counts

log = logging.getLogger("headstart")

# The largest class this many times the smallest is imbalanced enough to warn and to rebalance by default.
IMBALANCE_RATIO = 3.0
# The measured winner on ../shared/data/tiles (BENCHMARKS.md, imbalance), used when the warning fires.
DEFAULT_REMEDY: BalanceName = "sampler"


def choose_balance(
    setting: BalanceName | None, labels: list[Label], classes: list[str], task: str = SINGLE
) -> BalanceName:
    """The remedy a run uses: the recipe's, else DEFAULT_REMEDY when the train split is imbalanced, else none.

    Logs the warning with the counts whenever the largest class is >= IMBALANCE_RATIO x the smallest.
    Multi-label data is rebalanced only when asked, by per-label positive weights: every tag is rare
    against its negatives, and a tag has no batch of its own for a sampler to draw.
    """
    if task == MULTI:
        if setting == "sampler":
            raise HeadstartError(
                "data.balance sampler draws class-balanced batches, which multi-label data has no single class for; "
                "use weights (per-label positive weights) or none"
            )
        return setting or "none"
    counts = label_counts(labels, len(classes))
    big, small = int(np.flatnonzero(counts == counts.max())[0]), int(np.flatnonzero(counts == counts.min())[0])
    imbalanced = counts[small] > 0 and counts[big] >= IMBALANCE_RATIO * counts[small]
    chosen: BalanceName = setting or (DEFAULT_REMEDY if imbalanced else "none")
    if imbalanced:
        log.warning(
            "imbalanced classes: '%s' has %d training images, '%s' %d (%.1fx); balance: %s%s",
            classes[big],
            counts[big],
            classes[small],
            counts[small],
            counts[big] / counts[small],
            chosen,
            "" if setting else " (the default for imbalanced data; set data.balance to choose)",
        )
    return chosen


def class_weights(labels: Sequence[Label], n_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, n / (k * n_c): 1 for every class of a balanced set."""
    counts = label_counts(labels, n_classes).astype(np.float64)
    weights = np.divide(counts.sum(), n_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def positive_weights(labels: list[Label], n_classes: int) -> torch.Tensor:
    """Per-label BCE positive weights, negatives / positives: a tag on 1 image in 10 counts its positives 9x."""
    positives = label_counts(labels, n_classes).astype(np.float64)
    negatives = len(labels) - positives
    weights = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(labels: Sequence[Label], n_classes: int) -> torch.Tensor:
    """Drawing weights for GlobalBatches: 1/(k * n_c) per image, so each class fills 1/k of every epoch on average."""
    counts = label_counts(labels, n_classes).astype(np.float64)
    per_image = 1.0 / (n_classes * counts[np.asarray(labels, dtype=np.int64)])
    return torch.tensor(per_image, dtype=torch.float64)
