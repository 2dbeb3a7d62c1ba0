"""Host <-> device copies, counted without a GPU: run the code on the "meta" device under a dispatch mode."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class DeviceTransfers(TorchDispatchMode):
    """Records every op that takes a tensor on one device and returns one on the other. On "meta" there is no data:
    no GPU is needed, and any read of a value back to the host (`.item()`, `.tolist()`, a bool test) raises, so
    code that runs there to the end made no such read; `to_host` catches explicit copies."""

    def __init__(self):
        super().__init__()
        self.to_device: list[str] = []
        self.to_host: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices_in = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        devices_out = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        if "cpu" in devices_in and "meta" in devices_out:
            self.to_device.append(str(func))
        if "meta" in devices_in and "cpu" in devices_out:
            self.to_host.append(str(func))
        return out
