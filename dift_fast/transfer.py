"""Host-to-GPU copies that do not stall the stream.

A ``tensor.to("cuda")`` from ordinary (pageable) host memory is a synchronous copy: the host waits until the GPU
has finished everything queued before it, then until the copy is done. Between micro-batches that wait leaves the
GPU idle while the host prepares the next one. A copy from pinned (page-locked) memory with ``non_blocking=True``
is queued on the current stream like a kernel and the host goes on at once. torch's caching host allocator, which
``pin_memory()`` uses, keeps a pinned block out of reuse until the copies queued from it have finished, so the
pinned staging tensor may be dropped right after the call.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for CUDA is staged in pinned memory and copied without waiting.

    Anything else (CPU to CPU, already on the device) is ``tensor.to(device)``.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
