"""Helpers shared by the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and GPU (if any) of this machine."""
    import os

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times in seconds of ``repeats`` calls after ``warmup`` calls (CPU: perf_counter)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_delta(fn: Callable[[], Any]) -> float | None:
    """Run fn() once; the peak resident memory above the level just before it, in MiB (None if not Linux).

    Resets the high-water mark (VmHWM) through /proc/self/clear_refs. Call it in a fresh process: an allocator
    that already holds memory freed by earlier runs hides the peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, payload: dict[str, Any], table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` and return the JSON path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(table)
    return path
