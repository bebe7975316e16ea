"""Timing one call and its stages: ``perf_counter`` on the CPU, CUDA events on a GPU.

A timer is also the extractor's :class:`~dift_fast.extractor.StageRecorder`. Per measured call::

    timer.start_call()
    ...work, which calls timer.begin(stage) / timer.end()...
    timer.stop_call()
    call_s, stages_s = timer.result()   # the one synchronisation of the call (CUDA: on the last event)

On a GPU the stage times are intervals on the stream's timeline between events recorded at the stage boundaries:
host work that overlaps queued device work shows up as (close to) nothing, and nothing inside a call waits for
the device because of the timer.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

__all__ = ["CudaEventTimer", "PerfCounterTimer", "make_timer"]


class PerfCounterTimer:
    """Wall-clock timer for work that runs on the host (the CPU device)."""

    def __init__(self) -> None:
        self._stages: dict[str, float] = defaultdict(float)
        self._current: str | None = None
        self._since = 0.0
        self._start = self._stop = 0.0

    def start_call(self) -> None:
        self._stages = defaultdict(float)
        self._current = None
        self._start = time.perf_counter()

    def begin(self, name: str) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self._stages[self._current] += now - self._since
        self._current, self._since = name, now

    def end(self) -> None:
        if self._current is not None:
            self._stages[self._current] += time.perf_counter() - self._since
            self._current = None

    def stop_call(self) -> None:
        self.end()
        self._stop = time.perf_counter()

    def result(self) -> tuple[float, dict[str, float]]:
        """(seconds of the call, seconds per stage) of the last call."""
        return self._stop - self._start, dict(self._stages)


class CudaEventTimer:
    """Device timer: CUDA events recorded on the current stream at every boundary, read once per call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._marks: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._current: tuple[str, torch.cuda.Event] | None = None
        self._start: torch.cuda.Event | None = None
        self._stop: torch.cuda.Event | None = None

    def _event(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start_call(self) -> None:
        self._marks, self._current = [], None
        self._start = self._event()

    def begin(self, name: str) -> None:
        event = self._event()
        if self._current is not None:
            self._marks.append((self._current[0], self._current[1], event))
        self._current = (name, event)

    def end(self) -> None:
        if self._current is not None:
            self._marks.append((self._current[0], self._current[1], self._event()))
            self._current = None

    def stop_call(self) -> None:
        self.end()
        self._stop = self._event()

    def result(self) -> tuple[float, dict[str, float]]:
        if self._start is None or self._stop is None:
            raise RuntimeError("result() before start_call()/stop_call()")
        self._stop.synchronize()  # the call's one synchronisation
        stages: dict[str, float] = defaultdict(float)
        for name, begin, end in self._marks:
            stages[name] += begin.elapsed_time(end) / 1e3
        return self._start.elapsed_time(self._stop) / 1e3, dict(stages)


def make_timer(device: torch.device) -> PerfCounterTimer | CudaEventTimer:
    """The timer for ``device``: CUDA events on a GPU, ``perf_counter`` otherwise."""
    return CudaEventTimer(device) if device.type == "cuda" else PerfCounterTimer()
