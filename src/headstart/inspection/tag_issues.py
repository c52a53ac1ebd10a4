"""Probable tag errors in multi-label data: a tag missing from an image that shows it, or given to one that does not.

Out-of-fold probabilities per tag come from logistic-regression heads on the frozen backbone's
embeddings (64 principal components, as for single-label data), each image scored by heads that
never saw it, the folds cut by iterative stratification. cleanlab's multi-label method
(`cleanlab.multilabel_classification.filter.find_label_issues`, the field's implementation of
confident learning for several labels per image) picks the suspects, ranked by its label quality
score (self-confidence per tag, aggregated with its exponential moving average), worst first.

Each row says which tags the heads would add and drop, and a margin: the largest, over the tags,
of p(the other answer) - p(the given answer), so a tag given at p = 0.1 has margin 0.8.
"""

from __future__ import annotations

import warnings

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.data.duplicates import Finding
from headstart.inspection.evidence import Evidence
from headstart.inspection.label_issues import COMPONENTS


def tag_matrix(evidence: Evidence) -> tuple[list[str], np.ndarray]:
    """The tags of the embedded images (sorted) and their [images, tags] 0/1 matrix; labels are space-joined tags."""
    given = [item.label.split() for item in evidence.embedded]
    tags = sorted({t for image in given for t in image})
    index = {t: k for k, t in enumerate(tags)}
    matrix = np.zeros((len(given), len(tags)), dtype=np.int64)
    for row, image in enumerate(given):
        matrix[row, [index[t] for t in image]] = 1
    return tags, matrix


def out_of_fold_tag_probabilities(embeddings: np.ndarray, targets: np.ndarray, folds: int = 5, seed: int = 0):
    """[images, tags] probabilities, each row from per-tag heads trained on the other folds."""
    probabilities = np.tile(targets.mean(0), (len(targets), 1)).astype(np.float64)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fit_rows, score_rows in splitter.split(embeddings, targets):
            components = min(COMPONENTS, len(fit_rows) - 1, embeddings.shape[1])
            pca = PCA(components, random_state=seed).fit(embeddings[fit_rows])
            seen, scored = pca.transform(embeddings[fit_rows]), pca.transform(embeddings[score_rows])
            for k in range(targets.shape[1]):
                column = targets[fit_rows, k]
                if column.min() != column.max():  # a tag always (or never) given in these folds keeps its base rate
                    head = LogisticRegression(max_iter=200).fit(seen, column)
                    probabilities[score_rows, k] = head.predict_proba(scored)[:, 1]
    return probabilities


def tag_issue_rows(evidence: Evidence) -> list[Finding]:
    """label_issue rows for multi-label data, most suspicious first (cleanlab's ranking)."""
    try:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores
    except ImportError:
        raise HeadstartError(f"label issues in multi-label data need cleanlab: {install_hint('cleanlab')}") from None
    tags, targets = tag_matrix(evidence)
    if len(tags) < 2 or len(targets) < 10 or (targets.sum(0) < 2).any():
        return []
    probabilities = out_of_fold_tag_probabilities(evidence.vectors, targets, seed=evidence.seed)
    labels = [list(np.flatnonzero(row)) for row in targets]
    suspects = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities)
    items, found = evidence.embedded, []
    for row in suspects:
        suggested = probabilities[row] >= 0.5
        margins = np.where(targets[row] == 1, 1 - 2 * probabilities[row], 2 * probabilities[row] - 1)
        extra = {
            "label": items[row].label,
            "suggested": " ".join(t for t, on in zip(tags, suggested) if on),
            "add": " ".join(t for k, t in enumerate(tags) if suggested[k] and not targets[row, k]),
            "drop": " ".join(t for k, t in enumerate(tags) if targets[row, k] and not suggested[k]),
            "margin": round(float(margins.max()), 4),
            "confident": True,
        }
        found.append(Finding("label_issue", items[row].relative, "", round(1 - float(quality[row]), 4), extra))
    return found
