"""Peak memory of the measured calls: the GPU's ``max_memory_allocated``, or the CPU process's resident high-water mark."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["PeakMemory"]


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _lifetime_max_rss() -> int:
    """The process's resident high-water mark since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class PeakMemory:
    """``reset()`` before the measured calls, ``read()`` after them.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors allocated by torch; other allocators, such as onnxruntime's
    or TensorRT's, are not seen). CPU: the resident-set high-water mark (VmHWM), reset through
    ``/proc/self/clear_refs``; where that is not possible, the process's lifetime maximum (said in ``kind``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self.before = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
            self.before = torch.cuda.memory_allocated(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
            rss = _status_bytes("VmRSS")
            self.kind = "resident-set high-water mark (VmHWM)"
            self.before = rss if rss is not None else 0
        except OSError:
            self.kind = "process lifetime maximum resident set (ru_maxrss; could not reset the high-water mark)"
            self.before = _status_bytes("VmRSS") or 0

    def read(self) -> dict[str, Any]:
        """``{"peak_bytes", "before_bytes", "kind"}``: the peak during the calls and the level before them."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_bytes("VmHWM") if self.kind.startswith("resident-set") else None
            peak = hwm if hwm is not None else _lifetime_max_rss()
        return {"peak_bytes": int(peak), "before_bytes": int(self.before), "kind": self.kind}
