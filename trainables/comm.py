"""Cross-rank collectives the method needs, behind a tiny interface so method code never imports torch.distributed.

Under data parallelism the method must stay the single-process algorithm (METHOD.md §8.2): the feature mean behind
pi_hat is reduced over all ranks each step, every rank writes every rank's confidence updates, and test hits are
summed. `Comm` is the one-process identity; `TorchDistComm` does it with torch.distributed (gloo or nccl).
"""

from __future__ import annotations

import torch


class Comm:
    """Single process: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along dim 0, in rank order (all ranks pass the same shape)."""
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite `tensor` in place with rank 0's."""


class TorchDistComm(Comm):
    """torch.distributed collectives over the default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs an initialised default process group")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._dist.all_gather(parts, tensor)  # the list form works on gloo and nccl alike
        return torch.cat(parts)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        self._dist.broadcast(tensor, src=0)
