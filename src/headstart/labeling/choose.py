"""Which images to ask labels for: typical ones when nothing is labelled, uncertain and diverse ones after a run.

Both take L2-normalised embeddings (N, D) and return row indices with the reason each was picked.
k-means over the embeddings gives the diversity: one pick per cluster, so a batch is never N
near-copies of one hard image.
"""

from __future__ import annotations

import numpy as np

# With a model, the candidates are the CANDIDATES x budget images it is least sure of; k-means then
# spreads the picks over them (a margin-ranked pool clustered for diversity, as in Cluster-Margin).
CANDIDATES = 4
# Above this many points, MiniBatchKMeans: plain k-means' memory and time grow with N x budget per pass.
FULL_KMEANS = 20_000


def clusters(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of every row, centres) from scikit-learn's k-means."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    kind = KMeans if len(vectors) <= FULL_KMEANS else MiniBatchKMeans
    fitted = kind(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
    return fitted.labels_, fitted.cluster_centers_


def typical(vectors: np.ndarray, budget: int, seed: int) -> list[tuple[int, str]]:
    """Cold start: the image nearest each of `budget` k-means centres, largest cluster first."""
    members, centres = clusters(vectors, budget, seed)
    sizes = np.bincount(members, minlength=budget)
    picks = []
    for rank, cluster in enumerate(np.argsort(-sizes, kind="stable")):
        rows = np.nonzero(members == cluster)[0]
        if not len(rows):  # k-means leaves a cluster empty when the folder holds fewer distinct images
            continue
        nearest = rows[np.argmin(((vectors[rows] - centres[cluster]) ** 2).sum(1))]
        picks.append((int(nearest), f"typical of a group of {sizes[cluster]} similar images ({rank + 1} of {budget})"))
    return picks


def margins(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability minus the second, the two classes' indices by row): a small margin is an unsure model."""
    order = np.argsort(-probabilities, axis=1)[:, :2]
    top = np.take_along_axis(probabilities, order, axis=1)
    return top[:, 0] - top[:, 1], order


def uncertain_and_diverse(
    vectors: np.ndarray, probabilities: np.ndarray, classes: list[str], budget: int, seed: int
) -> list[tuple[int, str]]:
    """The least sure image of each of `budget` k-means clusters of the least sure CANDIDATES x budget, least sure first."""
    margin, order = margins(probabilities)
    pool = np.argsort(margin, kind="stable")[: min(len(margin), CANDIDATES * budget)]
    members, _ = clusters(vectors[pool], budget, seed)
    picks = []
    for cluster in range(budget):
        rows = pool[members == cluster]
        if len(rows):
            picks.append(int(rows[np.argmin(margin[rows])]))
    # Identical images leave clusters empty: the next least sure images fill the batch.
    picks += [int(row) for row in pool if row not in picks][: budget - len(picks)]
    picks.sort(key=lambda row: margin[row])
    return [(row, why_unsure(probabilities[row], order[row], classes)) for row in picks]


def why_unsure(probabilities: np.ndarray, order: np.ndarray, classes: list[str]) -> str:
    first, second = int(order[0]), int(order[1])
    return (
        f"unsure: {classes[first]} {probabilities[first]:.2f} vs {classes[second]} {probabilities[second]:.2f} "
        f"(margin {probabilities[first] - probabilities[second]:.2f})"
    )
