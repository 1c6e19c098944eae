"""Balanced spectral clustering of classes, and the adjusted Rand index.

Why here: docs/METHOD.md §8 asks for a reference grouping that tells "the method failed" apart from
"the features have no such structure" (``feature_ari``), and ``--init-groups cluster`` starts
the class-to-group assignment from the same clustering. Both need a clustering of a few dozen
class-mean vectors into G groups of equal size, because SplitNet's R_E wants balanced groups,
which scikit-learn's clusterers do not offer:

1. :func:`cosine_affinity`: cosine similarity (scikit-learn's) of the class means after removing their common
   mean (post-ReLU features all point the same way; centring keeps what tells classes apart),
   negative similarities clipped to 0.
2. :func:`spectral_embedding`: the G leading eigenvectors of ``D^-1/2 W D^-1/2`` (the smallest
   of the normalised Laplacian), rows scaled to unit length (Ng, Jordan and Weiss, 2001).
3. :func:`balanced_kmeans`: k-means on those rows where every cluster holds ``K/G`` points
   (sizes differ by at most one); each assignment step is a min-cost matching of points to
   cluster slots (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.pairwise import cosine_similarity

_EPS = 1e-12


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, D)`` mean feature vector of each class; a class without samples is 0."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return sums / np.maximum(counts, 1.0)[:, None]


def cosine_affinity(means: np.ndarray) -> np.ndarray:
    """``(K, K)`` affinity: cosine similarity of the centred means, clipped at 0, zero diagonal."""
    centred = means - means.mean(axis=0, keepdims=True)
    affinity = np.clip(cosine_similarity(centred), 0.0, None)
    np.fill_diagonal(affinity, 0.0)
    return affinity


def spectral_embedding(affinity: np.ndarray, k: int) -> np.ndarray:
    """``(K, k)`` rows of the ``k`` leading eigenvectors of the normalised affinity, unit length.

    A tiny uniform affinity is added so that an isolated class still has a degree.
    """
    W = affinity + 1e-6 * (1.0 - np.eye(len(affinity)))
    d = W.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(d)
    M = inv_sqrt[:, None] * W * inv_sqrt[None, :]
    _, vectors = np.linalg.eigh((M + M.T) / 2)  # ascending eigenvalues
    rows = vectors[:, ::-1][:, :k]
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _EPS)


def balanced_sizes(n: int, k: int) -> np.ndarray:
    """Cluster capacities for ``n`` points in ``k`` clusters: equal, the first ``n % k`` one larger."""
    return np.full(k, n // k) + (np.arange(k) < n % k)


def balanced_assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """Each point to a centroid, every centroid getting its :func:`balanced_sizes` share, at the
    least total squared distance. Returns (labels, cost)."""
    n, k = len(points), len(centroids)
    slots = np.repeat(np.arange(k), balanced_sizes(n, k))
    cost = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)  # (n, k)
    rows, cols = linear_sum_assignment(cost[:, slots])
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = slots[cols]
    return labels, float(cost[rows, slots[cols]].sum())


def balanced_kmeans(points: np.ndarray, k: int, seed: int = 0, restarts: int = 10,
                    iterations: int = 100) -> np.ndarray:
    """Balanced k-means (k-means++ seeding, several restarts, the lowest cost wins)."""
    points = np.asarray(points, dtype=np.float64)
    if not 1 <= k <= len(points):
        raise ValueError(f"cannot make {k} clusters of {len(points)} points")
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        labels, cost = _kmeans_once(points, _plus_plus(points, k, rng), iterations)
        if cost < best_cost - 1e-12:
            best, best_cost = labels, cost
    return _canonical(best)


def _plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds: each next centre drawn with probability proportional to squared distance."""
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = ((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(points), 1.0 / len(points))
        centres.append(points[rng.choice(len(points), p=p)])
    return np.asarray(centres)


def _kmeans_once(points: np.ndarray, centroids: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    labels, cost = balanced_assign(points, centroids)
    for _ in range(iterations):
        centroids = np.stack([points[labels == c].mean(axis=0) for c in range(len(centroids))])
        new, cost = balanced_assign(points, centroids)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, cost


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by first appearance, so equal partitions give equal label arrays."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.searchsorted(np.unique(labels), labels)]


def balanced_spectral_clustering(means: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster the rows of ``means`` (one per class) into ``k`` groups of equal size."""
    means = np.asarray(means, dtype=np.float64)
    if k == 1:
        return np.zeros(len(means), dtype=np.int64)
    return balanced_kmeans(spectral_embedding(cosine_affinity(means), k), k, seed=seed)


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie): scikit-learn's, with a
    one-line error for labelings of different lengths."""
    a, b = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.size} and {b.size}")
    return float(adjusted_rand_score(a, b))


# The spectral embedding and the k-means++ seeding stay hand-written: scikit-learn's
# ``spectral_embedding`` (Laplacian eigenmaps, first vector dropped) and ``kmeans_plusplus``
# (its own candidate sampling) give other embeddings and seeds, so every recorded grouping
# (docs/RESULTS.md, docs/LEARN.md) would change; the balanced assignment has no library form.
