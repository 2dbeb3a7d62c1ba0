"""Mixup as RECORDS uses it (METHOD.md §5.1): one lambda ~ Beta(b, b) per step folded to max(lambda, 1 - lambda),
one batch permutation shared by the weak and strong views and by the confidence targets."""

from __future__ import annotations

import numpy as np
import torch

from ..transfer import to_device

_MIXUP_STREAM = 0x6D6978  # keeps these draws independent of every other use of the same (seed, epoch, step)


def draw_mixup(seed: int, epoch: int, step: int, rank: int, batch_size: int, beta: float,
               device: torch.device) -> tuple[float, torch.Tensor]:
    """(lambda, permutation) for one step, from generators keyed on (seed, epoch, step): no state to carry, so a
    resumed run redraws the same values. lambda is the same on every rank; the permutation is per rank, because each
    rank mixes within its own share of the batch."""
    lam = float(np.random.default_rng([seed, epoch, step, _MIXUP_STREAM]).beta(beta, beta))
    lam = max(lam, 1.0 - lam)
    perm = np.random.default_rng([seed, epoch, step, _MIXUP_STREAM, rank]).permutation(batch_size)
    return lam, to_device([torch.from_numpy(perm)], device)[0]  # pinned: the step does not wait for the GPU


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm]."""
    return lam * x + (1.0 - lam) * x[perm]
