"""Probable label errors and outliers, from embeddings of the frozen backbone.

Label errors follow confident learning (Northcutt, Jiang & Chuang, JAIR 2021; cleanlab's
`find_label_issues` with `filter_by="confident_learning"`): out-of-fold probabilities come from
k logistic-regression heads on the embeddings (each image is scored by a head that never saw
it); a class's threshold is the mean probability of that class over the images labelled with
it; an image whose most probable class above its threshold is not its given label is a confident
suspect. Suspects are every image whose out-of-fold prediction is not its label, ranked by
self-confidence p(given), lowest first (cleanlab's default ranking), each marked whether confident
learning flags it. Those few lines are the whole method, so cleanlab itself is not a dependency.

Outliers are images far from every class: their best cosine similarity to any class centroid is
far below what images of that data set usually reach (a robust z-score over all images).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from headstart.data.duplicates import Finding
from headstart.inspection.evidence import Evidence
from headstart.tasks.single_label import SINGLE_LABEL

# The heads see the embeddings' 64 leading principal components: L-BFGS over 1280 x classes weights
# took 24 s for 2,000 images, and on planted flips (benchmarks/planted_faults.py, cat_breeds) 64
# unwhitened components ranked more flips in the top 2x (0.71) than 128 (0.71 / 0.65) or whitened ones (0.55).
COMPONENTS = 64
# Images whose best centroid similarity lies this many robust deviations below the median are outliers.
OUTLIER_Z = 6.0


def out_of_fold_probabilities(embeddings: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, classes) probabilities, each row from a head trained on the other folds.

    A class with fewer images than `folds` lowers the fold count (at least 2); a class with a
    single image keeps uniform probabilities for the classes its fold's head never saw.
    """
    classes = int(labels.max()) + 1
    # Unsupervised, so fitting it once on every image leaks no label into the held-out folds.
    components = min(COMPONENTS, embeddings.shape[1], len(embeddings) - 1)
    embeddings = PCA(components, random_state=seed).fit_transform(embeddings)
    smallest = np.bincount(labels, minlength=classes)
    folds = max(2, min(folds, int(smallest[smallest > 0].min())))
    probabilities = np.full((len(labels), classes), 1.0 / classes)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with one image cannot be stratified; a head that stops at max_iter is still usable.
        warnings.simplefilter("ignore", (UserWarning, ConvergenceWarning))
        for fit_rows, score_rows in splitter.split(embeddings, labels):
            head = LogisticRegression(C=1.0, max_iter=300)
            head.fit(embeddings[fit_rows], labels[fit_rows])
            probabilities[np.ix_(score_rows, head.classes_)] = head.predict_proba(embeddings[score_rows])
            missing = np.setdiff1d(np.arange(classes), head.classes_)
            probabilities[np.ix_(score_rows, missing)] = 0.0
    return probabilities


def confident_suspects(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float]]:
    """(index, suggested label, margin) of the confident-learning label issues, largest margin first."""
    classes = probabilities.shape[1]
    thresholds = np.array(
        [probabilities[labels == c, c].mean() if (labels == c).any() else 1.0 for c in range(classes)]
    )
    above = probabilities >= thresholds[None, :] - 1e-12
    masked = np.where(above, probabilities, -1.0)
    confident = SINGLE_LABEL.decide(masked)
    counted = above.any(axis=1)
    suspects = []
    for index in np.nonzero(counted & (confident != labels))[0]:
        given = probabilities[index, labels[index]]
        suggested = int(confident[index])
        suspects.append((int(index), suggested, float(probabilities[index, suggested] - given)))
    return sorted(suspects, key=lambda s: -s[2])


def ranked_suspects(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, bool]]:
    """(index, suggested label, flagged by confident learning) of every image predicted as another class
    or flagged, lowest self-confidence p(given) first."""
    flagged = {index: suggested for index, suggested, _ in confident_suspects(probabilities, labels)}
    predicted = SINGLE_LABEL.decide(probabilities)
    self_confidence = probabilities[np.arange(len(labels)), labels]
    rows = sorted(set(np.nonzero(predicted != labels)[0].tolist()) | set(flagged), key=lambda i: self_confidence[i])
    return [(i, flagged.get(i, int(predicted[i])), i in flagged) for i in rows]


def centroid_similarity(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's best cosine similarity to any class centroid (rows L2-normalised)."""
    classes = int(labels.max()) + 1
    centroids = np.zeros((classes, embeddings.shape[1]), dtype=np.float32)
    np.add.at(centroids, labels, embeddings)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return (embeddings @ centroids.T).max(axis=1)


def outliers(embeddings: np.ndarray, labels: np.ndarray, z: float = OUTLIER_Z) -> list[tuple[int, float]]:
    """(index, robust z-score below the median) of images far from every class, farthest first."""
    best = centroid_similarity(embeddings, labels)
    median = np.median(best)
    spread = 1.4826 * np.median(np.abs(best - median)) + 1e-6
    scores = (median - best) / spread
    found = [(int(i), float(scores[i])) for i in np.nonzero(scores >= z)[0]]
    return sorted(found, key=lambda s: -s[1])


# ----------------------------------------------------------------------------- the finding kinds


def class_labels(evidence: Evidence) -> tuple[list[str], np.ndarray]:
    """The class names of the embedded images (sorted) and each one's label index."""
    classes = sorted({item.label for item in evidence.embedded})
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[item.label] for item in evidence.embedded])


def label_issue_rows(evidence: Evidence) -> list[Finding]:
    """label_issue rows, most suspicious first; none where a class has fewer than 2 images to fold."""
    classes, labels = class_labels(evidence)
    if len(classes) < 2 or np.bincount(labels).min() < 2:
        return []
    items = evidence.embedded
    probabilities = out_of_fold_probabilities(evidence.vectors, labels, seed=evidence.seed)
    found = []
    for row, suggested, confident in ranked_suspects(probabilities, labels):
        given, other = float(probabilities[row, labels[row]]), float(probabilities[row, suggested])
        extra = {
            "label": items[row].label,
            "suggested": classes[suggested],
            "p_given": round(given, 4),
            "p_suggested": round(other, 4),
            "margin": round(other - given, 4),
            "confident": confident,
        }
        found.append(Finding("label_issue", items[row].relative, "", round(1 - given, 4), extra))
    return found


def outlier_rows(evidence: Evidence) -> list[Finding]:
    _, labels = class_labels(evidence)
    items = evidence.embedded
    return [
        Finding("outlier", items[row].relative, "", round(z, 2), {"label": items[row].label})
        for row, z in outliers(evidence.vectors, labels)
    ]
