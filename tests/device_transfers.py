"""Host <-> device copies and the device's ops, counted without a GPU: run the code on the "meta" device under
two modes."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class DeviceTransfers:
    """Records every copy between the host and the "meta" device while active: ops that take a tensor on one and
    return one on the other (`.to`, `copy_`, CPU index tensors), and tensors built from host data straight on the
    device (`torch.tensor(data, device=...)`, `as_tensor`), which the dispatch level does not show. On "meta" there
    is no data, so no GPU is needed, and any read of a value back to the host (`.item()`, `.tolist()`, a bool
    test) raises: code that runs there to the end made no such read; `to_host` catches explicit copies.
    `device_ops` lists every op on the device but views and allocations: what a GPU would launch as kernels."""

    def __init__(self):
        self.to_device: list[str] = []
        self.to_host: list[str] = []
        self.device_ops: list[str] = []
        self._modes = (_Copies(self), _HostData(self))

    def __enter__(self) -> DeviceTransfers:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class _Copies(TorchDispatchMode):
    ALLOCATIONS = (torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default)

    def __init__(self, record: DeviceTransfers):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices_in = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        devices_out = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        if "cpu" in devices_in and "meta" in devices_out:
            self.record.to_device.append(str(func))
        if "meta" in devices_in and "cpu" in devices_out:
            self.record.to_host.append(str(func))
        if "meta" in devices_in | devices_out and not func.is_view and func not in self.ALLOCATIONS:
            self.record.device_ops.append(str(func))
        return out


class _HostData(TorchFunctionMode):
    FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)

    def __init__(self, record: DeviceTransfers):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FROM_DATA and kwargs.get("device") is not None:
            target = torch.device(kwargs["device"])
            data = args[0] if args else kwargs.get("data")
            if target.type != "cpu" and not (isinstance(data, torch.Tensor) and data.device == target):
                self.record.to_device.append(f"{func.__name__}(data, device={target})")
        return func(*args, **kwargs)
