"""``splitc.learn.cluster``: ARI against scikit-learn's, and balanced spectral clustering that finds
planted groups of classes with equal sizes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from splitc.learn.cluster import (
    adjusted_rand_index,
    balanced_assign,
    balanced_kmeans,
    balanced_sizes,
    balanced_spectral_clustering,
    class_means,
    cosine_affinity,
)


@pytest.mark.parametrize("seed", range(30))
def test_ari_matches_sklearn_on_random_labelings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    a = rng.integers(0, int(rng.integers(1, 8)), n)
    b = rng.integers(0, int(rng.integers(1, 8)), n) if seed % 3 else a.copy()
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


@pytest.mark.parametrize("a, b", [
    ([0] * 5, [0] * 5), ([0, 1, 2, 3], [3, 2, 1, 0]), ([0, 0, 1, 1], [0, 1, 0, 1]),
    ([0, 0, 0], [0, 1, 2]), (["x", "x", "y"], [5, 5, 7]),
])
def test_ari_edge_cases_match_sklearn(a, b) -> None:
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_ari_is_label_permutation_invariant_and_checks_length() -> None:
    truth = np.repeat(np.arange(4), 5)
    assert adjusted_rand_index(truth, (truth + 2) % 4) == 1.0
    with pytest.raises(ValueError, match="length"):
        adjusted_rand_index([0, 1], [0])


def test_balanced_sizes() -> None:
    assert balanced_sizes(20, 4).tolist() == [5, 5, 5, 5]
    assert balanced_sizes(10, 4).tolist() == [3, 3, 2, 2]


def test_balanced_assign_respects_capacity() -> None:
    points = np.array([[0.0], [0.1], [0.2], [10.0]])  # three points near the first centroid
    labels, _ = balanced_assign(points, np.array([[0.0], [10.0]]))
    assert np.bincount(labels).tolist() == [2, 2] and labels[3] == 1


def test_class_means() -> None:
    feats = np.array([[1.0, 0], [3.0, 0], [0, 2.0]])
    assert class_means(feats, np.array([0, 0, 2]), 3).tolist() == [[2.0, 0], [0, 0], [0, 2.0]]


def test_affinity_is_symmetric_nonnegative() -> None:
    A = cosine_affinity(np.random.default_rng(0).normal(size=(6, 4)))
    assert np.allclose(A, A.T) and (A >= 0).all() and (np.diag(A) == 0).all()


def planted(groups: int, per: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means around ``groups`` random directions, shuffled; returns (means, true group)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim)) + 5.0  # a shared offset, as post-ReLU features have
    truth = rng.permutation(np.repeat(np.arange(groups), per))
    return centres[truth] + noise * rng.normal(size=(groups * per, dim)), truth


@pytest.mark.parametrize("seed", range(5))
def test_spectral_clustering_recovers_planted_groups(seed: int) -> None:
    means, truth = planted(4, 5, 64, 0.3, seed)
    labels = balanced_spectral_clustering(means, 4, seed=seed)
    assert np.bincount(labels).tolist() == [5, 5, 5, 5]
    assert adjusted_rand_index(truth, labels) == 1.0


def test_clustering_is_balanced_even_when_the_data_is_not() -> None:
    rng = np.random.default_rng(1)
    means = np.concatenate([rng.normal(0, 0.1, (9, 8)) + 3, rng.normal(0, 0.1, (3, 8)) - 3])
    labels = balanced_spectral_clustering(means, 3)
    assert sorted(np.bincount(labels).tolist()) == [4, 4, 4]


def test_kmeans_is_deterministic_and_canonical() -> None:
    points = np.random.default_rng(2).normal(size=(12, 3))
    a, b = balanced_kmeans(points, 3, seed=7), balanced_kmeans(points, 3, seed=7)
    assert a.tolist() == b.tolist() and a[0] == 0
    with pytest.raises(ValueError):
        balanced_kmeans(points, 13)
    assert balanced_spectral_clustering(points, 1).tolist() == [0] * 12
