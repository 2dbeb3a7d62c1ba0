"""LT subset and candidate sets: METHOD.md §1.1 count table, §1.2 statistics, NU shuffle lists, exact recipe."""

import numpy as np
import pytest

from trainables.data.longtail import (
    build_longtailed,
    candidate_probabilities,
    class_counts,
    shuffle_counts,
    superclass_table,
)
from trainables.data.sources import CIFAR100_COARSE_OF_FINE

CIFAR100_COARSE = np.asarray(CIFAR100_COARSE_OF_FINE)


@pytest.mark.parametrize(
    "img_max,k,rho,head,tail,total",
    [
        (5000, 10, 50, [5000, 3237, 2096, 1357, 878], [568, 368, 238, 154, 100], 13996),
        (5000, 10, 100, [5000, 2997, 1796, 1077, 645], [387, 232, 139, 83, 50], 12406),
        (500, 100, 50, [500, 480, 462, 444, 426], [11, 11, 10, 10, 10], 12608),
        (500, 100, 100, [500, 477, 455, 434, 415], [6, 5, 5, 5, 5], 10847),
    ],
)
def test_class_counts_match_the_table(img_max, k, rho, head, tail, total):
    counts = class_counts(img_max, k, rho)
    assert counts[:5] == head and counts[-5:] == tail
    assert sum(counts) == total
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("rho,first20", [
    (50, [16, 158, 41, 69, 18, 12, 379, 35, 39, 25, 193, 46, 480, 350, 444, 87, 209, 84, 287, 165]),
    (100, [8, 129, 26, 48, 10, 6, 361, 22, 25, 15, 163, 30, 477, 328, 434, 64, 179, 61, 260, 135]),
])
def test_nu_shuffle_lists_for_seed_123(rho, first20):
    shuffled = shuffle_counts(class_counts(500, 100, rho), 123)
    assert shuffled[:20] == first20
    assert sorted(shuffled) == sorted(class_counts(500, 100, rho))


def _native_labels(k, per_class):
    # Interleaved like torchvision's pickles: the per-class order is what matters.
    return np.tile(np.arange(k), per_class)


def _reference_style(labels, k, img_max, rho, q, probs=None):
    """A literal transcription of the reference's construction with a private RandomState(0): per-class shuffle of
    the full index list, then one N x K uniform matrix and a Python loop over (i, k)."""
    rs = np.random.RandomState(0)
    counts = class_counts(img_max, k, rho)
    idx = []
    for c in range(k):
        ic = np.where(labels == c)[0]
        rs.shuffle(ic)
        idx.extend(ic[: counts[c]].tolist())
    y = labels[idx]
    u = rs.uniform(0, 1, (len(idx), k))
    s = np.zeros((len(idx), k), dtype=bool)
    for i in range(len(idx)):
        for j in range(k):
            if j == y[i]:
                s[i, j] = True
            elif u[i, j] < (q if probs is None else probs[y[i], j]):
                s[i, j] = True
    return np.asarray(idx), s


def test_vectorised_candidates_equal_the_reference_loop():
    labels = _native_labels(10, 5000)
    lt = build_longtailed(labels, 10, 5000, 100, 0.3, data_seed=0)
    idx, s = _reference_style(labels, 10, 5000, 100, 0.3)
    np.testing.assert_array_equal(lt.indices, idx)
    np.testing.assert_array_equal(lt.candidates, s)


def test_subset_is_class_sorted_and_keeps_true_label():
    labels = _native_labels(10, 5000)
    lt = build_longtailed(labels, 10, 5000, 50, 0.5, data_seed=0)
    assert np.all(np.diff(lt.labels) >= 0)
    assert np.bincount(lt.labels).tolist() == class_counts(5000, 10, 50)
    assert lt.candidates[np.arange(len(lt.labels)), lt.labels].all()
    np.testing.assert_array_equal(labels[lt.indices], lt.labels)
    assert len(set(lt.indices.tolist())) == len(lt.indices)


def test_data_seed_changes_the_subset_and_training_seed_does_not_enter():
    labels = _native_labels(10, 5000)
    a = build_longtailed(labels, 10, 5000, 100, 0.3, data_seed=0)
    b = build_longtailed(labels, 10, 5000, 100, 0.3, data_seed=1)
    assert not np.array_equal(a.indices, b.indices)


@pytest.mark.parametrize("k,per_class,img_max,q", [(10, 5000, 5000, 0.3), (10, 5000, 5000, 0.5),
                                                   (10, 5000, 5000, 0.7), (100, 500, 500, 0.03),
                                                   (100, 500, 500, 0.05), (100, 500, 500, 0.07)])
def test_uniform_candidate_statistics(k, per_class, img_max, q):
    lt = build_longtailed(_native_labels(k, per_class), k, img_max, 100, q, data_seed=0)
    n = len(lt.labels)
    size = lt.candidates.sum(axis=1)
    expected = 1 + (k - 1) * q
    sigma = np.sqrt((k - 1) * q * (1 - q) / n)
    assert abs(size.mean() - expected) < 5 * sigma
    p_single = (1 - q) ** (k - 1)
    assert abs((size == 1).mean() - p_single) < 5 * np.sqrt(p_single * (1 - p_single) / n) + 1e-4


@pytest.mark.parametrize("q", [0.03, 0.05, 0.07])
def test_nu_candidate_statistics(q):
    labels = _native_labels(100, 500)
    lt = build_longtailed(labels, 100, 500, 100, q, data_seed=0, superclass_of=CIFAR100_COARSE,
                          count_shuffle_seed=123)
    n = len(lt.labels)
    same = CIFAR100_COARSE[lt.labels][:, None] == CIFAR100_COARSE[None, :]
    off_diag = np.ones_like(same)
    off_diag[np.arange(n), lt.labels] = False
    inside = lt.candidates[same & off_diag].mean()
    outside = lt.candidates[~same].mean()
    assert abs(inside - 8 * q) < 5 * np.sqrt(8 * q * (1 - 8 * q) / (4 * n))
    assert abs(outside - q) < 5 * np.sqrt(q * (1 - q) / (95 * n))
    expected = 1 + 4 * 8 * q + 95 * q
    assert abs(lt.candidates.sum(axis=1).mean() - expected) < 0.05
    # the counts follow the seed-123 shuffle
    assert np.bincount(lt.labels, minlength=100).tolist() == shuffle_counts(class_counts(500, 100, 100), 123)


def test_nu_table_matches_the_reference_loop():
    labels = _native_labels(100, 500)
    probs = candidate_probabilities(100, 0.05, CIFAR100_COARSE)
    # reference order: counts shuffled with the seed, then the same RandomState(0) recipe
    lt = build_longtailed(labels, 100, 500, 50, 0.05, data_seed=0, superclass_of=CIFAR100_COARSE,
                          count_shuffle_seed=123)
    rs = np.random.RandomState(0)
    counts = shuffle_counts(class_counts(500, 100, 50), 123)
    idx = []
    for c in range(100):
        ic = np.where(labels == c)[0]
        rs.shuffle(ic)
        idx.extend(ic[: counts[c]].tolist())
    u = rs.uniform(0, 1, (len(idx), 100))
    y = labels[idx]
    expected = (u < probs[y]) | (np.arange(100)[None, :] == y[:, None])
    np.testing.assert_array_equal(lt.candidates, expected)


def test_candidate_probability_table():
    p = candidate_probabilities(100, 0.05, CIFAR100_COARSE)
    assert np.all(np.diag(p) == 1)
    assert np.isclose(p[0, 57], 0.4)  # apple (0) and pear (57): fruit and vegetables
    assert np.isclose(p[0, 1], 0.05)
    assert (p == 0.4).sum() == 100 * 4


def test_superclass_table_and_errors():
    fine = np.arange(100)
    table = superclass_table(fine, CIFAR100_COARSE, 100)
    np.testing.assert_array_equal(table, CIFAR100_COARSE)
    with pytest.raises(ValueError, match="no coarse label"):
        superclass_table(np.arange(99), CIFAR100_COARSE[:99], 100)
    with pytest.raises(ValueError, match="class 0 has 40 training images, fewer than the 50"):
        build_longtailed(_native_labels(10, 40), 10, 50, 100, 0.3, data_seed=0)
    with pytest.raises(ValueError, match="count_shuffle_seed"):
        build_longtailed(_native_labels(100, 5), 100, 5, 1, 0.03, 0, superclass_of=CIFAR100_COARSE)
