"""Per-epoch metrics (METHOD.md §9.2, §9.4): pure functions on tensors and counts."""

from __future__ import annotations

import torch


def shot_groups(class_counts: torch.Tensor | list[int]) -> torch.Tensor:
    """Many (0) / medium (1) / few (2) group of each class from training counts, as in SoLar's script (§9.2).

    M = K // 3 (3 for CIFAR-10, 33 for CIFAR-100): many = count above the (K-M-1)-th smallest count,
    few = count below the M-th smallest, medium = the rest.
    """
    counts = torch.as_tensor(class_counts)
    k = counts.numel()
    m = k // 3
    ordered = torch.sort(counts).values
    many_thr, few_thr = ordered[k - m - 1], ordered[m]
    groups = torch.ones(k, dtype=torch.long)
    groups[counts > many_thr] = 0
    groups[counts < few_thr] = 2
    return groups


def group_accuracy(per_class_acc: torch.Tensor, groups: torch.Tensor) -> tuple[float, float, float]:
    """Mean per-class accuracy in each shot group; an empty group gives 0 (as the reference)."""
    out = []
    for g in range(3):
        sel = per_class_acc[groups == g]
        out.append(float(sel.mean()) if sel.numel() else 0.0)
    return out[0], out[1], out[2]


def prior_kl(true_prior: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-12) -> float:
    """KL(true || estimate) in nats."""
    p = true_prior.double()
    q = estimate.double().clamp_min(eps)
    mask = p > 0
    return float((p[mask] * (p[mask].log() - q[mask].log())).sum())


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 5):
    """Per-class top-1 hit counts and the total top-k hits of a batch (summed later across batches and ranks)."""
    top1 = logits.argmax(dim=1)
    hit1 = (top1 == labels).to(torch.float64)
    per_class = torch.zeros(num_classes, dtype=torch.float64, device=logits.device)
    per_class.index_add_(0, labels, hit1)
    kk = min(k, logits.shape[1])
    topk = logits.topk(kk, dim=1).indices
    hitk = (topk == labels[:, None]).any(dim=1).to(torch.float64).sum()
    return per_class, hitk


def confidence_summary(confidences: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(pseudo-label accuracy in %, MMC) of the confidence matrix W against the true training labels."""
    best, arg = confidences.max(dim=1)
    acc = (arg == labels).double().mean() * 100.0
    return float(acc), float(best.double().mean())
