"""The machine a benchmark ran on: CPU, memory, GPU, driver, library versions, load, and other GPU users.

:func:`machine` is the one description of a machine for every dift-fast benchmark (``benchmarks/`` uses it too).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_name", "gpu_processes", "load_average", "machine"]


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_smi(*query: str) -> list[str] | None:
    """Lines of ``nvidia-smi <query>`` or None where nvidia-smi is missing or fails (within 10 s)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *query], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU, cores, memory, GPU, driver, versions (python, torch, CUDA, cuDNN, onnxruntime, dift-fast), load."""
    from .. import __version__

    device = torch.device(device) if device is not None else None
    cuda = torch.cuda.is_available()
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    gpu_index = None
    if cuda:
        gpu_index = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
    driver = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") if cuda else None
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(gpu_index) if cuda else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(gpu_index).total_memory / 2**30, 1) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": driver[0] if driver else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "onnxruntime": _version_of("onnxruntime"),
        "tensorrt": _version_of("tensorrt"),
        "dift_fast": __version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
    }
    return info


def _version_of(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    for dist in (module, f"{module}-gpu", f"{module}-cu12", f"{module}-cu13"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "installed"


def gpu_processes() -> tuple[list[dict[str, Any]], str | None]:
    """Other processes using a GPU, from nvidia-smi: ``([{"pid", "name", "used_memory_mib"}], note)``.

    ``note`` says why nothing could be checked (no nvidia-smi, or it failed); this process is left out.
    """
    lines = _nvidia_smi("--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits")
    if lines is None:
        return [], "nvidia-smi is not available here, so other processes on the GPU could not be checked"
    out = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit() or int(parts[0]) == os.getpid():
            continue
        memory = int(parts[2]) if parts[2].isdigit() else None
        out.append({"pid": int(parts[0]), "name": parts[1], "used_memory_mib": memory})
    return out, None
