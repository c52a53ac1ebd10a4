"""Pseudo-labels for unlabelled images, from the frozen backbone's embeddings (self-training, cheap).

A teacher (logistic regression on the L2-normalised embeddings of the labelled train images) labels
the unlabelled ones; an image keeps its pseudo-label only where the teacher agrees with label
spreading over the k-nearest-neighbour graph of all embeddings, and the teacher is refitted on the
labelled plus kept images for ROUNDS rounds. The kept images join the train split (never val or
test). The val split decides whether they do at all: when the teacher fitted with them scores below
the teacher without them on val, none are used. Measured on the five dev sets with labels hidden
(BENCHMARKS.md, "Few labels"): agreement-filtered self-training was the one variant that gained on
four sets; class-capped selection lost on the imbalanced one.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from headstart.config.recipe import HeadConfig, Recipe
from headstart.core.errors import HeadstartError
from headstart.core.hardware import Hardware
from headstart.data.splits import SINGLE, DataSplit, Sample
from headstart.data.unlabeled import Unlabeled, drop_known, list_unlabeled
from headstart.training.embeddings import Embedder

log = logging.getLogger("headstart")

ROUNDS = 3
NEIGHBOURS = 10
# Label spreading's neighbour search grows with the square of the images: past this many unlabelled
# images a seeded random subset of this size is labelled (the log says so).
MAX_POOL = 50_000
# Inverse regularisation of the teacher; the embeddings are unit vectors, so one value fits every set.
TEACHER_C = 10.0


@dataclass
class PseudoLabels:
    """What the unlabelled images gave: the samples added to train, their teacher confidences, and counts."""

    source: str
    unlabeled: Unlabeled
    samples: list[Sample] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    val_without: float = 0.0
    val_with: float = 0.0
    why_none: str = ""  # when none are used

    def per_class(self, classes: list[str]) -> dict[str, int]:
        counts = np.bincount([label for _, label in self.samples], minlength=len(classes))
        return dict(zip(classes, counts.tolist(), strict=True))

    def describe(self, classes: list[str]) -> str:
        head = f"pseudo-labels: {self.unlabeled.describe()}"
        if not self.samples:
            return f"{head}; none used ({self.why_none})"
        shares = ", ".join(f"{name} {count}" for name, count in self.per_class(classes).items())
        return (
            f"{head}; {len(self.samples):,} used (per class: {shares}; mean confidence "
            f"{np.mean(self.confidence):.3f}, lowest {min(self.confidence):.3f}); teacher val acc "
            f"{self.val_without:.4f} -> {self.val_with:.4f}"
        )

    def csv_text(self, classes: list[str]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "confidence"])
        for (path, label), confidence in zip(self.samples, self.confidence, strict=True):
            writer.writerow([str(path), classes[int(label)], f"{confidence:.4f}"])  # type: ignore[arg-type]  # single-label
        return buffer.getvalue()


def embedder_for(recipe: Recipe, preprocessing: dict, hw: Hardware) -> Embedder:
    """The recipe's pretrained backbone cut after its pooling (a linear head: the cut is the same for any head)."""
    plain = recipe.model_copy(deep=True)
    plain.model.head = HeadConfig(kind="linear")
    return Embedder(plain, preprocessing, hw)


def pseudo_label(split: DataSplit, recipe: Recipe, preprocessing: dict, hw: Hardware) -> PseudoLabels:
    """Label recipe.data.unlabeled's images with the teacher and return what to add to train."""
    source = str(recipe.data.unlabeled)
    if split.task != SINGLE:
        raise HeadstartError(f"data.unlabeled takes single-label data; {split.name} is {split.task}")
    unlabeled = drop_known(list_unlabeled(source), split, source)
    if len(unlabeled.paths) > MAX_POOL:
        chosen = np.random.default_rng(recipe.run.seed).choice(len(unlabeled.paths), MAX_POOL, replace=False)
        log.info("pseudo-labels: a random %d of the %d unlabelled images are labelled", MAX_POOL, len(unlabeled.paths))
        unlabeled.paths = [unlabeled.paths[i] for i in sorted(chosen)]
    train_paths = [path for path, _ in split.train]
    val_paths = [path for path, _ in split.val]
    # Building the embedder draws a head's initial weights: the run's own draws must not shift because of it,
    # so a run whose pseudo-labels are all turned down is the labelled-only run, bit for bit.
    with torch.random.fork_rng(devices=[]):
        vectors, ok = embedder_for(recipe, preprocessing, hw).files(train_paths + val_paths + unlabeled.paths)
    vectors = np.asarray(vectors, dtype=np.float32)
    n_train, n_val = len(train_paths), len(val_paths)
    train_rows = np.nonzero(ok[:n_train])[0]
    val_rows = n_train + np.nonzero(ok[n_train : n_train + n_val])[0]
    pool = n_train + n_val + np.nonzero(ok[n_train + n_val :])[0]
    labels = np.array([label for _, label in split.train])[train_rows]
    val_labels = np.array([label for _, label in split.val])[val_rows - n_train]
    if len(val_rows) == 0:  # what the kept images are judged on; the run itself would stop on this too
        raise HeadstartError("no readable validation images")
    result = PseudoLabels(source, unlabeled)
    if len(pool) == 0:
        result.why_none = "none could be read"
        log.warning(result.describe(split.classes))
        return result
    kept, guess, confidence, teacher = self_train(vectors[train_rows], labels, vectors[pool])
    baseline = fit_teacher(vectors[train_rows], labels)
    result.val_without = float((baseline.predict(vectors[val_rows]) == val_labels).mean())
    result.val_with = float((teacher.predict(vectors[val_rows]) == val_labels).mean())
    if result.val_with >= result.val_without:
        paths = [unlabeled.paths[row - n_train - n_val] for row in pool[kept]]
        result.samples = list(zip(paths, guess[kept].tolist(), strict=True))
        result.confidence = confidence[kept].tolist()
    else:
        result.why_none = f"teacher val acc with them {result.val_with:.4f} < without {result.val_without:.4f}"
    log.info(result.describe(split.classes))
    return result


def fit_teacher(vectors: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression  # sklearn loads only for runs that use it

    return LogisticRegression(C=TEACHER_C, max_iter=2000).fit(vectors, labels)


def propagated(labelled: np.ndarray, labels: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Label spreading over the k-nearest-neighbour graph: each pool image's class (scikit-learn's LabelSpreading)."""
    from sklearn.semi_supervised import LabelSpreading

    spreading = LabelSpreading(kernel="knn", n_neighbors=min(NEIGHBOURS, len(labelled) + len(pool) - 1), alpha=0.2)
    spreading.fit(np.vstack([labelled, pool]), np.concatenate([labels, np.full(len(pool), -1)]))
    return np.asarray(spreading.transduction_[len(labelled) :])


def self_train(labelled: np.ndarray, labels: np.ndarray, pool: np.ndarray):
    """(kept pool rows, guessed class of every pool row, its confidence, the last teacher): ROUNDS of refitting."""
    if len(np.unique(labels)) < 2:
        raise HeadstartError("pseudo-labels need labelled train images of at least 2 classes")
    neighbours = propagated(labelled, labels, pool)
    teacher = fit_teacher(labelled, labels)
    for _ in range(ROUNDS):
        probabilities, guess = teacher.predict_proba(pool), teacher.predict(pool)
        kept = np.nonzero(guess == neighbours)[0]
        # The last teacher is the one trained on exactly the labels returned: val judges it.
        teacher = fit_teacher(np.vstack([labelled, pool[kept]]), np.concatenate([labels, guess[kept]]))
    return kept, guess, probabilities.max(1), teacher
