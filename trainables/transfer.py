"""Host -> device copies that do not hold the host back."""

from __future__ import annotations

import torch


def to_device(tensors: list[torch.Tensor], device: torch.device, pack: bool | None = None) -> list[torch.Tensor]:
    """CPU tensors on `device`, in one host -> device copy that does not wait for the device.

    A copy from pageable host memory waits for the device's stream to drain (CUDA's documented behaviour): each
    one in a training step stops the host from queueing work ahead of the GPU. A views call needs a few dozen
    small per-sample tensors from its CPU plan, a Mixup step a permutation. Here they are packed into one byte
    buffer (each piece padded to 8 bytes, so every dtype can be viewed back in place), pinned on CUDA, copied once
    with non_blocking, and returned as views of the device buffer. pack (default: unless the device is the CPU,
    where nothing is copied) is a parameter so that tests check the packing on the CPU."""
    if pack is None:
        pack = device.type != "cpu"
    if not pack:
        return [t.to(device) for t in tensors]
    pieces, offsets, offset = [], [], 0
    for t in tensors:
        raw = t.contiguous().view(-1).view(torch.uint8)
        pieces += [raw, torch.zeros(-len(raw) % 8, dtype=torch.uint8)]
        offsets.append(offset)
        offset += len(raw) + len(pieces[-1])
    buffer = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8)
    if device.type == "cuda":
        buffer = buffer.pin_memory()  # from torch's caching host allocator, held until the copy is done
    buffer = buffer.to(device, non_blocking=True)
    return [buffer[start:start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            for t, start in zip(tensors, offsets)]
