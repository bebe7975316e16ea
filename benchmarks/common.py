"""Helpers shared by the benchmark scripts: machine description, timing, result files.

The machine description and the peak-memory measurement are ``dift_fast.bench``'s (the code behind
``dift-fast bench``), so every benchmark describes its machine the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, driver, library versions and load average of this machine."""
    from dift_fast.bench.environment import machine as describe

    return describe()


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


def peak_rss_delta(fn: Callable[[], Any]) -> float | None:
    """Run fn() once; the peak resident memory above the level just before it, in MiB (None if not measurable).

    Call it in a fresh process: an allocator that already holds memory freed by earlier runs hides the peak.
    """
    import torch

    from dift_fast.bench.memory import PeakMemory

    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    fn()
    reading = meter.read()
    if not reading["kind"].startswith("resident-set"):
        return None  # the high-water mark could not be reset: the reading would include earlier peaks
    return (reading["peak_bytes"] - reading["before_bytes"]) / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, payload: dict[str, Any], table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` and return the JSON path."""
    from dift_fast.bench.report import write_json

    path = write_json(payload, RESULTS_DIR / f"{name}.json")
    (RESULTS_DIR / f"{name}.md").write_text(table)
    return path


def random_components(config: Any, seed: int = 0, *, blocks: Any = None) -> Any:
    """Random-weight components of a real-size architecture for ``config`` (no download).

    ``dift_fast.bench.models.random_components``, the one builder (``dift-fast bench --architecture`` uses it):
    SD and CleanDIFT from a folder of component configs (``config.model``, e.g. the packaged ``sd21``), ADM from the
    packaged ``adm256`` config (``config.model="adm256"``); with ``blocks``, ``{k: components}`` sharing one network.
    """
    from dift_fast.bench.models import random_components as build

    return build(config, seed, blocks=blocks)
