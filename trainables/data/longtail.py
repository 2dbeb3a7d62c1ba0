"""Long-tailed subsets and partial-label candidate sets, exactly as the reference builds them (METHOD.md §1.1-1.2).

The reference seeds numpy's *global* legacy RNG with 0 inside the dataset constructor, shuffles each class's
indices with it, keeps the first n_c, then draws one N x K uniform matrix for the candidates. We replay the same
stream from a private `RandomState(data_seed)`, so data_seed=0 gives the reference's subset and candidate sets bit
for bit without touching global state. The candidate draw is one vectorised comparison on the same matrix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# Reference value of the within-superclass rate multiplier of CIFAR-100-LT-NU (hard-coded `ratio_hi`).
NU_RATIO_HI = 8


def class_counts(img_max: int, num_classes: int, rho: float) -> list[int]:
    """The 'exp' profile: n_c = int(img_max * (1/rho)^(c/(K-1))), head = class 0. `int` truncates, as the reference."""
    imb_factor = 1.0 / rho
    return [int(img_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def shuffle_counts(counts: list[int], seed: int) -> list[int]:
    """The NU class-count shuffle: CPython's `random.shuffle` seeded with `seed`, on a private Random instance.

    The reference calls the global `random.shuffle` right after `random.seed(args.seed)` with nothing drawing in
    between, which a fresh `random.Random(seed)` replays exactly.
    """
    shuffled = list(counts)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def candidate_probabilities(num_classes: int, q: float, superclass_of: np.ndarray | None = None) -> np.ndarray:
    """P[y, k]: probability that label k is a candidate of a sample whose true label is y (1 on the diagonal).

    Uniform: q off the diagonal. NU (superclass_of given): 8q inside y's superclass, q outside.
    """
    probs = np.full((num_classes, num_classes), q, dtype=np.float64)
    if superclass_of is not None:
        same = superclass_of[:, None] == superclass_of[None, :]
        probs[same] = NU_RATIO_HI * q
    np.fill_diagonal(probs, 1.0)
    return probs


@dataclass(frozen=True)
class LongTailedSet:
    """A long-tailed partial-label training set: which source rows, their labels and candidate sets."""

    indices: np.ndarray  # int64 [N]: rows of the source training split, class-sorted (class 0's first)
    labels: np.ndarray  # int64 [N]: true labels (for metrics only; training never reads them)
    candidates: np.ndarray  # bool [N, K]: candidate sets S; the true label is always in
    counts: list[int]  # training count per class (after the NU shuffle, if any)

    @property
    def true_prior(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=np.float64)
        return c / c.sum()


def build_longtailed(
    labels: np.ndarray,
    num_classes: int,
    img_max: int,
    rho: float,
    q: float,
    data_seed: int,
    superclass_of: np.ndarray | None = None,
    count_shuffle_seed: int | None = None,
) -> LongTailedSet:
    """Select the LT subset and draw candidate sets (§1.2 'exact-reproduction recipe').

    labels: true labels of the full training split in native order. superclass_of: [K] superclass of each class,
    given for CIFAR-100-LT-NU (which also shuffles the counts with `count_shuffle_seed`).
    """
    counts = class_counts(img_max, num_classes, rho)
    if superclass_of is not None:
        if count_shuffle_seed is None:
            raise ValueError("NU candidates also shuffle the class counts: count_shuffle_seed is required")
        counts = shuffle_counts(counts, count_shuffle_seed)

    rs = np.random.RandomState(data_seed)
    kept = []
    for c in range(num_classes):
        idx_c = np.flatnonzero(labels == c)
        if len(idx_c) < counts[c]:
            raise ValueError(f"class {c} has {len(idx_c)} training images, fewer than the {counts[c]} the LT "
                             f"profile asks for (img_max={img_max}, rho={rho:g})")
        # Shuffle the *full* class list, then keep the head: the permutation depends only on the length and the
        # stream, as in the reference.
        rs.shuffle(idx_c)
        kept.append(idx_c[: counts[c]])
    indices = np.concatenate(kept).astype(np.int64)
    y = labels[indices].astype(np.int64)

    uniform = rs.uniform(0, 1, (len(indices), num_classes))
    probs = candidate_probabilities(num_classes, q, superclass_of)
    candidates = uniform < probs[y]
    candidates[np.arange(len(y)), y] = True
    return LongTailedSet(indices=indices, labels=y, candidates=candidates, counts=counts)


def superclass_table(fine_labels: np.ndarray, coarse_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K] superclass of each fine class, read off a source's (fine, coarse) label pairs."""
    table = np.full(num_classes, -1, dtype=np.int64)
    table[fine_labels] = coarse_labels
    if (table < 0).any():
        missing = np.flatnonzero(table < 0).tolist()
        raise ValueError(f"no coarse label for fine classes {missing}")
    return table
