"""Unknown images ("none of these"): a score of how far an image's features lie from the training classes.

A classifier always answers one of its classes, even for a photo of something else entirely, a
blank frame or noise. After training, headstart fits a Mahalanobis detector (Lee et al. 2018) on
the penultimate features (the input of the head's last Linear) of the training images, seen
through the eval transform:

    z      the features, L2-normalised (on raw features flat colours and small-norm images come
           out close to every class mean; normalised, they do not: BENCHMARKS.md, "Unknown images")
    score  min over classes c of (z - mean_c)^T P (z - mean_c), P the inverse of the classes'
           shared covariance, shrunk towards a multiple of the identity (Ledoit-Wolf), since a
           run has fewer training images than feature dimensions

The threshold is the ⌈(n + 1) · QUANTILE⌉-th smallest of the n val images' scores (split
conformal prediction): a new image from the same distribution as val then stays known with
probability at least QUANTILE, where the plain 95th percentile of val holds that only on val
itself. An image scoring above it is "unknown" (its top labels are still given).
P is stored as its Cholesky factor W (P = W W^T) and the class means already multiplied by it,
so the score is a squared distance between two matrix products: a few ops any runtime has, which
ONNX and torch.export graphs compute beside the logits (`UnknownScore`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

METHOD = "mahalanobis-l2"
QUANTILE = 0.95  # of the val scores: the share of known images kept known
MIN_NORM = 1e-12
RIDGE = 1e-6  # times the mean variance, added to the covariance's diagonal


def normalised(features: torch.Tensor) -> torch.Tensor:
    # Written out rather than .norm(): onnxruntime's shape inference (run before int8 quantization) fails on ReduceL2.
    return features / (features * features).sum(1, keepdim=True).sqrt().clamp_min(MIN_NORM)


class UnknownScore(nn.Module):
    """features [N, D] -> scores [N]: the squared whitened distance of the L2-normalised features to the nearest class mean."""

    whitening: torch.Tensor
    centres: torch.Tensor

    def __init__(self, whitening: torch.Tensor, centres: torch.Tensor):
        super().__init__()
        # Stored in float32 (half the bytes in every checkpoint and export), computed in float64: a
        # known image lies close to a class mean, so the score is a small difference of large squared
        # norms, which float32 arithmetic left changing by a few tenths with the batch it came in.
        self.register_buffer("whitening", whitening.float())  # W [D, D], P = W W^T
        self.register_buffer("centres", centres.float())  # class means times W [C, D]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        whitening, centres = self.whitening.double(), self.centres.double()
        whitened = normalised(features.double()) @ whitening
        # |y - m|^2 = |y|^2 - 2 y.m + |m|^2, as matrix products (no [N, C, D] intermediate)
        squared = (whitened * whitened).sum(1, keepdim=True) - 2 * whitened @ centres.T + (centres * centres).sum(1)
        return squared.min(1).values.clamp_min(0).float()


class UnknownScore32(nn.Module):
    """UnknownScore in float32 arithmetic, for runtimes without float64 (LiteRT, Core ML).

    The differences to each class mean are taken before squaring, so nothing cancels and float32
    keeps the score to a few parts in a million (an [N, C, D] intermediate: fine for the one image
    at a time those runtimes are given).
    """

    whitening: torch.Tensor
    centres: torch.Tensor

    def __init__(self, score: UnknownScore):
        super().__init__()
        self.register_buffer("whitening", score.whitening.float())
        self.register_buffer("centres", score.centres.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        whitened = normalised(features.float()) @ self.whitening
        differences = whitened[:, None, :] - self.centres[None]
        return (differences * differences).sum(2).min(1).values


@dataclass(frozen=True)
class UnknownRule:
    """What prediction needs once the score is computed (in PyTorch or inside an exported graph): the threshold."""

    threshold: float
    method: str = METHOD
    val_rate: float | None = None  # share of the run's val images flagged, where known

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def fields(self) -> dict[str, Any]:
        """What an export description or ensemble.json records of it (read back by deploy.unknown.RuleFields)."""
        return {"method": self.method, "threshold": self.threshold, "val_rate": self.val_rate}

    def describe(self) -> str:
        val = f", {self.val_rate:.1%} of the run's val images above it" if self.val_rate is not None else ""
        return f"threshold {self.threshold:.4g} ({self.method}{val})"


@dataclass
class UnknownDetector:
    """A fitted detector: its tensors, the threshold and what the val split showed."""

    whitening: torch.Tensor
    centres: torch.Tensor
    threshold: float
    val_rate: float  # share of val images above the threshold (about 1 - QUANTILE by construction)
    val_images: int
    train_images: int
    method: str = METHOD

    @property
    def dimensions(self) -> int:
        return int(self.whitening.shape[0])

    @property
    def rule(self) -> UnknownRule:
        return UnknownRule(self.threshold, self.method, self.val_rate)

    def module(self) -> UnknownScore:
        return UnknownScore(self.whitening, self.centres)

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.module()(features)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings: what a checkpoint read with weights_only=True holds."""
        return {
            "method": self.method,
            "whitening": self.whitening.contiguous(),
            "centres": self.centres.contiguous(),
            "threshold": float(self.threshold),
            "val_rate": float(self.val_rate),
            "val_images": int(self.val_images),
            "train_images": int(self.train_images),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UnknownDetector:
        return cls(
            whitening=values["whitening"],
            centres=values["centres"],
            threshold=float(values["threshold"]),
            val_rate=float(values["val_rate"]),
            val_images=int(values["val_images"]),
            train_images=int(values["train_images"]),
            method=str(values.get("method", METHOD)),
        )

    def summary_line(self) -> str:
        return (
            f"unknown images: {self.method} on the penultimate features of {self.train_images} train images, "
            f"threshold {self.threshold:.4g} flags {self.val_rate:.1%} of {self.val_images} val images"
        )


def threshold_for(scores: torch.Tensor, keep: float = QUANTILE) -> float:
    """The ⌈(n + 1) · keep⌉-th smallest of n known images' scores: new known images stay below it with probability ≥ keep."""
    ordered = scores.double().flatten().sort().values
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * keep))
    return float(ordered[rank - 1])


def shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf: the sample covariance shrunk towards a multiple of the identity, by the optimal amount."""
    from sklearn.covariance import ledoit_wolf  # only fitting needs scikit-learn's estimator

    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    # Shrinkage 0 (features that do not vary at all, as in a tiny test model) would leave it singular.
    ridge = RIDGE * max(float(np.trace(covariance)) / len(covariance), MIN_NORM)
    return covariance + ridge * np.eye(len(covariance))


def fit_unknown(
    train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor
) -> UnknownDetector:
    """Class means and shrunk shared covariance from the train features; the threshold from the val features."""
    features = normalised(train_features.double()).numpy()
    labels = train_labels.long().numpy()
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = np.linalg.inv(shrunk_covariance(centred))
    whitening = np.linalg.cholesky((precision + precision.T) / 2)  # symmetric up to rounding
    detector = UnknownDetector(
        # float32 as stored, so the threshold below is that of the scores predictions will compute
        whitening=torch.from_numpy(whitening).float(),
        centres=torch.from_numpy(means @ whitening).float(),
        threshold=0.0,
        val_rate=0.0,
        val_images=len(val_features),
        train_images=len(train_features),
    )
    val_scores = detector.score(val_features)
    detector.threshold = threshold_for(val_scores)
    detector.val_rate = float((val_scores > detector.threshold).double().mean())
    return detector
